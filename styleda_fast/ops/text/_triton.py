"""Triton kernels of the text family (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

* ``noisy_text_projection``: one program per (row, sample). Noise comes from ``tl.philox`` inside the kernel (no
  noise tensor in memory) in the layout that core/csrc/counter_noise.h and ``reference.text_noise`` define: with
  ``Q = ceil(D/4)``, coordinate ``q*Q + j`` is output ``q`` of counter ``(j, offset + s, k, TEXT_TAG)``, so each
  Philox call feeds four coordinates held as four quarter tiles. Rows that fit in one tile stay in registers; longer
  rows take three passes (|t|, |v|, write), drawing the noise twice rather than re-reading written output.
* ``noisy_text_projection_backward``: one program per row, summing over samples (no noise needed).
* ``clip_cosine_loss``: row blocks; one launch when the whole batch fits one program, else per-program partial
  sums and a one-program reduction in fixed order (deterministic, no atomics). Backward: one launch over row blocks.

Accumulation is float32, or float64 for float64 tensors. Offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from styleda_fast.core.checks import acc_dtype
from styleda_fast.core.triton_utils import LaunchPlan, launch, nbytes, philox_normal4, tl_acc_dtype, vector_warps
from styleda_fast.ops.text.reference import TEXT_TAG

_NORMALIZE_EPS = 1e-12  # F.normalize
_COSINE_EPS = 1e-8  # F.cosine_similarity
_MAX_TEXT_TILE = 1024  # quarter-tile length: rows up to 4096 coordinates stay in registers


# noisy text projection


@triton.jit
def _text_quarters(text_row, j, Q, D, sigma, inv_t, seed, stream, k, TAG: tl.constexpr, ACC: tl.constexpr):
    """v = t * inv_t + sigma * eps on the four quarter tiles at j (zero outside the row)."""
    zero = (j * 0).to(tl.uint32)
    n0, n1, n2, n3 = philox_normal4(seed, j.to(tl.uint32), zero + stream, zero + k, zero + TAG)
    mj = j < Q
    m0, m1, m2, m3 = mj & (j < D), mj & (Q + j < D), mj & (2 * Q + j < D), mj & (3 * Q + j < D)
    v0 = tl.load(text_row + j, mask=m0, other=0.0).to(ACC) * inv_t + sigma * n0.to(ACC)
    v1 = tl.load(text_row + Q + j, mask=m1, other=0.0).to(ACC) * inv_t + sigma * n1.to(ACC)
    v2 = tl.load(text_row + 2 * Q + j, mask=m2, other=0.0).to(ACC) * inv_t + sigma * n2.to(ACC)
    v3 = tl.load(text_row + 3 * Q + j, mask=m3, other=0.0).to(ACC) * inv_t + sigma * n3.to(ACC)
    return tl.where(m0, v0, 0.0), tl.where(m1, v1, 0.0), tl.where(m2, v2, 0.0), tl.where(m3, v3, 0.0), m0, m1, m2, m3


@triton.jit(do_not_specialize=["seed", "offset"])
def _noisy_text_kernel(
    text_ptr,
    out_ptr,
    norm_ptr,
    S,
    D,
    Q,
    sigma,
    seed,
    offset,
    TAG: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # k * S + s
    k = row // S
    s = row - k * S
    stream = (offset + s).to(tl.uint32)
    kk = k.to(tl.uint32)
    text_row = text_ptr + k * D
    out_row = out_ptr + row * D
    j = tl.arange(0, BLOCK_Q)
    # |t|
    tt = tl.zeros([BLOCK_Q], dtype=ACC)
    for start in range(0, D, BLOCK_Q):
        t = tl.load(text_row + start + j, mask=start + j < D, other=0.0).to(ACC)
        tt += t * t
    inv_t = 1.0 / tl.maximum(tl.sqrt(tl.sum(tt, axis=0)), 1e-12, propagate_nan=tl.PropagateNan.ALL)
    if ONE_TILE:
        v0, v1, v2, v3, m0, m1, m2, m3 = _text_quarters(text_row, j, Q, D, sigma, inv_t, seed, stream, kk, TAG, ACC)
        vn = tl.sqrt(tl.sum(v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3, axis=0))
        inv_v = 1.0 / tl.maximum(vn, 1e-12, propagate_nan=tl.PropagateNan.ALL)
        tl.store(out_row + j, (v0 * inv_v).to(out_ptr.dtype.element_ty), mask=m0)
        tl.store(out_row + Q + j, (v1 * inv_v).to(out_ptr.dtype.element_ty), mask=m1)
        tl.store(out_row + 2 * Q + j, (v2 * inv_v).to(out_ptr.dtype.element_ty), mask=m2)
        tl.store(out_row + 3 * Q + j, (v3 * inv_v).to(out_ptr.dtype.element_ty), mask=m3)
    else:
        vv = tl.zeros([BLOCK_Q], dtype=ACC)
        for start in range(0, Q, BLOCK_Q):
            v0, v1, v2, v3, m0, m1, m2, m3 = _text_quarters(
                text_row, j + start, Q, D, sigma, inv_t, seed, stream, kk, TAG, ACC
            )
            vv += v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3
        vn = tl.sqrt(tl.sum(vv, axis=0))
        inv_v = 1.0 / tl.maximum(vn, 1e-12, propagate_nan=tl.PropagateNan.ALL)
        for start in range(0, Q, BLOCK_Q):  # the noise again (cheaper and safer than reading back what we wrote)
            jj = j + start
            v0, v1, v2, v3, m0, m1, m2, m3 = _text_quarters(
                text_row, jj, Q, D, sigma, inv_t, seed, stream, kk, TAG, ACC
            )
            tl.store(out_row + jj, (v0 * inv_v).to(out_ptr.dtype.element_ty), mask=m0)
            tl.store(out_row + Q + jj, (v1 * inv_v).to(out_ptr.dtype.element_ty), mask=m1)
            tl.store(out_row + 2 * Q + jj, (v2 * inv_v).to(out_ptr.dtype.element_ty), mask=m2)
            tl.store(out_row + 3 * Q + jj, (v3 * inv_v).to(out_ptr.dtype.element_ty), mask=m3)
    tl.store(norm_ptr + row, vn)


def noisy_text_projection(text: torch.Tensor, sigma: float, samples: int, seed: int, offset: int):
    """Launcher: text ``(K, D)`` -> ``(out (K, samples, D), norm (K, samples))``; see text_cpu.cpp."""
    text = text.contiguous()
    K, D = text.shape
    if not (0 <= offset and offset + samples <= 2**32):
        raise ValueError(f"offset + samples must be in [0, 2^32], got offset {offset}")
    out = torch.empty((K, samples, D), dtype=text.dtype, device=text.device)
    norm = torch.empty((K, samples), dtype=acc_dtype(text.dtype), device=text.device)
    if out.numel() == 0:
        return out, norm.zero_()
    launch(plan_noisy_text_projection(text, out, norm, sigma, seed, offset))
    return out, norm


def plan_noisy_text_projection(text, out, norm, sigma: float, seed: int, offset: int) -> list[LaunchPlan]:
    """The launch writing ``out (K, S, D)`` and ``norm (K, S)`` from contiguous ``text (K, D)``."""
    K, S, D = out.shape
    Q = (D + 3) // 4
    block_q = min(triton.next_power_of_2(Q), _MAX_TEXT_TILE)
    one_tile = Q <= block_q
    plan = LaunchPlan(
        _noisy_text_kernel,
        (K * S,),
        (text, out, norm, S, D, Q, float(sigma), seed, offset),
        dict(TAG=TEXT_TAG, ACC=tl_acc_dtype(text.dtype), BLOCK_Q=block_q, ONE_TILE=one_tile),
        vector_warps(block_q, text.element_size(), 4),
        bytes_moved=(2 if one_tile else 4) * S * nbytes(text) + nbytes(out, norm),
        bytes_per_step=4 * block_q * text.element_size(),
    )
    return [plan]


@triton.jit
def _noisy_text_backward_kernel(
    grad_ptr, text_ptr, out_ptr, norm_ptr, grad_text_ptr, S, D, ACC: tl.constexpr, BLOCK_D: tl.constexpr
):
    k = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    # one tile holds the row (BLOCK_D >= D): grad_u accumulates over samples in registers
    gu = tl.zeros([BLOCK_D], dtype=ACC)
    for s in range(0, S):
        row = k * S + s
        g = tl.load(grad_ptr + row * D + cols, mask=mask, other=0.0).to(ACC)
        o = tl.load(out_ptr + row * D + cols, mask=mask, other=0.0).to(ACC)
        vn = tl.load(norm_ptr + row).to(ACC)
        go = tl.sum(g * o, axis=0)
        gu += tl.where(vn > 1e-12, (g - o * go) / vn, g / 1e-12)
    t = tl.load(text_ptr + k * D + cols, mask=mask, other=0.0).to(ACC)
    tt = tl.sum(t * t, axis=0)
    tn = tl.sqrt(tt)
    gut = tl.sum(gu * t, axis=0)
    gt = tl.where(tn > 1e-12, (gu - t * (gut / tt)) / tn, gu / 1e-12)
    tl.store(grad_text_ptr + k * D + cols, gt.to(grad_text_ptr.dtype.element_ty), mask=mask)


_MAX_BACKWARD_ROW = 16384  # longer rows would not fit one tile: composite fallback (a few kernels)


def _noisy_text_projection_backward_composite(grad_out, text, out, norm):
    acc = acc_dtype(text.dtype)
    g, o, t, vn = grad_out.to(acc), out.to(acc), text.to(acc), norm[..., None]
    grad_v = torch.where(vn > _NORMALIZE_EPS, (g - o * (g * o).sum(-1, keepdim=True)) / vn, g / _NORMALIZE_EPS)
    gu = grad_v.sum(1)
    tt = (t * t).sum(-1, keepdim=True)
    tn = tt.sqrt()
    gt = torch.where(tn > _NORMALIZE_EPS, (gu - t * (gu * t).sum(-1, keepdim=True) / tt) / tn, gu / _NORMALIZE_EPS)
    return gt.to(text.dtype)


def noisy_text_projection_backward(grad_out, text, out, norm):
    """Launcher: gradient of ``noisy_text_projection`` with respect to text ``(K, D)``."""
    text, grad_out, out, norm = (t.contiguous() for t in (text, grad_out, out, norm))
    K, D = text.shape
    if D > _MAX_BACKWARD_ROW:
        return _noisy_text_projection_backward_composite(grad_out, text, out, norm)
    grad_text = torch.empty_like(text)
    if grad_text.numel() == 0:
        return grad_text
    launch(plan_noisy_text_projection_backward(grad_out, text, out, norm, grad_text))
    return grad_text


def plan_noisy_text_projection_backward(grad_out, text, out, norm, grad_text) -> list[LaunchPlan]:
    """The launch writing ``grad_text (K, D)`` (rows up to ``_MAX_BACKWARD_ROW``; all tensors contiguous)."""
    K, S, D = out.shape
    block_d = triton.next_power_of_2(D)
    plan = LaunchPlan(
        _noisy_text_backward_kernel,
        (K,),
        (grad_out, text, out, norm, grad_text, S, D),
        dict(ACC=tl_acc_dtype(text.dtype), BLOCK_D=block_d),
        min(16, max(1, block_d // 256)),
        bytes_moved=nbytes(grad_out, text, out, norm, grad_text),
        bytes_per_step=2 * block_d * text.element_size(),
    )
    return [plan]


# CLIP cosine loss


@triton.jit
def _load_row_blocks(z_ptr, t_ptr, base, rmask, start, D, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """Columns ``start .. start+BLOCK_D`` of the rows at ``base``: the columns, their mask and the z and t values."""
    cols = start + tl.arange(0, BLOCK_D)
    m = rmask[:, None] & (cols < D)[None, :]
    z = tl.load(z_ptr + base + cols[None, :], mask=m, other=0.0).to(ACC)
    t = tl.load(t_ptr + base + cols[None, :], mask=m, other=0.0).to(ACC)
    return cols, m, z, t


@triton.jit
def _row_dots(z_ptr, t_ptr, rows, rmask, D, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    zt = tl.zeros([BLOCK_R], dtype=ACC)
    zz = tl.zeros([BLOCK_R], dtype=ACC)
    tt = tl.zeros([BLOCK_R], dtype=ACC)
    base = rows.to(tl.int64)[:, None] * D
    for start in range(0, D, BLOCK_D):
        cols, m, z, t = _load_row_blocks(z_ptr, t_ptr, base, rmask, start, D, ACC, BLOCK_D)
        zt += tl.sum(z * t, axis=1)
        zz += tl.sum(z * z, axis=1)
        tt += tl.sum(t * t, axis=1)
    return zt, zz, tt


@triton.jit
def _cosine_loss_kernel(
    z_ptr,
    t_ptr,
    partial_ptr,
    loss_ptr,
    B,
    D,
    rows_per_program,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FINAL: tl.constexpr,
):
    pid = tl.program_id(0)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, B)
    total = tl.zeros([BLOCK_R], dtype=ACC)
    for start in range(first, last, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        rmask = rows < last
        zt, zz, tt = _row_dots(z_ptr, t_ptr, rows, rmask, D, ACC, BLOCK_R, BLOCK_D)
        cos = zt / (tl.maximum(tl.sqrt(zz), 1e-8) * tl.maximum(tl.sqrt(tt), 1e-8))
        total += tl.where(rmask, 1.0 - cos, 0.0)
    partial = tl.sum(total, axis=0)
    if FINAL:
        tl.store(loss_ptr, partial / B)
    else:
        tl.store(partial_ptr + pid, partial)


@triton.jit
def _sum_partials_kernel(partial_ptr, loss_ptr, n, B, ACC: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + idx, mask=idx < n, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0) / B)


_ONE_PROGRAM_ELEMENTS = 1 << 16  # batches up to this many elements (64 rows of 1024) are reduced in one launch
_ROWS_PER_PROGRAM = 32


# [BLOCK_R, BLOCK_D] tiles of z and t (4096 elements each): 8 warps keep the backward under 100 registers (4 warps:
# 168 on sm_80, 12 warps/SM; gpu_report).
_ROW_WARPS = 8


def _row_blocks(D: int) -> tuple[int, int]:
    block_d = min(triton.next_power_of_2(D), 512)
    return max(1, min(16, 4096 // block_d)), block_d


def clip_cosine_loss(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Launcher: ``mean(1 - cos(image[b], text[b]))`` as a 0-dim tensor in the accumulation dtype."""
    image, text = image.contiguous(), text.contiguous()
    B, D = image.shape
    loss = torch.empty((), dtype=acc_dtype(image.dtype), device=image.device)
    launch(plan_clip_cosine_loss(image, text, loss))
    return loss


