"""Triton kernels of the class-statistics family: dominant class per patch and per-class feature statistics.

Both count and sum per class without atomics and without ``tl.histogram`` (which the interpreter and GPUs have
disagreed on): a block of ``BLOCK`` pixels is compared with the ``KP`` class slots at once (a ``(KP, BLOCK)``
boolean matrix) and reduced along the pixels. Integer counts and fixed reduction orders make the results
deterministic.

* ``patch_dominant_class``: each patch is cut into chunks of rows; program ``(patch, chunk)`` reads its rows in tiles
  along the contiguous columns (vector loads) and writes the chunk's histogram
  to a scratch buffer, and a second kernel sums the chunks of a patch and votes (most votes, ties to the smallest
  value). The split gives a GPU enough programs for 8 label maps of 768x768 (72 patches).
* ``class_mean_std``: x is read in place when its images are NCHW or channels-last with any batch stride
  (``batch_strided_layout``: dense tensors, channels_last, a ViT's patch tokens seen as a grid by
  ``styleda_fast.tokens_as_grid``, whose prefix tokens are never read); anything else is copied to NCHW first.
  NCHW: one program per (image, channel) plane, two passes (class means, then centered squares; the second read of
  a 147 KB plane comes from L2). Channels-last: one program per (image, block of ``BLOCK_C`` channels) reads
  ``[BLOCK_P, BLOCK_C]`` tiles (contiguous along the channels) and sums them into ``[KP, BLOCK_C]`` per-class sums
  through a ``(KP, BLOCK_P)`` one-hot matrix; the same two passes. In float32 (float64 for float64 inputs).

Labels outside ``[0, K)`` and not the ignore value match no slot, so they are never used as an address; the public
API rejects them before launching.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from styleda_fast.core.checks import acc_dtype, batch_strided_layout, kernel_layout
from styleda_fast.core.triton_utils import LaunchPlan, launch, nbytes, tl_acc_dtype


@triton.jit
def _patch_histogram_kernel(
    labels_ptr,
    hist_ptr,
    H,
    W,
    GH,
    GW,
    K,
    ignore_index,
    chunk_rows,
    n_chunks,
    KP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    COLUMN_MULTIPLE: tl.constexpr,
):
    """Histogram of the rows ``[chunk * chunk_rows, ...)`` of one patch, in ``[BLOCK_R, BLOCK_W]`` tiles that run
    along the contiguous columns (COLUMN_MULTIPLE divides every patch's first column and width: vector loads)."""
    pid = tl.program_id(0).to(tl.int64)  # (image, patch)
    s = tl.program_id(1)  # chunk of the patch's rows
    b = pid // (GH * GW)
    p = pid % (GH * GW)
    i = p // GW
    j = p % GW
    r0 = (i * H) // GH
    r1 = ((i + 1) * H) // GH
    c0 = (j * W) // GW
    pw = ((j + 1) * W) // GW - c0
    if COLUMN_MULTIPLE > 1:
        c0 = tl.multiple_of(c0, COLUMN_MULTIPLE)
        pw = tl.multiple_of(pw, COLUMN_MULTIPLE)
    start = r0 + s * chunk_rows
    stop = tl.minimum(start + chunk_rows, r1)
    slots = tl.arange(0, KP)
    counts = tl.zeros((KP,), dtype=tl.int32)
    base = labels_ptr + b * H * W + c0
    for row in range(start, stop, BLOCK_R):
        for col in range(0, pw, BLOCK_W):
            r = row + tl.arange(0, BLOCK_R)
            c = col + tl.arange(0, BLOCK_W)
            mask = (r < stop)[:, None] & (c < pw)[None, :]
            lab = tl.load(base + r.to(tl.int64)[:, None] * W + c[None, :], mask=mask, other=0).to(tl.int64)
            slot = tl.where(lab == ignore_index, K, tl.where((lab >= 0) & (lab < K), lab, -1))
            slot = tl.where(mask, slot, -1)
            eq = slots[:, None, None] == slot[None, :, :]
            counts += tl.sum(tl.sum(eq.to(tl.int32), axis=2), axis=1)
    tl.store(hist_ptr + (pid * n_chunks + s) * KP + slots, counts)


@triton.jit
def _vote_kernel(hist_ptr, out_ptr, K, ignore_index, n_chunks, COUNT_IGNORE: tl.constexpr, KP: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, KP)
    counts = tl.zeros((KP,), dtype=tl.int32)
    for s in range(0, n_chunks):
        counts += tl.load(hist_ptr + (pid * n_chunks + s) * KP + slots)
    voting = slots < K + 1 if COUNT_IGNORE else slots < K
    counts = tl.where(voting, counts, -1)
    values = tl.where(slots == K, ignore_index, slots.to(tl.int64))
    best = tl.max(counts, axis=0)
    big = 9223372036854775807
    winner = tl.min(tl.where(counts == best, values, big), axis=0)
    winner = tl.where(best > 0, winner, ignore_index)
    tl.store(out_ptr + pid, winner)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 2))


