"""Triton kernels of ``noisy_style_features`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Forward: chunks of ``4*L`` elements, one counter per four elements (as in ``reference.feature_noise``); backward:
one program per (b, c) plane, reductions in registers (no atomics), noise never regenerated (it is added after the
ReLU, so the gradient does not depend on it). Accumulation is float32, or float64 for float64 tensors. Offsets are
int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from styleda_fast.core.triton_utils import LaunchPlan, launch, nbytes, philox_normal4, tl_acc_dtype, vector_warps
from styleda_fast.ops.feature_noise.reference import FEATURE_GROUPS, FEATURE_TAG


@triton.jit
def _style_quarter(x_ptr, y_ptr, mean_ptr, std_ptr, e, N, HW, noise, scale, ACC: tl.constexpr, NOISE: tl.constexpr):
    mask = e < N
    p = e // HW
    x = tl.load(x_ptr + e, mask=mask, other=0.0).to(ACC)
    m = tl.load(mean_ptr + p, mask=mask, other=0.0)
    s = tl.load(std_ptr + p, mask=mask, other=0.0)
    z = s * x + m
    y = tl.where(z > 0, z, tl.where(z == z, 0.0, z))  # ReLU that keeps NaN, like torch.relu
    if NOISE:
        y += scale * noise.to(ACC)
    tl.store(y_ptr + e, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "offset"])
def _noisy_style_kernel(
    x_ptr,
    y_ptr,
    mean_ptr,
    std_ptr,
    N,
    HW,
    scale,
    seed,
    offset,
    TAG: tl.constexpr,
    ACC: tl.constexpr,
    L: tl.constexpr,
    NOISE: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, L)
    base = chunk * 4 * L + j
    if NOISE:
        g = chunk * L + j
        zero = (j * 0).to(tl.uint32)
        n0, n1, n2, n3 = philox_normal4(
            seed, (g & 0xFFFFFFFF).to(tl.uint32), (g >> 32).to(tl.uint32), zero + offset.to(tl.uint32), zero + TAG
        )
    else:
        n0 = tl.zeros([L], dtype=tl.float32)
        n1 = n0
        n2 = n0
        n3 = n0
    _style_quarter(x_ptr, y_ptr, mean_ptr, std_ptr, base, N, HW, n0, scale, ACC, NOISE)
    _style_quarter(x_ptr, y_ptr, mean_ptr, std_ptr, base + L, N, HW, n1, scale, ACC, NOISE)
    _style_quarter(x_ptr, y_ptr, mean_ptr, std_ptr, base + 2 * L, N, HW, n2, scale, ACC, NOISE)
    _style_quarter(x_ptr, y_ptr, mean_ptr, std_ptr, base + 3 * L, N, HW, n3, scale, ACC, NOISE)


def noisy_style_features(xn, mean, std, feature_noise: float, seed: int, offset: int) -> torch.Tensor:
    """Launcher: ``relu(std * xn + mean) + feature_noise * eps``; mean/std ``(B, C)`` in the accumulation dtype."""
    if not 0 <= offset < 2**32:
        raise ValueError(f"offset must be in [0, 2^32), got {offset}")
    xn = xn.contiguous()
    out = torch.empty_like(xn)
    if xn.numel() == 0:
        return out
    launch(plan_noisy_style_features(xn, out, mean, std, feature_noise, seed, offset))
    return out


def plan_noisy_style_features(xn, out, mean, std, feature_noise: float, seed: int, offset: int) -> list[LaunchPlan]:
    """The launch writing ``out`` (xn's shape) from contiguous ``xn (B, C, ...)`` and ``mean``/``std`` ``(B, C)``."""
    N = xn.numel()
    HW = N // (xn.shape[0] * xn.shape[1])
    L = FEATURE_GROUPS
    plan = LaunchPlan(
        _noisy_style_kernel,
        (triton.cdiv(N, 4 * L),),
        (xn, out, mean, std, N, HW, float(feature_noise), seed, offset),
        dict(TAG=FEATURE_TAG, ACC=tl_acc_dtype(xn.dtype), L=L, NOISE=feature_noise != 0),
        vector_warps(L, xn.element_size(), 4),
        bytes_moved=nbytes(xn, out),
        bytes_per_step=4 * L * xn.element_size(),
    )
    return [plan]


@triton.jit
def _noisy_style_backward_kernel(
    g_ptr,
    x_ptr,
    mean_ptr,
    std_ptr,
    gx_ptr,
    gm_ptr,
    gs_ptr,
    HW,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    GRAD_X: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    m = tl.load(mean_ptr + p)
    s = tl.load(std_ptr + p)
    sum_g = tl.zeros([BLOCK], dtype=ACC)
    sum_gx = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, HW, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < HW
        x = tl.load(x_ptr + p * HW + idx, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_ptr + p * HW + idx, mask=mask, other=0.0).to(ACC)
        g = tl.where(s * x + m > 0, g, 0.0)
        sum_g += g
        sum_gx += g * x
        if GRAD_X:
            tl.store(gx_ptr + p * HW + idx, (g * s).to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gm_ptr + p, tl.sum(sum_g, axis=0))
    tl.store(gs_ptr + p, tl.sum(sum_gx, axis=0))


def noisy_style_features_backward(grad_out, xn, mean, std, compute_grad_xn: bool):
    """Launcher: ``(grad_xn, grad_mean, grad_std)``; grad_xn empty unless ``compute_grad_xn``."""
    xn, grad_out = xn.contiguous(), grad_out.contiguous()
    planes = xn.shape[0] * xn.shape[1]
    grad_mean, grad_std = torch.empty_like(mean), torch.empty_like(std)
    grad_xn = torch.empty_like(xn) if compute_grad_xn else xn.new_empty(0)
    if planes == 0:
        return grad_xn, grad_mean, grad_std
    launch(
        plan_noisy_style_features_backward(
            grad_out, xn, mean, std, grad_xn if compute_grad_xn else None, grad_mean, grad_std
        )
    )
    return grad_xn, grad_mean, grad_std


def plan_noisy_style_features_backward(grad_out, xn, mean, std, grad_xn, grad_mean, grad_std) -> list[LaunchPlan]:
    """One program per (b, c) plane; ``grad_xn`` None skips it. All tensors contiguous."""
    planes = xn.shape[0] * xn.shape[1]
    HW = xn.numel() // planes
    block = min(triton.next_power_of_2(max(HW, 1)), 2048)
    plan = LaunchPlan(
        _noisy_style_backward_kernel,
        (planes,),
        (grad_out, xn, mean, std, grad_xn if grad_xn is not None else grad_out, grad_mean, grad_std, HW),
        dict(ACC=tl_acc_dtype(xn.dtype), BLOCK=block, GRAD_X=grad_xn is not None),
        4 if block >= 512 else 1,
        bytes_moved=nbytes(grad_out, xn, grad_xn, mean, std, grad_mean, grad_std),
        bytes_per_step=2 * block * xn.element_size(),
    )
    return [plan]
