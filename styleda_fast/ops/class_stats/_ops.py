"""torch.library glue of the class-statistics operators: fake kernels and autograd; CUDA runs ``_triton.py``.

The schemas and CPU kernels live in ``class_stats_cpu.cpp`` beside this file.

``class_mean_std`` is differentiable with respect to ``x``. Its backward is a few plain tensor operations
(gathering each pixel's per-class coefficients), so it runs on every device and traces under ``torch.compile``:
``d mean/dx = 1/n`` and ``d std/dx = (x - mean) / ((n - 1) * std)`` for the pixels of the class (0 for classes
with fewer than 2 pixels, whose variance is defined as 0). ``patch_dominant_class`` is integer-valued: no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.checks import MAX_CLASSES, acc_dtype, require, require_float
from styleda_fast.core.library import register_family

# ---------------------------------------------------------------- fake kernels (shapes and dtypes only)


def _patch_dominant_class_fake(labels, grid_h, grid_w, num_classes, ignore_index, count_ignore):
    torch._check(labels.dim() == 3, lambda: f"labels must be (B, H, W), got {labels.dim()} dims")
    torch._check(not labels.is_floating_point(), lambda: f"labels must be integer, got {labels.dtype}")
    torch._check(1 <= grid_h <= labels.shape[1] and 1 <= grid_w <= labels.shape[2], lambda: "grid must fit labels")
    return labels.new_empty((labels.shape[0], grid_h, grid_w), dtype=torch.int64)


def _class_mean_std_fake(x, labels, num_classes, eps):
    torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {x.dim()} dims")
    torch._check(x.is_floating_point(), lambda: f"x must be floating point, got {x.dtype}")
    torch._check(labels.dim() == 3, lambda: "labels must be (B, H, W)")
    torch._check(
        labels.shape[0] == x.shape[0] and labels.shape[1] == x.shape[2] and labels.shape[2] == x.shape[3],
        lambda: "labels must match x's (B, H, W)",
    )
    mean = x.new_empty((x.shape[0], num_classes, x.shape[1]), dtype=acc_dtype(x.dtype))
    return mean, torch.empty_like(mean), x.new_empty((x.shape[0], num_classes), dtype=torch.int64)


# ---------------------------------------------------------------- autograd of class_mean_std


def class_mean_std_grad_x(grad_mean, grad_std, x, labels, mean, std, count) -> Tensor:
    """Gradient of ``class_mean_std`` with respect to ``x (B, C, H, W)`` from the gradients of mean and std
    ``(B, K, C)``. Pixels whose label is outside ``[0, K)`` get 0."""
    B, C, H, W = x.shape
    K = mean.shape[1]
    n = count.to(mean.dtype)[:, :, None]  # (B, K, 1)
    zeros = torch.zeros_like(mean)
    a = torch.where(n > 0, grad_mean / n.clamp_min(1), zeros) if grad_mean is not None else zeros
    if grad_std is not None:
        c = torch.where(n > 1, grad_std / ((n - 1).clamp_min(1) * std), zeros)
    else:
        c = zeros
    pad = mean.new_zeros(B, 1, C)  # slot K: the skipped pixels
    a, c, m = (torch.cat([t, pad], 1) for t in (a, c, mean))
    lab = labels.long().reshape(B, H * W)
    slot = torch.where((lab >= 0) & (lab < K), lab, torch.full_like(lab, K))
    index = slot[:, :, None].expand(B, H * W, C)

    def per_pixel(t):  # (B, K+1, C) -> (B, C, H, W)
        return t.gather(1, index).transpose(1, 2).reshape(B, C, H, W)

    xa = x.to(mean.dtype)
    return (per_pixel(a) + per_pixel(c) * (xa - per_pixel(m))).to(x.dtype)


def _class_mean_std_setup(ctx, inputs, output):
    x, labels, _num_classes, _eps = inputs
    ctx.save_for_backward(x, labels, *output)


def _class_mean_std_backward(ctx, grad_mean, grad_std, _grad_count):
    x, labels, mean, std, count = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (grad_mean is None and grad_std is None):
        return None, None, None, None
    return class_mean_std_grad_x(grad_mean, grad_std, x, labels, mean, std, count), None, None, None


# ---------------------------------------------------------------- argument checks of direct operator calls


def _check_labels_op(labels) -> None:
    require(isinstance(labels, Tensor), "labels must be a tensor", TypeError)
    integer = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)
    require(integer, f"labels must be an integer tensor, got {labels.dtype}", TypeError)
    require(labels.dim() == 3, f"labels must be 3-D (B, H, W), got {labels.dim()} dims")


def _check_num_classes_op(num_classes) -> None:
    require(1 <= num_classes <= MAX_CLASSES, f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")


def _check_patch_dominant_class(labels, grid_h, grid_w, num_classes, ignore_index, count_ignore):
    _check_labels_op(labels)
    _check_num_classes_op(num_classes)
    require(
        1 <= grid_h <= labels.shape[1] and 1 <= grid_w <= labels.shape[2],
        f"grid ({grid_h}, {grid_w}) must be >= 1 and <= (H, W) = ({labels.shape[1]}, {labels.shape[2]})",
    )


def _check_class_mean_std(x, labels, num_classes, eps):
    require_float(x, "x")
    require(x.dim() == 4, f"x must be 4-D (B, C, H, W), got {x.dim()} dims")
    _check_labels_op(labels)
    _check_num_classes_op(num_classes)
    require(
        labels.shape == (x.shape[0], x.shape[2], x.shape[3]) and labels.device == x.device,
        f"labels must be (B, H, W) = {(x.shape[0], x.shape[2], x.shape[3])} on x's device, got {tuple(labels.shape)}",
    )


CHECKS = {"patch_dominant_class": _check_patch_dominant_class, "class_mean_std": _check_class_mean_std}

# ---------------------------------------------------------------- registration

FAKES = {"patch_dominant_class": _patch_dominant_class_fake, "class_mean_std": _class_mean_std_fake}
AUTOGRAD = {"class_mean_std": (_class_mean_std_backward, _class_mean_std_setup)}
register_family("class_stats", FAKES, AUTOGRAD, CHECKS)
