"""Registration of the style-mix operators: fake kernels, autograd, and the Triton kernels for CUDA.

The kernels themselves live in csrc/style_mix_cpu.cpp (CPU) and styleda_fast/_triton/style_mix.py (CUDA).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor

from styleda_fast._backend import _CPP_PROBLEM
from styleda_fast._ops._registration import register_family, triton_launchers

_LIB = "styleda_fast"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated and returned in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- fake kernels (shapes and dtypes only)


def _check_features(x: Tensor) -> None:
    torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {x.dim()} dims")
    torch._check(x.is_floating_point(), lambda: f"x must be floating point, got {x.dtype}")


def _patch_stats_like(x: Tensor, grid_h: int, grid_w: int) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], grid_h, grid_w), dtype=acc_dtype(x.dtype))


def _patch_mean_std_fake(x, grid_h, grid_w, eps):
    _check_features(x)
    torch._check(1 <= grid_h <= x.shape[2] and 1 <= grid_w <= x.shape[3], lambda: "grid must fit in (H, W)")
    mean = _patch_stats_like(x, grid_h, grid_w)
    return mean, torch.empty_like(mean)


def _patch_mean_std_backward_fake(grad_mean, grad_std, x, mean, std):
    _check_features(x)
    return torch.empty_like(x)


def _local_style_mix_fake(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps):
    _check_features(x)
    torch._check(target_mean.shape == (x.shape[0], x.shape[1], grid_h, grid_w), lambda: "target_mean shape")
    torch._check(target_std.shape == target_mean.shape, lambda: "target_std shape")
    mean = _patch_stats_like(x, grid_h, grid_w)
    return torch.empty_like(x), mean, torch.empty_like(mean)


def _local_style_mix_into_fake(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps, out):
    _check_features(x)
    torch._check(out.shape == x.shape, lambda: "out must have x's shape")


def _local_style_mix_backward_fake(grad_out, x, mean, std, target_mean, target_std, mix, relu, compute_grad_x):
    _check_features(x)
    grad_x = torch.empty_like(x) if compute_grad_x else x.new_empty(0)
    return grad_x, torch.empty_like(mean), torch.empty_like(mean)


# ---------------------------------------------------------------- autograd


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


def patch_mean_std_grad(kernels, ctx, grad_mean, grad_std):
    """Backward of patch_mean_std with the given kernel namespace (the operators, or the Triton launchers)."""
    x, mean, std = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (grad_mean is None and grad_std is None):
        return None
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean.contiguous()
    grad_std = torch.zeros_like(std) if grad_std is None else grad_std.contiguous()
    return kernels.patch_mean_std_backward(grad_mean, grad_std, x, mean, std)


def _patch_mean_std_backward(ctx, grad_mean, grad_std):
    return patch_mean_std_grad(torch.ops.styleda_fast, ctx, grad_mean, grad_std), None, None, None


def _local_style_mix_setup(ctx, inputs, output):
    x, target_mean, target_std, mix, _grid_h, _grid_w, relu, _eps = inputs
    ctx.save_for_backward(x, output[1], output[2], target_mean, target_std, mix)
    ctx.relu = relu


def local_style_mix_grad(kernels, ctx, grad_out):
    """Backward of local_style_mix: ``(grad_x, grad_target_mean, grad_target_std, grad_mix)``."""
    x, mean, std, target_mean, target_std, mix = ctx.saved_tensors
    need_x, *need_style = ctx.needs_input_grad[:4]
    if grad_out is None or not (need_x or any(need_style)):
        return None, None, None, None
    grad_x, grad_mixed_mean, grad_mixed_std = kernels.local_style_mix_backward(
        grad_out, x, mean, std, target_mean, target_std, mix, ctx.relu, need_x
    )
    style = style_input_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix, need_style)
    return (grad_x if need_x else None, *style)


def _local_style_mix_backward(ctx, grad_out, _grad_mean, _grad_std):
    return *local_style_mix_grad(torch.ops.styleda_fast, ctx, grad_out), None, None, None, None


# ---------------------------------------------------------------- Triton kernels for CUDA tensors


def triton_kernels() -> types.ModuleType:
    """The Triton launchers of this family (imported on first use)."""
    return triton_launchers("style_mix")


def _register() -> torch.library.Library:
    return register_family(
        "style_mix",
        fakes={
            "patch_mean_std": _patch_mean_std_fake,
            "patch_mean_std_backward": _patch_mean_std_backward_fake,
            "local_style_mix": _local_style_mix_fake,
            "local_style_mix_into": _local_style_mix_into_fake,
            "local_style_mix_backward": _local_style_mix_backward_fake,
        },
        autograd={
            "patch_mean_std": (_patch_mean_std_backward, _patch_mean_std_setup),
            "local_style_mix": (_local_style_mix_backward, _local_style_mix_setup),
        },
    )


# Without the compiled library the operators do not exist; the public API then runs the reference.
_LIBRARY = _register() if _CPP_PROBLEM is None else None


# ---------------------------------------------------------------- Triton on CPU tensors (interpreter)


class TritonPatchMeanStd(torch.autograd.Function):
    """patch_mean_std through the Triton launchers directly: for CPU tensors under TRITON_INTERPRET=1."""

    @staticmethod
    def forward(ctx, x, grid_h, grid_w, eps):
        mean, std = triton_kernels().patch_mean_std(x, grid_h, grid_w, eps)
        ctx.save_for_backward(x, mean, std)
        return mean, std

    @staticmethod
    def backward(ctx, grad_mean, grad_std):
        return patch_mean_std_grad(triton_kernels(), ctx, grad_mean, grad_std), None, None, None


class TritonLocalStyleMix(torch.autograd.Function):
    """local_style_mix through the Triton launchers directly: for CPU tensors under TRITON_INTERPRET=1."""

    @staticmethod
    def forward(ctx, x, target_mean, target_std, mix, grid_h, grid_w, relu, eps):
        out, mean, std = triton_kernels().local_style_mix(x, target_mean, target_std, mix, grid_h, grid_w, relu, eps)
        ctx.save_for_backward(x, mean, std, target_mean, target_std, mix)
        ctx.relu = relu
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return *local_style_mix_grad(triton_kernels(), ctx, grad_out), None, None, None, None
