"""Public API of the style-mix family: per-patch statistics and patch-wise style transfer with mixing.

``local_style_mix`` is the augmentation of PODA (global AdaIN toward a mined style, optionally mixed with the
image's own statistics: ``grid=1``) and of FAMix (the same per patch of a ``g x g`` grid, with a style per patch
and Beta-distributed mixing weights shared by the patches of an image). The math, in one place: ``README.md``
next to this file; the executable specification: :mod:`styleda_fast.ops.style_mix.reference`.

Token grids: ``x`` may be a ViT's patch tokens seen as ``(B, C, h, w)`` (:func:`styleda_fast.tokens_as_grid`, a
channels-last view whose images are ``(prefix + h*w) * C`` elements apart). The C++ and Triton kernels read and
write it in place (each tensor has its own batch stride), fresh outputs get the same strides, and the prefix tokens
are never touched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.backend import run_op
from styleda_fast.core.checks import (
    acc_dtype,
    batch_strided_layout,
    check_eps,
    check_features,
    kernel_layout,
    normalize_grid,
    per_patch,
)
from styleda_fast.ops.style_mix import _ops
from styleda_fast.ops.style_mix.reference import patch_bounds

__all__ = ["local_style_mix", "patch_bounds", "patch_mean_std"]


def patch_mean_std(x: Tensor, grid: int | tuple[int, int] = 1, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each patch of a ``gh x gw`` grid, per image and channel.

    Args:
        x: ``(B, C, H, W)`` float16/bfloat16/float32/float64, any ``H >= gh``, ``W >= gw``.
        grid: ``g`` or ``(gh, gw)``. Patch ``(i, j)`` covers rows ``floor(i*H/gh)..floor((i+1)*H/gh)`` and
            columns ``floor(j*W/gw)..floor((j+1)*W/gw)``; ``grid=1`` gives PODA's ``calc_mean_std``.
        eps: added to the variance before the square root.
    Returns:
        ``(mean, std)``, each ``(B, C, gh, gw)`` in x's dtype (accumulated in float32 or float64), with
        ``std = sqrt(unbiased variance + eps)``. A 1-pixel patch has variance 0 (not NaN): ``std = sqrt(eps)``.
        Differentiable with respect to ``x``.
    """
    check_features(x)
    gh, gw = normalize_grid(grid, x.shape[2], x.shape[3])
    eps = check_eps(eps)
    x = kernel_layout(x)
    mean, std = run_op(_ops.PATCH_MEAN_STD, x, gh, gw, eps)
    return mean.to(x.dtype), std.to(x.dtype)