def plan_patch_dominant_class(
    labels: torch.Tensor,
    out: torch.Tensor,
    grid_h: int,
    grid_w: int,
    num_classes: int,
    ignore_index: int,
    count_ignore: bool,
) -> list[LaunchPlan]:
    """The histogram and vote launches writing ``out (B, gh, gw)`` from contiguous ``labels (B, H, W)``."""
    B, H, W = labels.shape
    KP = _pow2(num_classes + 1)
    block = max(64, min(1024, 8192 // KP))  # pixels per tile: KP x block slot comparisons (56 registers at KP 32)
    patch_rows, patch_cols = -(-H // grid_h), -(-W // grid_w)
    block_w = min(triton.next_power_of_2(patch_cols), block)
    block_r = max(1, block // block_w)
    chunk_rows = triton.cdiv(triton.cdiv(patch_rows, 16), block_r) * block_r  # up to 16 chunks per patch
    n_chunks = triton.cdiv(patch_rows, chunk_rows)
    # A power of two (<= 16) dividing every patch's first column and width.
    column_multiple = math.gcd(*((j * W) // grid_w for j in range(grid_w + 1)), 16)
    patches = B * grid_h * grid_w
    hist = torch.empty((patches, n_chunks, KP), dtype=torch.int32, device=labels.device)
    histogram = LaunchPlan(
        _patch_histogram_kernel,
        (patches, n_chunks),
        (labels, hist, H, W, grid_h, grid_w, num_classes, ignore_index, chunk_rows, n_chunks),
        dict(KP=KP, BLOCK_R=block_r, BLOCK_W=block_w, COLUMN_MULTIPLE=column_multiple),
        4,
        bytes_moved=nbytes(labels, hist),
        bytes_per_step=block_r * block_w * labels.element_size(),
    )
    vote = LaunchPlan(
        _vote_kernel,
        (patches,),
        (hist, out, num_classes, ignore_index, n_chunks),
        dict(COUNT_IGNORE=bool(count_ignore), KP=KP),
        4,
        bytes_moved=nbytes(hist, out),
        bytes_per_step=KP * 4,
    )
    return [histogram, vote]


def patch_dominant_class(
    labels: torch.Tensor, grid_h: int, grid_w: int, num_classes: int, ignore_index: int, count_ignore: bool
) -> torch.Tensor:
    """Launcher: ``labels (B, H, W)`` integer -> ``(B, gh, gw)`` int64 (see the operator's schema comment)."""
    labels = labels.contiguous()
    out = torch.empty((labels.shape[0], grid_h, grid_w), dtype=torch.int64, device=labels.device)
    launch(plan_patch_dominant_class(labels, out, grid_h, grid_w, num_classes, ignore_index, count_ignore))
    return out


@triton.jit
def _load_chunk(xp, lp, off, N, K, slots, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Pixels ``off .. off+BLOCK`` of one plane: their class slot (-1 outside ``[0, K)`` or past the end), their
    values in ACC, and the ``(KP, BLOCK)`` matrix saying which slot each pixel belongs to."""
    idx = off + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < N
    lab = tl.load(lp + idx, mask=mask, other=-1).to(tl.int64)
    slot = tl.where(mask & (lab >= 0) & (lab < K), lab, -1)
    xv = tl.load(xp + idx, mask=mask, other=0).to(ACC)
    return slot, xv, slots[:, None] == slot[None, :]


@triton.jit
def _class_mean_std_kernel(
    x_ptr,
    labels_ptr,
    mean_ptr,
    std_ptr,
    count_ptr,
    x_stride_b,
    C,
    N,
    K,
    eps,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """x: NCHW images ``x_stride_b`` elements apart (``>= C*N``)."""
    pid = tl.program_id(0).to(tl.int64)  # (image, channel)
    b = pid // C
    c = pid % C
    xp = x_ptr + b * x_stride_b + c * N
    lp = labels_ptr + b * N
    slots = tl.arange(0, KP)
    sums = tl.zeros((KP,), dtype=ACC)
    counts = tl.zeros((KP,), dtype=tl.int32)
    for off in range(0, N, BLOCK):
        slot, xv, eq = _load_chunk(xp, lp, off, N, K, slots, BLOCK, ACC)
        sums += tl.sum(tl.where(eq, xv[None, :], 0.0), axis=1)
        counts += tl.sum(eq.to(tl.int32), axis=1)
    n = counts.to(ACC)
    mean = tl.where(counts > 0, sums / tl.maximum(n, 1.0), 0.0)
    sq = tl.zeros((KP,), dtype=ACC)
    for off in range(0, N, BLOCK):
        slot, xv, eq = _load_chunk(xp, lp, off, N, K, slots, BLOCK, ACC)
        pixel_mean = tl.sum(tl.where(eq, mean[:, None], 0.0), axis=0)
        d = tl.where(slot >= 0, xv - pixel_mean, 0.0)
        sq += tl.sum(tl.where(eq, (d * d)[None, :], 0.0), axis=1)
    var = tl.where(counts > 1, sq / tl.maximum(n - 1.0, 1.0), 0.0)
    std = tl.where(counts > 0, tl.sqrt(var + eps), 0.0)
    keep = slots < K
    out = (b * K + slots) * C + c
    tl.store(mean_ptr + out, mean, mask=keep)
    tl.store(std_ptr + out, std, mask=keep)
    tl.store(count_ptr + b * K + slots, counts.to(tl.int64), mask=keep & (c == 0))


@triton.jit
def _load_pixels(xp, lp, off, N, C, c, c_mask, K, slots, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Pixels ``off .. off+BLOCK_P`` of one channels-last image: their class slot (-1 outside ``[0, K)`` or past the
    end), their ``[BLOCK_P, BLOCK_C]`` values of channels ``c`` in ACC, and the ``(KP, BLOCK_P)`` one-hot matrix."""
    idx = off + tl.arange(0, BLOCK_P).to(tl.int64)
    mask = idx < N
    lab = tl.load(lp + idx, mask=mask, other=-1).to(tl.int64)
    slot = tl.where(mask & (lab >= 0) & (lab < K), lab, -1)
    xv = tl.load(xp + idx[:, None] * C + c[None, :], mask=mask[:, None] & c_mask[None, :], other=0).to(ACC)
    return slot, xv, slots[:, None] == slot[None, :]


@triton.jit
def _class_mean_std_nhwc_kernel(
    x_ptr,
    labels_ptr,
    mean_ptr,
    std_ptr,
    count_ptr,
    x_stride_b,
    C,
    N,
    K,
    eps,
    channel_blocks,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """x: channels-last images ``x_stride_b`` elements apart (``>= C*N``; a token grid has ``(prefix + N) * C``).
    One program per (image, block of BLOCK_C channels)."""
    pid = tl.program_id(0).to(tl.int64)  # (image, channel block)
    b = pid // channel_blocks
    block = pid % channel_blocks
    c = block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    xp = x_ptr + b * x_stride_b
    lp = labels_ptr + b * N
    slots = tl.arange(0, KP)
    sums = tl.zeros((KP, BLOCK_C), dtype=ACC)
    counts = tl.zeros((KP,), dtype=tl.int32)
    for off in range(0, N, BLOCK_P):
        slot, xv, eq = _load_pixels(xp, lp, off, N, C, c, c_mask, K, slots, BLOCK_P, ACC)
        sums += tl.sum(tl.where(eq[:, :, None], xv[None, :, :], 0.0), axis=1)
        counts += tl.sum(eq.to(tl.int32), axis=1)
    n = counts.to(ACC)[:, None]
    mean = tl.where(n > 0, sums / tl.maximum(n, 1.0), 0.0)
    sq = tl.zeros((KP, BLOCK_C), dtype=ACC)
    for off in range(0, N, BLOCK_P):
        slot, xv, eq = _load_pixels(xp, lp, off, N, C, c, c_mask, K, slots, BLOCK_P, ACC)
        pixel_mean = tl.sum(tl.where(eq[:, :, None], mean[:, None, :], 0.0), axis=0)
        d = tl.where((slot >= 0)[:, None], xv - pixel_mean, 0.0)
        sq += tl.sum(tl.where(eq[:, :, None], (d * d)[None, :, :], 0.0), axis=1)
    var = tl.where(n > 1, sq / tl.maximum(n - 1.0, 1.0), 0.0)
    std = tl.where(n > 0, tl.sqrt(var + eps), 0.0)
    keep = slots < K
    out = (b * K + slots[:, None]) * C + c[None, :]
    tl.store(mean_ptr + out, mean, mask=keep[:, None] & c_mask[None, :])
    tl.store(std_ptr + out, std, mask=keep[:, None] & c_mask[None, :])
    tl.store(count_ptr + b * K + slots, counts.to(tl.int64), mask=keep & (block == 0))


# Elements of the one-hot products a program holds at once (KP x BLOCK in NCHW, KP x BLOCK_P x BLOCK_C otherwise).
ONE_HOT_ELEMENTS = 8192


def plan_class_mean_std(x, labels, mean, std, count, num_classes: int, eps: float) -> list[LaunchPlan]:
    """The launch writing ``mean``, ``std`` ``(B, K, C)`` and ``count`` ``(B, K)`` (zeroed by the caller) from x
    read in place (``batch_strided_layout(x)`` must not be None: NCHW or channels-last images, any batch stride;
    see :func:`styleda_fast.core.checks.kernel_layout`) and contiguous labels ``(B, H, W)``."""
    layout = batch_strided_layout(x)
    if layout is None:
        raise ValueError(f"x must have NCHW or channels-last images (any batch stride), got strides {x.stride()}")
    order, x_stride_b = layout
    if order == "nhwc":
        return _plan_class_mean_std_nhwc(x, x_stride_b, labels, mean, std, count, num_classes, eps)
    B, C, H, W = x.shape
    KP = _pow2(num_classes)
    BLOCK = max(16, min(1024, ONE_HOT_ELEMENTS // KP))
    plan = LaunchPlan(
        _class_mean_std_kernel,
        (B * C,),
        (x, labels, mean, std, count, x_stride_b, C, H * W, num_classes, float(eps)),
        dict(KP=KP, BLOCK=BLOCK, ACC=tl_acc_dtype(x.dtype)),
        4,
        bytes_moved=2 * nbytes(x) + 2 * C * nbytes(labels) + nbytes(mean, std, count),
        bytes_per_step=BLOCK * (x.element_size() + labels.element_size()),
    )
    return [plan]


def _plan_class_mean_std_nhwc(x, x_stride_b, labels, mean, std, count, num_classes, eps) -> list[LaunchPlan]:
    B, C, H, W = x.shape
    KP = _pow2(num_classes)
    # KP x BLOCK_P x BLOCK_C <= ONE_HOT_ELEMENTS: up to 32 channels (a 128-byte fp32 line per pixel), at least 4
    # pixels per tile; 8 pixels x 32 channels for 19 classes.
    block_c = max(1, min(triton.next_power_of_2(max(C, 1)), 32, ONE_HOT_ELEMENTS // (KP * 4)))
    block_p = max(1, min(128, ONE_HOT_ELEMENTS // (KP * block_c)))
    channel_blocks = triton.cdiv(C, block_c)
    plan = LaunchPlan(
        _class_mean_std_nhwc_kernel,
        (B * channel_blocks,),
        (x, labels, mean, std, count, x_stride_b, C, H * W, num_classes, float(eps), channel_blocks),
        dict(KP=KP, BLOCK_P=block_p, BLOCK_C=block_c, ACC=tl_acc_dtype(x.dtype)),
        4,
        bytes_moved=2 * nbytes(x) + 2 * channel_blocks * nbytes(labels) + nbytes(mean, std, count),
        bytes_per_step=block_p * (block_c * x.element_size() + labels.element_size()),
    )
    return [plan]


def class_mean_std(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher: ``x (B, C, H, W)``, ``labels (B, H, W)`` -> ``mean (B, K, C)``, ``std (B, K, C)``,
    ``count (B, K)`` int64. Pixels whose label is outside ``[0, K)`` are skipped. x is read in place when its images
    are NCHW or channels-last with any batch stride (e.g. a token grid), else copied to NCHW."""
    x = kernel_layout(x)
    labels = labels.contiguous()
    B, C, H, W = x.shape
    K = num_classes
    acc = acc_dtype(x.dtype)
    mean = torch.empty((B, K, C), dtype=acc, device=x.device)
    std = torch.empty_like(mean)
    count = torch.zeros((B, K), dtype=torch.int64, device=x.device)
    if x.numel() == 0:  # no image, channel or pixel: every class absent, as in the C++ kernel
        return mean.zero_(), std.zero_(), count
    launch(plan_class_mean_std(x, labels, mean, std, count, K, eps))
    return mean, std, count
