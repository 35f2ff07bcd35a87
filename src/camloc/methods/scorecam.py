"""Score-CAM (Wang et al. 2020): channel weights from masked forward passes, no gradients.

``ReLU(Σ_k softmax_k(S_c(x ⊙ M_k) − S_c(x)) A_k)`` with ``M_k`` the min-max normalised
``A_k`` upsampled to the input. The ``N·K`` masked forwards run in chunks
(:meth:`ScoreCAM.chunk_size`).

>>> import torch, camloc
>>> from camloc.methods import ClassSelection
>>> method = ScoreCAM(camloc.load_model("resnet18", weights="random"))
>>> method.batch_size = 64
>>> tuple(method(torch.randn(1, 3, 64, 64), ClassSelection(topk=2)).maps.shape)
(1, 2, 4, 4)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import MethodOutput, Selection
from .gradient import LayerMethod


class ScoreCAM(LayerMethod):
    """Score-CAM: channel weights from the class score of the input masked by each channel.

    ``batch_size`` masked images per forward (``None``: :meth:`chunk_size`'s choice for the
    device and input size); all requested classes read the same forwards. A flat channel (often a third of
    a trained network's, all zero after its ReLU) masks the image to all zeros whatever the
    image, so all of them share one forward of a black image.
    """

    name = "scorecam"
    batch_size: int | None = None

    def chunk_size(self, batch: torch.Tensor) -> int:
        """Masked images per forward: ``batch_size``, else as many as make 16 images of
        224×224 on a CPU (whose caches favour small batches: 1.5× faster than 64 such
        images for the default model on 2 cores) and 64 on a GPU.

        >>> import camloc, torch
        >>> method = ScoreCAM(camloc.load_model("resnet18", weights="random"))
        >>> method.chunk_size(torch.zeros(1, 3, 224, 224)), method.chunk_size(torch.zeros(1, 3, 64, 64))
        (16, 196)
        """
        if self.batch_size:
            return self.batch_size
        images = 16 if batch.device.type == "cpu" else 64
        return max(1, min(1024, round(images * 224 * 224 / (batch.shape[-2] * batch.shape[-1]))))

    def compute(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        logits, output = self.capture(batch, self.target.name)
        classes = selection.indices(logits, self.model)
        activations = self.target.to_map(output).float()
        masks = min_max(activations)
        scores = self.masked_scores(batch, masks, classes)  # (N, K, k)
        baseline = logits.gather(1, classes)[:, None, :]
        weights = (scores - baseline).softmax(dim=1)
        maps = torch.einsum("nKk,nKhw->nkhw", weights, activations).relu()
        return MethodOutput(logits, classes, maps, self.name)

    def masked_scores(self, batch: torch.Tensor, masks: torch.Tensor,
                      classes: torch.Tensor) -> torch.Tensor:
        """``(N, K, k)`` logits of ``classes`` for each image masked by each of its K masks."""
        count, channels = masks.shape[:2]
        flat_masks = masks.flatten(0, 1)[:, None]  # (N·K, 1, h, w)
        image_of = torch.arange(count, device=batch.device).repeat_interleave(channels)
        blank = flat_masks.amax(dim=(1, 2, 3)) == 0  # masks the image to all zeros
        scores = torch.empty(count * channels, classes.shape[1], device=batch.device)
        if blank.any():
            black = self.model.model(torch.zeros_like(batch[:1]))[0].float()
            scores[blank] = black[classes[image_of[blank]]]
        used = (~blank).nonzero().squeeze(1)
        chunk = self.chunk_size(batch)
        for start in range(0, used.numel(), chunk):
            part = used[start : start + chunk]
            upsampled = F.interpolate(flat_masks[part], size=batch.shape[-2:], mode="bilinear",
                                      align_corners=False)
            masked_logits = self.model.model(batch[image_of[part]] * upsampled.to(batch.dtype))
            scores[part] = masked_logits.gather(1, classes[image_of[part]]).float()
        return scores.view(count, channels, -1)


def min_max(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each ``(h, w)`` map of ``(N, K, h, w)`` scaled to [0, 1] (a flat map becomes 0)."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    shifted = maps - low
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + eps)
