"""Declarations of the class-statistics operators (:class:`styleda_fast.core.library.Operator`): argument rules,
fake kernels, references, autograd and the Triton class limit. CPU runs the C++ kernels of ``class_stats_cpu.cpp``
beside this file (schemas there), CUDA the Triton launchers of ``_triton.py``.

``class_mean_std`` is differentiable with respect to ``x``. Its backward is a few plain tensor operations
(gathering each pixel's per-class coefficients), so it runs on every device, traces under ``torch.compile`` and is
itself differentiable: ``d mean/dx = 1/n`` and ``d std/dx = (x - mean) / ((n - 1) * std)`` for the pixels of the
class (0 for classes with fewer than 2 pixels, whose variance is defined as 0). ``patch_dominant_class`` is
integer-valued: no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.checks import MAX_CLASSES, acc_dtype, require, require_float, require_scalar
from styleda_fast.core.library import Operator, register
from styleda_fast.ops.class_stats import reference

# The Triton kernels keep one counter (patch_dominant_class) or one slot (class_mean_std) per class in registers;
# above this many classes the operators run the plain-PyTorch reference on CUDA tensors.
TRITON_MAX_CLASSES = 1024

# argument rules


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
    require_scalar(eps, "eps")
    require(x.dim() == 4, f"x must be 4-D (B, C, H, W), got {x.dim()} dims")
    _check_labels_op(labels)
    _check_num_classes_op(num_classes)
    require(
        labels.shape == (x.shape[0], x.shape[2], x.shape[3]) and labels.device == x.device,
        f"labels must be (B, H, W) = {(x.shape[0], x.shape[2], x.shape[3])} on x's device, got {tuple(labels.shape)}",
    )


def _triton_class_limit(*args) -> str | None:
    num_classes = args[3] if len(args) == 6 else args[2]
    if num_classes > TRITON_MAX_CLASSES:
        return f"the Triton kernels hold at most {TRITON_MAX_CLASSES} classes, got {num_classes}"
    return None


# fake kernels (the arguments are checked first)


def _patch_dominant_class_fake(labels, grid_h, grid_w, num_classes, ignore_index, count_ignore):
    return labels.new_empty((labels.shape[0], grid_h, grid_w), dtype=torch.int64)


def _class_mean_std_fake(x, labels, num_classes, eps):
    mean = x.new_empty((x.shape[0], num_classes, x.shape[1]), dtype=acc_dtype(x.dtype))
    return mean, torch.empty_like(mean), x.new_empty((x.shape[0], num_classes), dtype=torch.int64)


# references, with the operators' arguments and outputs (labels outside [0, K) are skipped, as in the kernels)


def _patch_dominant_class_reference(labels, grid_h, grid_w, num_classes, ignore_index, count_ignore):
    return reference.patch_dominant_class_bincount(labels, (grid_h, grid_w), num_classes, ignore_index, count_ignore)


def _class_mean_std_reference(x, labels, num_classes, eps):
    """In float64 (the specification), returned in the kernels' dtype."""
    labels = labels.long()
    skipped = (labels < 0) | (labels >= num_classes)
    ignore = -1
    mean, std, count = reference.class_mean_std(x.double(), labels.masked_fill(skipped, ignore), num_classes, ignore,
                                                eps)  # fmt: skip
    return mean.to(acc_dtype(x.dtype)), std.to(acc_dtype(x.dtype)), count


# autograd of class_mean_std


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
    ctx.mark_non_differentiable(output[2])


def _class_mean_std_backward(ctx, grad_mean, grad_std, _grad_count):
    x, labels, mean, std, count = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (grad_mean is None and grad_std is None):
        return None, None, None, None
    return class_mean_std_grad_x(grad_mean, grad_std, x, labels, mean, std, count), None, None, None


# declarations

PATCH_DOMINANT_CLASS = Operator(
    "patch_dominant_class",
    "class_stats",
    _check_patch_dominant_class,
    _patch_dominant_class_fake,
    reference=_patch_dominant_class_reference,
    triton_limit=_triton_class_limit,
)
CLASS_MEAN_STD = Operator(
    "class_mean_std",
    "class_stats",
    _check_class_mean_std,
    _class_mean_std_fake,
    reference=_class_mean_std_reference,
    backward=_class_mean_std_backward,
    setup_context=_class_mean_std_setup,
    double_backward="backward",
    triton_limit=_triton_class_limit,
)
register(PATCH_DOMINANT_CLASS, CLASS_MEAN_STD)