def plan_clip_cosine_loss(image, text, loss) -> list[LaunchPlan]:
    """One launch when the whole batch fits one program, else partial sums and their fixed-order reduction."""
    B, D = image.shape
    acc = tl_acc_dtype(image.dtype)
    block_r, block_d = _row_blocks(D)
    constexprs = dict(ACC=acc, BLOCK_R=block_r, BLOCK_D=block_d)
    traffic = dict(bytes_moved=nbytes(image, text), bytes_per_step=2 * block_r * block_d * image.element_size())
    if B * D <= _ONE_PROGRAM_ELEMENTS:
        args = (image, text, loss, loss, B, D, B)
        return [LaunchPlan(_cosine_loss_kernel, (1,), args, dict(constexprs, FINAL=True), _ROW_WARPS, **traffic)]
    programs = triton.cdiv(B, _ROWS_PER_PROGRAM)
    partial = torch.empty(programs, dtype=loss.dtype, device=image.device)
    args = (image, text, partial, loss, B, D, _ROWS_PER_PROGRAM)
    return [
        LaunchPlan(_cosine_loss_kernel, (programs,), args, dict(constexprs, FINAL=False), _ROW_WARPS, **traffic),
        LaunchPlan(
            _sum_partials_kernel,
            (1,),
            (partial, loss, programs, B),
            dict(ACC=acc, BLOCK=1024),
            4,
            bytes_moved=nbytes(partial, loss),
            bytes_per_step=nbytes(partial),
        ),
    ]


