"""Declarations of the style-mix operators (:class:`styleda_fast.core.library.Operator`): argument rules, fake
kernels, references and autograd. CPU runs the C++ kernels of ``style_mix_cpu.cpp`` beside this file (schemas there;
its checks raise the same exception types as the rules here), CUDA the Triton launchers of ``_triton.py``.

Second derivatives are exact: under ``create_graph=True`` the backward differentiates the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.checks import (
    acc_dtype,
    batch_strided_layout,
    empty_kernel_output,
    require,
    require_float,
    require_params,
    require_scalar,
)
from styleda_fast.core.library import Operator, op_namespace, register, save_arguments
from styleda_fast.ops.style_mix import reference

# argument rules


def _check_x_grid(x, grid_h, grid_w) -> tuple:
    require_float(x, "x")
    require(x.dim() == 4, f"x must be 4-D (B, C, H, W), got {x.dim()} dims")
    require(
        1 <= grid_h <= x.shape[2] and 1 <= grid_w <= x.shape[3],
        f"grid ({grid_h}, {grid_w}) must be >= 1 and <= (H, W) = ({x.shape[2]}, {x.shape[3]})",
    )
    return (x.shape[0], x.shape[1], grid_h, grid_w)


def _check_style(x, shape, target_mean, target_std, mix) -> None:
    require_params(target_mean, "target_mean", shape, x, contiguous=False)
    require_params(target_std, "target_std", shape, x, contiguous=False)
    if mix is not None:
        require_params(mix, "mix", shape, x, contiguous=False)


def _check_backward_stats(x, mean, std) -> tuple:
    require_float(mean, "mean")
    require(mean.dim() == 4, f"mean must be 4-D (B, C, gh, gw), got {mean.dim()} dims")
    shape = _check_x_grid(x, mean.shape[2], mean.shape[3])
    require_params(mean, "mean", shape, x, contiguous=False)
    require_params(std, "std", shape, x, contiguous=False)
    return shape


def _check_patch_mean_std(x, grid_h, grid_w, eps):
    _check_x_grid(x, grid_h, grid_w)
    require_scalar(eps, "eps")


def _check_patch_mean_std_backward(grad_mean, grad_std, x, mean, std):
    shape = _check_backward_stats(x, mean, std)
    require_params(grad_mean, "grad_mean", shape, x, contiguous=False)
    require_params(grad_std, "grad_std", shape, x, contiguous=False)


def _check_local_style_mix(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps):
    _check_style(x, _check_x_grid(x, grid_h, grid_w), target_mean, target_std, mix)
    require_scalar(eps, "eps")


def _check_local_style_mix_into(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps, out):
    _check_local_style_mix(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps)
    x_layout = batch_strided_layout(x)
    require(
        x_layout is not None,
        "x must hold each image's (C, H, W) elements densely, in NCHW or channels_last order (any batch stride "
        f">= C*H*W), got strides {tuple(x.stride())}",
    )
    require_float(out, "out")
    require(
        out.shape == x.shape and out.dtype == x.dtype and out.device == x.device,
        "out must have x's shape, dtype and device",
    )
    out_layout = batch_strided_layout(out)
    require(
        out_layout is not None and out_layout[0] == x_layout[0],
        "out must hold each image densely in x's order (NCHW or channels_last; any batch stride), got strides "
        f"{tuple(out.stride())} for x's {tuple(x.stride())}",
    )


def _check_local_style_mix_backward(grad_out, x, mean, std, target_mean, target_std, mix, relu, compute_grad_x):
    shape = _check_backward_stats(x, mean, std)
    _check_style(x, shape, target_mean, target_std, mix)
    require_float(grad_out, "grad_out")
    require(grad_out.shape == x.shape and grad_out.dtype == x.dtype, "grad_out must have x's shape and dtype")


def _check_local_style_mix_grad_x(
    grad_out, x, mean, std, target_mean, target_std, mix, sum_grad, sum_grad_xn, grad_mean, grad_std, relu
):
    _check_local_style_mix_backward(grad_out, x, mean, std, target_mean, target_std, mix, relu, True)
    shape = tuple(mean.shape)
    for value, name in ((sum_grad, "sum_grad"), (sum_grad_xn, "sum_grad_xn"), (grad_mean, "grad_mean"),
                        (grad_std, "grad_std")):  # fmt: skip
        require_params(value, name, shape, x, contiguous=False)


# fake kernels (shapes, dtypes and strides of the outputs; the arguments are checked first)


def _patch_stats_like(x: Tensor, grid_h: int, grid_w: int) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], grid_h, grid_w), dtype=acc_dtype(x.dtype))


def _patch_mean_std_fake(x, grid_h, grid_w, eps):
    mean = _patch_stats_like(x, grid_h, grid_w)
    return mean, torch.empty_like(mean)


def _patch_mean_std_backward_fake(grad_mean, grad_std, x, mean, std):
    return empty_kernel_output(x)


def _local_style_mix_fake(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps):
    mean = _patch_stats_like(x, grid_h, grid_w)
    return empty_kernel_output(x), mean, torch.empty_like(mean)


def _local_style_mix_into_fake(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps, out):
    return None


def _local_style_mix_backward_fake(grad_out, x, mean, std, target_mean, target_std, mix, relu, compute_grad_x):
    grad_x = empty_kernel_output(x) if compute_grad_x else x.new_empty(0)
    return grad_x, mean.new_empty(mean.shape), mean.new_empty(mean.shape)


def _local_style_mix_grad_x_fake(
    grad_out, x, mean, std, target_mean, target_std, mix, sum_grad, sum_grad_xn, grad_mean, grad_std, relu
):
    return empty_kernel_output(x)


# references, with the operators' arguments and outputs


def _patch_mean_std_reference(x, grid_h, grid_w, eps):
    return reference.patch_mean_std(x.to(acc_dtype(x.dtype)), (grid_h, grid_w), eps)


def _local_style_mix_reference(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps):
    xa = x.to(acc_dtype(x.dtype))
    activation = "relu" if relu else None
    out = reference.local_style_mix(xa, target_mean, target_std, (grid_h, grid_w), mix, activation, eps)
    return (out.to(x.dtype), *reference.patch_mean_std(xa, (grid_h, grid_w), eps))


def _local_style_mix_into_reference(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps, out):
    out.copy_(_local_style_mix_reference(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps)[0])


# autograd


def style_input_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix, needs):
    """Gradients of (target_mean, target_std, mix) from the per-patch gradients of the mixed statistics.

    mixed_mean = mix*mean + (1-mix)*target_mean (target_mean alone without mix), likewise for std. All tensors
    are ``(B, C, gh, gw)``; ``needs`` says which of the three gradients to compute (others are None).
    """
    need_mean, need_std, need_mix = needs
    if mix is None:
        return (grad_mixed_mean if need_mean else None, grad_mixed_std if need_std else None, None)
    keep = 1 - mix
    return (
        keep * grad_mixed_mean if need_mean else None,
        keep * grad_mixed_std if need_std else None,
        grad_mixed_mean * (mean - target_mean) + grad_mixed_std * (std - target_std) if need_mix else None,
    )


def _patch_mean_std_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)
    save_arguments(ctx, PATCH_MEAN_STD, inputs)


def _patch_mean_std_backward(ctx, grad_mean, grad_std):
    x, mean, std = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (grad_mean is None and grad_std is None):
        return None, None, None, None
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean.contiguous()
    grad_std = torch.zeros_like(std) if grad_std is None else grad_std.contiguous()
    return op_namespace(ctx).patch_mean_std_backward(grad_mean, grad_std, x, mean, std), None, None, None


def _local_style_mix_setup(ctx, inputs, output):
    x, target_mean, target_std, mix, grid_h, grid_w, relu, eps = inputs
    ctx.save_for_backward(x, target_mean, target_std, mix, output[1], output[2])
    save_arguments(ctx, LOCAL_STYLE_MIX, inputs)
    ctx.relu = relu


def _local_style_mix_backward(ctx, grad_out, _grad_mean, _grad_std):
    """``(grad_x, grad_target_mean, grad_target_std, grad_mix)`` and None for the non-tensor arguments."""
    x, target_mean, target_std, mix, mean, std = ctx.saved_tensors
    need_x, *need_style = ctx.needs_input_grad[:4]
    if grad_out is None or not (need_x or any(need_style)):
        return (None,) * 8
    grad_x, grad_mixed_mean, grad_mixed_std = op_namespace(ctx).local_style_mix_backward(
        grad_out, x, mean, std, target_mean, target_std, mix, ctx.relu, need_x
    )
    style = style_input_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix, need_style)
    return grad_x if need_x else None, *style, None, None, None, None


# declarations


def _op(name: str, check, fake, **kwargs) -> Operator:
    return Operator(name, "style_mix", check, fake, **kwargs)


PATCH_MEAN_STD = _op(
    "patch_mean_std",
    _check_patch_mean_std,
    _patch_mean_std_fake,
    reference=_patch_mean_std_reference,
    backward=_patch_mean_std_backward,
    setup_context=_patch_mean_std_setup,
    double_backward="exact",
    differentiable_inputs=(0,),
    differentiable_outputs=(0, 1),
)
PATCH_MEAN_STD_BACKWARD = _op("patch_mean_std_backward", _check_patch_mean_std_backward, _patch_mean_std_backward_fake)
LOCAL_STYLE_MIX = _op(
    "local_style_mix",
    _check_local_style_mix,
    _local_style_mix_fake,
    reference=_local_style_mix_reference,
    backward=_local_style_mix_backward,
    setup_context=_local_style_mix_setup,
    double_backward="exact",
    differentiable_inputs=(0, 1, 2, 3),
    differentiable_outputs=(0,),
)
LOCAL_STYLE_MIX_INTO = _op(
    "local_style_mix_into",
    _check_local_style_mix_into,
    _local_style_mix_into_fake,
    reference=_local_style_mix_into_reference,
)
LOCAL_STYLE_MIX_BACKWARD = _op(
    "local_style_mix_backward", _check_local_style_mix_backward, _local_style_mix_backward_fake
)
# Values are not checked (a pass over the data, and a device sync on CUDA): std 0 or NaN, as patch_mean_std returns
# with eps=0 for a constant patch, gives non-finite gradients in those patches on every backend, as the forward does.
LOCAL_STYLE_MIX_GRAD_X = _op("local_style_mix_grad_x", _check_local_style_mix_grad_x, _local_style_mix_grad_x_fake)

register(
    PATCH_MEAN_STD,
    PATCH_MEAN_STD_BACKWARD,
    LOCAL_STYLE_MIX,
    LOCAL_STYLE_MIX_INTO,
    LOCAL_STYLE_MIX_BACKWARD,
    LOCAL_STYLE_MIX_GRAD_X,
)
