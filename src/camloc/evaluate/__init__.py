"""``camloc eval``: localization against ground-truth boxes (top-1 loc, GT-known loc,
MaxBoxAccV2), its readers of ground truth, and its report."""

from .ground_truth import GroundTruthError, GTBox, read_ground_truth
from .job import evaluate, settings_of
from .metrics import EvalResult, ImageResult, max_box_acc, sweep_ious

__all__ = ["EvalResult", "GTBox", "GroundTruthError", "ImageResult", "evaluate", "max_box_acc",
           "read_ground_truth", "settings_of", "sweep_ious"]