@triton.jit
def _cosine_loss_backward_kernel(
    grad_loss_ptr,
    z_ptr,
    t_ptr,
    gz_ptr,
    gt_ptr,
    B,
    D,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GRAD_TEXT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < B
    zt, zz, tt = _row_dots(z_ptr, t_ptr, rows, rmask, D, ACC, BLOCK_R, BLOCK_D)
    zn = tl.sqrt(zz)
    tn = tl.sqrt(tt)
    nz = tl.maximum(zn, 1e-8)
    nt = tl.maximum(tn, 1e-8)
    cos = zt / (nz * nt)
    coef = -tl.load(grad_loss_ptr).to(ACC) / B
    cross = (coef / (nz * nt))[:, None]
    self_z = tl.where(zn > 1e-8, coef * cos / (nz * nz), 0.0)[:, None]
    self_t = tl.where(tn > 1e-8, coef * cos / (nt * nt), 0.0)[:, None]
    base = rows.to(tl.int64)[:, None] * D
    for start in range(0, D, BLOCK_D):
        cols, m, z, t = _load_row_blocks(z_ptr, t_ptr, base, rmask, start, D, ACC, BLOCK_D)
        tl.store(gz_ptr + base + cols[None, :], (cross * t - self_z * z).to(gz_ptr.dtype.element_ty), mask=m)
        if GRAD_TEXT:
            tl.store(gt_ptr + base + cols[None, :], (cross * z - self_t * t).to(gt_ptr.dtype.element_ty), mask=m)


def clip_cosine_loss_backward(grad_loss, image, text, compute_grad_text: bool):
    """Launcher: ``(grad_image, grad_text)`` (grad_text empty unless ``compute_grad_text``)."""
    image, text = image.contiguous(), text.contiguous()
    B, D = image.shape
    grad_loss = grad_loss.reshape(()).to(acc_dtype(image.dtype))
    grad_image = torch.empty_like(image)
    grad_text = torch.empty_like(text) if compute_grad_text else text.new_empty(0)
    launch(plan_clip_cosine_loss_backward(grad_loss, image, text, grad_image, grad_text if compute_grad_text else None))
    return grad_image, grad_text


def plan_clip_cosine_loss_backward(grad_loss, image, text, grad_image, grad_text) -> list[LaunchPlan]:
    """The launch writing ``grad_image`` and, unless ``grad_text`` is None, ``grad_text`` (all ``(B, D)``)."""
    B, D = image.shape
    block_r, block_d = _row_blocks(D)
    plan = LaunchPlan(
        _cosine_loss_backward_kernel,
        (triton.cdiv(B, block_r),),
        (grad_loss, image, text, grad_image, grad_text if grad_text is not None else grad_image, B, D),
        dict(ACC=tl_acc_dtype(image.dtype), BLOCK_R=block_r, BLOCK_D=block_d, GRAD_TEXT=grad_text is not None),
        _ROW_WARPS,
        bytes_moved=2 * nbytes(image, text) + nbytes(grad_image, grad_text),
        bytes_per_step=2 * block_r * block_d * image.element_size(),
    )
    return [plan]


# The feature-side launch plans, still looked up here by the GPU report (family "text").
from styleda_fast.ops.feature_noise._triton import (  # noqa: E402, F401
    plan_noisy_style_features,
    plan_noisy_style_features_backward,
)