def local_style_mix(
    x: Tensor,
    style_mean: Tensor,
    style_std: Tensor,
    *,
    grid: int | tuple[int, int] = 3,
    mix: Tensor | float | None = None,
    activation: str | None = "relu",
    eps: float = 1e-5,
    out: Tensor | None = None,
) -> Tensor:
    """Patch-wise AdaIN toward target styles, optionally mixed with each patch's own statistics.

    For each image ``b``, channel ``c`` and patch ``p`` (with its statistics ``mean, std`` from
    :func:`patch_mean_std`): ``y = act(std_t * (x - mean) / std + mean_t)``, where with ``mix = s``
    ``mean_t = s*mean + (1-s)*style_mean`` and ``std_t = s*std + (1-s)*style_std``.

    Args:
        x: ``(B, C, H, W)`` float16/bfloat16/float32/float64, NCHW or channels_last (same numbers either way),
            or a token grid (:func:`styleda_fast.tokens_as_grid`: read without a copy, prefix tokens untouched).
        style_mean, style_std: target statistics, broadcastable to ``(B, C, gh, gw)``: ``(B, C)`` or
            ``(B, C, 1, 1)`` (one style per image, PODA) or ``(B, C, gh, gw)`` (one per patch, FAMix).
        grid: ``g`` or ``(gh, gw)``; ``1`` is global (PODA) transfer. Any ``H >= gh``, ``W >= gw``.
        mix: ``None`` (pure transfer), a number, or weights broadcastable to ``(B, C, gh, gw)``, e.g. FAMix's
            ``(B, C)`` Beta(0.1, 0.1) draws shared by all patches of an image.
        activation: ``"relu"`` (PODA and FAMix) or ``None``.
        eps: added to the variance of each patch.
        out: optional preallocated output with x's shape, dtype and device (may be ``x`` itself, in place), NCHW,
            channels_last or a token grid: ``out=tokens_as_grid(tokens, h, w)`` writes the styled patch tokens
            into ``tokens`` and leaves its prefix tokens as they are. Meant for frozen feature extractors: it is an
            error if any input requires grad while grad mode is on.
    Returns:
        ``(B, C, H, W)`` tensor in x's dtype (``out`` when given), with x's exact strides (NCHW-contiguous for an
        x the kernels cannot address directly); for a token grid its memory has an
        unwritten gap where x has the prefix tokens (:func:`styleda_fast.grid_as_tokens` puts the prefix back).
        Differentiable with respect to ``x``, ``style_mean``, ``style_std`` and ``mix`` through a fused backward
        kernel.
    """
    check_features(x)
    gh, gw = normalize_grid(grid, x.shape[2], x.shape[3])
    eps = check_eps(eps)
    if activation not in ("relu", None):
        raise ValueError(f"activation must be 'relu' or None, got {activation!r}")
    shape = (x.shape[0], x.shape[1], gh, gw)
    acc = acc_dtype(x.dtype)
    target_mean = per_patch(style_mean, "style_mean", shape, x.device, acc)
    target_std = per_patch(style_std, "style_std", shape, x.device, acc)
    mix = None if mix is None else per_patch(mix, "mix", shape, x.device, acc, allow_number=True)
    relu = activation == "relu"
    if out is not None:
        return _style_mix_into(x, target_mean, target_std, mix, gh, gw, relu, eps, out, (style_mean, style_std))
    x = kernel_layout(x)
    return run_op(_ops.LOCAL_STYLE_MIX, x, target_mean, target_std, mix, gh, gw, relu, eps)[0]


def _style_mix_into(x, target_mean, target_std, mix, gh, gw, relu, eps, out, originals) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must match x: shape {tuple(x.shape)}, {x.dtype}, {x.device}; "
            f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
        )
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, out, mix, *originals)):
        raise ValueError(
            "out= computes no gradient, but an input or out requires grad; call without out= or under torch.no_grad()"
        )
    out_layout = batch_strided_layout(out)
    if out_layout is None:
        raise ValueError(
            "out must be contiguous, channels_last or a token grid (tokens_as_grid): each image's elements dense "
            f"in NCHW or channels_last order, images at least C*H*W apart; got strides {tuple(out.stride())}"
        )
    x_layout = batch_strided_layout(x)
    if x_layout is None or x_layout[0] != out_layout[0]:
        x = x.contiguous(memory_format=torch.channels_last if out_layout[0] == "nhwc" else torch.contiguous_format)
    if x.data_ptr() == out.data_ptr() and _memory_range(x) == _memory_range(out):
        x = out  # the same elements (strides may differ only on size-1 dims, where they mean nothing): in place
    if x is not out and _overlaps(x, out):
        raise ValueError("out overlaps x in memory; pass x itself (in place) or a separate tensor")
    # The kernels write patches in parallel, so a per-patch input that lives in out's memory could be overwritten
    # before another patch reads it: such inputs (small, B*C*gh*gw values) are read into a copy first.
    target_mean, target_std, mix = (
        t.clone() if t is not None and _overlaps(t, out) else t for t in (target_mean, target_std, mix)
    )
    run_op(_ops.LOCAL_STYLE_MIX_INTO, x, target_mean, target_std, mix, gh, gw, relu, eps, out)
    return out


def _memory_range(t: Tensor) -> tuple[int, int]:
    """First and one-past-last byte address that ``t`` can touch (by its strides, whatever its storage)."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    last = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    low = t.data_ptr() - sum((size - 1) * -stride for size, stride in zip(t.shape, t.stride()) if stride < 0)
    return low, low + (last + 1) * t.element_size()


def _overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors' memory ranges intersect (views of one buffer through different storages included)."""
    if a.device != b.device:
        return False
    a_low, a_high = _memory_range(a)
    b_low, b_high = _memory_range(b)
    return a_low < b_high and b_low < a_high
