"""Mean intersection over union from a confusion matrix."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(K, K)`` int64 counts, rows the ground truth, columns the prediction, over the pixels whose target is not
    ``ignore_index``. ``pred`` and ``target``: integer tensors of one shape, predictions in ``[0, K)``, targets in
    ``[0, K)`` or ``ignore_index`` (anything else raises ``ValueError``)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target must be in [0, {num_classes}) or {ignore_index}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"pred must be in [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def iou_per_class(confusion: Tensor) -> list[float]:
    """IoU of each class, ``TP / (TP + FP + FN)``; NaN for a class absent from both the prediction and the
    ground truth (``TP + FP + FN = 0``). A class predicted but absent from the ground truth scores 0."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return [float(t / u) if u > 0 else math.nan for t, u in zip(tp.tolist(), union.tolist())]


def mean_iou(confusion: Tensor) -> float:
    """The mean of :func:`iou_per_class` over the classes present in the prediction or the ground truth (NaN when
    there are none)."""
    present = [v for v in iou_per_class(confusion) if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan
