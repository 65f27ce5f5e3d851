"""Public API of the class-statistics family: each patch's dominant class, per-class feature statistics, and
bringing label maps to the feature resolution. The math: ``README.md`` next to this file; the executable
specification: :mod:`styleda_fast.ops.class_stats.reference`.

FAMix's whole training-step augmentation is three calls (``bank`` a :class:`styleda_fast.StyleBank`)::

    classes = patch_dominant_class(labels, grid=3)                  # (B, 3, 3) int64, at image resolution
    style_mean, style_std = bank.sample_grid(classes, generator=g)  # (B, C, 3, 3) each
    y = local_style_mix(x, style_mean, style_std, grid=3, mix=beta_weights)
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.backend import run_op, select_backend
from styleda_fast.core.checks import (
    check_bool,
    check_eps,
    check_features,
    check_ignore_index,
    check_label_values,
    check_labels,
    check_num_classes,
    kernel_layout,
    normalize_grid,
)
from styleda_fast.ops.class_stats import _ops

__all__ = ["class_mean_std", "labels_to_size", "patch_dominant_class"]


def patch_dominant_class(
    labels: Tensor,
    grid: int | tuple[int, int] = 3,
    *,
    num_classes: int = 19,
    ignore_index: int = 255,
    count_ignore: bool = True,
) -> Tensor:
    """Dominant class (mode of the labels) of each patch of a ``gh x gw`` grid, per image .

    Args:
        labels: ``(B, H, W)`` integer train ids (any integer dtype, any resolution, e.g. 768x768), each in
            ``[0, num_classes)`` or equal to ``ignore_index``; anything else raises ``ValueError``.
        grid: ``g`` or ``(gh, gw)``; patch ``(i, j)`` covers rows ``floor(i*H/gh)..floor((i+1)*H/gh)`` and columns
            likewise (the split of adaptive pooling), so any ``H >= gh``, ``W >= gw`` works.
        num_classes: number of classes ``K`` (19 for Cityscapes).
        ignore_index: the unlabelled value (255).
        count_ignore: ``True`` (FAMix): the ignore value votes like a class, so a mostly unlabelled patch gets
            ``ignore_index``. ``False``: only labelled pixels vote; a patch without any gets ``ignore_index``.
    Returns:
        ``(B, gh, gw)`` int64 on labels' device: the most frequent value of each patch, ties to the smallest value.
        ``num_classes`` up to ``2^20``; on CUDA, more than 1024 classes run the plain-PyTorch histogram.
    """
    check_labels(labels)
    gh, gw = normalize_grid(grid, labels.shape[1], labels.shape[2])
    num_classes = check_num_classes(num_classes)
    ignore_index = check_ignore_index(ignore_index, num_classes)
    check_bool(count_ignore, "count_ignore")
    if select_backend(labels.device) != "cpp":
        # the C++ kernel checks every label as it counts (one read of the map) and raises the same ValueError
        check_label_values(labels, num_classes, ignore_index)
    return run_op(_ops.PATCH_DOMINANT_CLASS, labels, gh, gw, num_classes, ignore_index, count_ignore)


def labels_to_size(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a label map ``(B, Hl, Wl)`` to ``size = (H, W)`` (e.g. the feature resolution).

    Output pixel ``(h, w)`` takes input pixel ``(floor(h*Hl/H), floor(w*Wl/W))`` in exact integer arithmetic (what
    ``F.interpolate(mode="nearest")`` computes in floating point); 768 -> 192 takes every 4th pixel. Returns
    ``(B, H, W)`` in labels' dtype; labels itself when the size already matches. ``ValueError`` for labels
    without a pixel (``Hl`` or ``Wl`` 0) or a size below 1.
    """
    check_labels(labels)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    H, W = size
    Hl, Wl = labels.shape[1:]
    if Hl == 0 or Wl == 0:
        raise ValueError(f"labels must have at least one pixel to resize, got shape {tuple(labels.shape)}")
    if (H, W) == (Hl, Wl):
        return labels
    rows = torch.arange(H, device=labels.device) * Hl // H
    cols = torch.arange(W, device=labels.device) * Wl // W
    return labels.index_select(1, rows).index_select(2, cols)


def class_mean_std(
    x: Tensor,
    labels: Tensor,
    num_classes: int = 19,
    *,
    ignore_index: int = 255,
    eps: float = 1e-5,
    resize_labels: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and standard deviation of each channel over the pixels of each class, per image .

    Args:
        x: ``(B, C, H, W)`` float16/bfloat16/float32/float64 features. NCHW, channels_last, and a ViT's patch tokens
            seen as a grid (:func:`styleda_fast.tokens_as_grid`: channels-last images ``(prefix + h*w) * C``
            elements apart) are read in place by the C++ and Triton kernels, without a copy (the prefix tokens are
            never read); other strides are copied to NCHW first.
        labels: ``(B, H, W)`` integer train ids at the feature resolution, each in ``[0, num_classes)`` or equal to
            ``ignore_index`` (skipped); anything else raises ``ValueError``. With ``resize_labels=True`` any
            resolution is accepted and brought to ``(H, W)`` with :func:`labels_to_size` (nearest).
        num_classes: number of classes ``K``.
        ignore_index: the unlabelled value.
        eps: added to the variance: ``std = sqrt(var_unbiased + eps)``.
    Returns:
        ``(mean, std, count)``: ``mean`` and ``std`` are ``(B, K, C)`` in float32 (float64 for float64 ``x``),
        ``count`` is ``(B, K)`` int64, the pixels of each class. Classes with fewer than 2 pixels: one pixel has
        variance 0 (``mean`` = its value, ``std = sqrt(eps)``); an absent class has ``mean = std = 0``.
        Statistics are two-pass (no ``E[x^2] - E[x]^2``) and deterministic. Differentiable with respect to ``x``.
    """
    check_features(x)
    check_labels(labels)
    num_classes = check_num_classes(num_classes)
    ignore_index = check_ignore_index(ignore_index, num_classes)
    eps = check_eps(eps)
    if labels.device != x.device:
        raise ValueError(f"labels is on {labels.device} but x is on {x.device}; move them to one device")
    if resize_labels:
        labels = labels_to_size(labels, (x.shape[2], x.shape[3]))
    if labels.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(
            f"labels must have shape (B, H, W) = {(x.shape[0], x.shape[2], x.shape[3])} to match x, got "
            f"{tuple(labels.shape)}; pass resize_labels=True or use labels_to_size() for image-resolution labels"
        )
    check_label_values(labels, num_classes, ignore_index)
    x = kernel_layout(x)  # NCHW or channels-last images, any batch stride: read in place; else an NCHW copy
    return run_op(_ops.CLASS_MEAN_STD, x, labels.contiguous(), num_classes, eps)
