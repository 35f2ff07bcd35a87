"""``camloc train``: fine-tune a GAP + linear classifier on labelled folders
(:mod:`camloc.train.core`), with its plots (:mod:`camloc.train.plots`)."""

from .core import DataError, TrainOptions, TrainResult, train

__all__ = ["DataError", "TrainOptions", "TrainResult", "train"]
