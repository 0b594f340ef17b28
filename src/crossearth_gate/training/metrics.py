"""Segmentation metrics computed from ONE confusion matrix per domain, as mmsegmentation reports them.

Scores are pooled over every labelled pixel of a domain (never averaged per image), so small or
class-poor images do not get the same weight as large ones.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Count (ground truth, prediction) pairs into a C x C int64 matrix; rows = truth, cols = prediction.

    Pixels whose target is `ignore_index` are skipped whatever was predicted there.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise UserError(
            f"label value {bad} is outside 0..{num_classes - 1} and is not the ignore index {ignore_index}"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions must lie in 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _percent_or_none(values: Tensor, present: Tensor, names: Sequence[str]) -> dict[str, float | None]:
    pairs = zip(names, values.tolist(), present.tolist(), strict=True)
    return {name: (value if keep else None) for name, value, keep in pairs}


def metrics_from_confusion(confmat: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, mF1, OA (percent, unrounded) and per-class IoU/F1, with mmsegmentation's nan-means over classes.

    IoU = TP / union: a class with empty union is None and left out of mIoU; a class absent from ground
    truth but predicted has IoU 0 and counts. F1 = 2PR / (P + R) with P = TP / predicted, R = TP / truth,
    as mmseg's fscore: a class without a true positive has P or R 0/0, or P + R = 0, so its F1 is NaN
    (None here) and it drops out of mF1. mF1 is NaN when no class has a true positive.
    """
    num_classes = confmat.shape[0]
    if confmat.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix must be square, got {tuple(confmat.shape)}")
    if len(class_names) != num_classes:
        raise UserError(f"{len(class_names)} class names given for {num_classes} classes")
    cm = confmat.detach().to("cpu", torch.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("no labelled pixels")
    tp = cm.diagonal()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    union = tp + fp + fn
    present = union > 0
    iou = 100.0 * tp / union.clamp_min(1)
    f1 = 100.0 * 2 * tp / (union + tp).clamp_min(1)  # = 2PR / (P + R) wherever TP > 0
    hit = tp > 0
    return {
        "mIoU": float(iou[present].mean()),
        "mF1": float(f1[hit].mean()) if hit.any() else float("nan"),
        "OA": float(100.0 * tp.sum() / total),
        "per_class_iou": _percent_or_none(iou, present, class_names),
        "per_class_f1": _percent_or_none(f1, hit, class_names),
        "pixels": int(total),
    }


class SegMetrics(Metric):
    """One confusion matrix per domain (summed across DDP ranks), scored by metrics_from_confusion."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX, **kwargs: Any):
        super().__init__(**kwargs)
        if len(class_names) != num_classes:
            raise UserError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch; `preds` are class indices shaped like `target` or logits with classes on dim 1."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=1)
        self.confmat += confusion_matrix(preds, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, Any]:
        """Scores of the whole accumulated domain."""
        return metrics_from_confusion(self.confmat, self.class_names)
