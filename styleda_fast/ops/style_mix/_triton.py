"""Triton kernels of the style-mix family: per-patch statistics and patch-wise AdaIN with mixing, forward and backward.

Same operators, signatures and numbers as the C++ CPU kernels in ``style_mix_cpu.cpp`` (math: ``README.md``;
specification: ``reference.py``). These are plain launchers without autograd, registered as the operators' CUDA
kernels; the operators' declarations (``_ops.py``) check every call before a launch, whether it came through the
public API or straight through ``torch.ops.styleda_fast``.

Design:

* One program per (image, patch, block of channels) owns every reduction of that block, so there are no atomics
  and results are deterministic. It works on 3-D tiles ``[BLOCK_C, BLOCK_H, BLOCK_W]`` addressed with x's strides:
  NCHW tiles run along the contiguous columns, channels_last tiles along the contiguous channels (a block of
  channels fills a 128-byte line per pixel). Each tensor has its own batch stride, so a ViT's patch tokens seen as a
  grid (``styleda_fast.tokens_as_grid``: channels-last images ``(prefix + h*w) * C`` apart) are read and written in
  place, as by the C++ kernels; fresh outputs have x's strides (``empty_kernel_output``).
* When the whole patch fits one tile (``SINGLE_TILE``), the program reads it once, keeps it in registers for the
  statistics and writes the output: one read and one write of x. Otherwise it loops over tiles: one pass for the
  statistics, one for the output (or the gradient). The second pass runs from the last tile backwards, so the most
  recently read tiles (the likeliest still in L2) come first, and with few tiles per patch (``KEEP_LAST``: PODA's
  NCHW planes, 9 tiles) the last tile is not read again at all but kept in registers.
* Tile shapes and warps come from ``styleda_fast.devtools.gpu_report`` (registers, spills, occupancy, 128-bit accesses
  compiled for sm_80/sm_90 at the benchmark shapes; ``tests/devtools/test_triton_compile.py``). Offsets are
  32-bit when x is small enough (fewer registers).
* Statistics are never ``E[x^2] - E[x]^2`` (features have large means): each tile's mean and centered sum of
  squares are combined with Chan's parallel formula, in the accumulation dtype (float64 for float64 x, else float32).
* A patch of one pixel has variance 0 (``std = sqrt(eps)``), as in the reference.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from styleda_fast.core.checks import acc_dtype, batch_strided_layout, empty_kernel_output, kernel_layout
from styleda_fast.core.triton_utils import LaunchPlan, launch, nbytes, next_pow2, prev_pow2, tl_acc_dtype

# Most elements one program holds in a tile. Read at every launch, so tests can lower it to exercise the tile loops.
MAX_TILE_ELEMENTS = 4096

# channels_last: channels per program, so that each pixel's block of channels is one 128-byte line.
_CHANNEL_LINE_BYTES = 128


# kernels


@triton.jit
def _program_coordinates(
    channels,
    height,
    width,
    grid_h,
    grid_w,
    channel_blocks,
    BLOCK_C: tl.constexpr,
    COLUMN_MULTIPLE: tl.constexpr,
    INDEX: tl.constexpr,
):
    """Which (image, patch, channel block) this program owns, and the patch's first row/column and size.

    COLUMN_MULTIPLE divides every patch's first column and width (a hint that lets NCHW rows load as vectors).
    """
    pid = tl.program_id(0)
    num_patches = grid_h * grid_w
    channel_block = pid % channel_blocks
    patch = (pid // channel_blocks) % num_patches
    image = pid // (channel_blocks * num_patches)
    i = patch // grid_w
    j = patch % grid_w
    row0 = i * height // grid_h
    col0 = j * width // grid_w
    rows = (i + 1) * height // grid_h - row0
    cols = (j + 1) * width // grid_w - col0
    if COLUMN_MULTIPLE > 1:
        col0 = tl.multiple_of(col0, COLUMN_MULTIPLE)
        cols = tl.multiple_of(cols, COLUMN_MULTIPLE)
    channel = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channel < channels
    # Index of (image, channel, i, j) in the contiguous (B, C, gh, gw) per-patch tensors.
    param_index = (image.to(INDEX) * channels + channel) * num_patches + patch
    return image, channel, channel_mask, param_index, row0, col0, rows, cols


@triton.jit
def _channel_offsets(channel, channel_mask, stride_c, CHANNELS_LAST: tl.constexpr, INDEX: tl.constexpr):
    """Offsets ``[BLOCK_C, 1, 1]`` of the channel planes within an image, and their mask (unit stride known
    statically). Each tensor's image base (``image * its batch stride``, 64-bit) is added to its pointer instead:
    tensors may have different batch strides (a token grid and a dense output), and offsets within one image fit
    32 bits far more often than offsets within the batch."""
    if CHANNELS_LAST:
        offsets = channel.to(INDEX)
    else:
        offsets = channel.to(INDEX) * stride_c
    return offsets[:, None, None], channel_mask[:, None, None]


@triton.jit
def _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Offsets and mask ``[BLOCK_C, BLOCK_H, BLOCK_W]`` of the tile at (tile_row, tile_col) within the patch.

    ``patch`` is the tuple ``(plane_offsets, plane_mask, row0, col0, rows, cols, stride_h, stride_w)``.
    """
    plane_offsets, plane_mask, row0, col0, rows, cols, stride_h, stride_w = patch
    row = tile_row + tl.arange(0, BLOCK_H)
    col = tile_col + tl.arange(0, BLOCK_W)
    row_offsets = (row0 + row).to(plane_offsets.dtype) * stride_h
    if CHANNELS_LAST:
        col_offsets = (col0 + col).to(plane_offsets.dtype) * stride_w
    else:
        col_offsets = (col0 + col).to(plane_offsets.dtype)
    offsets = plane_offsets + row_offsets[None, :, None] + col_offsets[None, None, :]
    mask = plane_mask & (row < rows)[None, :, None] & (col < cols)[None, None, :]
    return offsets, mask


@triton.jit
def _tile_start(t, tiles_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """First row and column (within the patch) of tile t; tiles run row-major, tiles_w of them per tile row."""
    return (t // tiles_w) * BLOCK_H, (t % tiles_w) * BLOCK_W


@triton.jit
def _sum_pixels(values):
    """``[BLOCK_C, BLOCK_H, BLOCK_W]`` -> ``[BLOCK_C]``."""
    return tl.sum(tl.sum(values, axis=2), axis=1)


@triton.jit
def _tile_mean_m2(tile, mask, tile_count):
    """Per-channel mean and centered sum of squares ``[BLOCK_C]`` of a loaded tile holding ``tile_count`` pixels."""
    mean = _sum_pixels(tile) / tile_count
    centered = tl.where(mask, tile - mean[:, None, None], 0.0)
    return mean, _sum_pixels(centered * centered)


@triton.jit
def _sqrt(value):
    if value.dtype == tl.float64:
        return tl.sqrt(value)  # IEEE for float64
    else:
        return tl.sqrt_rn(value)  # tl.sqrt is approximate for float32


@triton.jit
def _transfer(mean, std, target_mean_ptr, target_std_ptr, mix_ptr, param_index, channel_mask, HAS_MIX: tl.constexpr):
    """Per-channel ``(scale, shift, w)`` of ``out = act((x - mean) * scale + shift)``; w is the mix weight (or 0)."""
    target_mean = tl.load(target_mean_ptr + param_index, mask=channel_mask, other=0.0)
    target_std = tl.load(target_std_ptr + param_index, mask=channel_mask, other=1.0)
    if HAS_MIX:
        w = tl.load(mix_ptr + param_index, mask=channel_mask, other=0.0)
        target_mean = w * mean + (1.0 - w) * target_mean
        target_std = w * std + (1.0 - w) * target_std
    else:
        w = tl.zeros_like(mean)
    return target_std / std, target_mean, w


@triton.jit
def _activate(z, RELU: tl.constexpr):
    if RELU:
        return tl.where(z < 0, 0.0, z)  # keeps NaN, like torch.relu (tl.maximum would not)
    else:
        return z


@triton.jit
def _style_mix_forward_kernel(
    x_ptr,
    out_ptr,
    mean_ptr,
    std_ptr,
    target_mean_ptr,
    target_std_ptr,
    mix_ptr,
    channels,
    height,
    width,
    grid_h,
    grid_w,
    channel_blocks,
    x_stride_b,
    out_stride_b,
    stride_c,
    stride_h,
    stride_w,
    eps_hi,
    eps_lo,
    ACC: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    HAS_TARGET: tl.constexpr,
    HAS_MIX: tl.constexpr,
    RELU: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    KEEP_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    COLUMN_MULTIPLE: tl.constexpr,
    INDEX: tl.constexpr,
):
    """Statistics of one (image, patch, channel block) into mean/std; with HAS_TARGET also the transferred output.

    x, out: (B, C, H, W), images x_stride_b / out_stride_b elements apart, each image's elements at the same
    offsets (stride_c, stride_h, stride_w) in both. mean, std, target_mean, target_std, mix:
    (B, C, gh, gw) contiguous, ACC dtype. eps = eps_hi + eps_lo (a float argument reaches the kernel as float32).
    """
    image, channel, channel_mask, param_index, row0, col0, rows, cols = _program_coordinates(
        channels, height, width, grid_h, grid_w, channel_blocks, BLOCK_C, COLUMN_MULTIPLE, INDEX
    )
    x_ptr += image.to(tl.int64) * x_stride_b
    out_ptr += image.to(tl.int64) * out_stride_b
    plane_offsets, plane_mask = _channel_offsets(channel, channel_mask, stride_c, CHANNELS_LAST, INDEX)
    patch = (plane_offsets, plane_mask, row0, col0, rows, cols, stride_h, stride_w)
    count = rows * cols

    if SINGLE_TILE:
        offsets, mask = _tile_offsets(patch, 0, 0, CHANNELS_LAST, BLOCK_H, BLOCK_W)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        mean, m2 = _tile_mean_m2(x, mask, count.to(ACC))
    else:
        # Chan et al.: combine each tile's (count, mean, centered M2) into the running ones. With KEEP_LAST the last
        # tile stays in registers (x) for the output pass.
        tiles_w = tl.cdiv(cols, BLOCK_W)
        n_tiles = tl.cdiv(rows, BLOCK_H) * tiles_w
        mean = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        seen = count * 0
        x = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], ACC)
        for t in range(0, n_tiles):
            tile_row, tile_col = _tile_start(t, tiles_w, BLOCK_H, BLOCK_W)
            offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)
            tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
            tile_count = tl.minimum(rows - tile_row, BLOCK_H) * tl.minimum(cols - tile_col, BLOCK_W)
            tile_mean, tile_m2 = _tile_mean_m2(tile, mask, tile_count.to(ACC))
            if KEEP_LAST:
                x = tile
            total = seen + tile_count
            delta = tile_mean - mean
            mean += delta * (tile_count.to(ACC) / total.to(ACC))
            m2 += tile_m2 + delta * delta * (seen.to(ACC) * tile_count.to(ACC) / total.to(ACC))
            seen = total
        tile_row, tile_col = _tile_start(n_tiles - 1, tiles_w, BLOCK_H, BLOCK_W)
        offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)  # x's

    var = tl.where(count > 1, m2 / tl.maximum(count - 1, 1).to(ACC), 0.0)
    std = _sqrt(var + (tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)))
    tl.store(mean_ptr + param_index, mean, mask=channel_mask)
    tl.store(std_ptr + param_index, std, mask=channel_mask)

    if HAS_TARGET:
        scale, shift, _ = _transfer(
            mean, std, target_mean_ptr, target_std_ptr, mix_ptr, param_index, channel_mask, HAS_MIX
        )
        mean_3d, scale_3d, shift_3d = mean[:, None, None], scale[:, None, None], shift[:, None, None]
        # Single tile: x is the patch. Tile loop: the tiles are read again from the last backwards, the most
        # recently read first (the likeliest still in L2); with KEEP_LAST the last one is x.
        if SINGLE_TILE or KEEP_LAST:
            out = _activate((x - mean_3d) * scale_3d + shift_3d, RELU)
            tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)
        if not SINGLE_TILE:
            for k in range(1 if KEEP_LAST else 0, n_tiles):
                tile_row, tile_col = _tile_start(n_tiles - 1 - k, tiles_w, BLOCK_H, BLOCK_W)
                offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)
                tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
                out = _activate((tile - mean_3d) * scale_3d + shift_3d, RELU)
                tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_grad(
    grad_out_ptr, x_ptr, offsets, mask, mean_3d, scale_3d, shift_3d, ACC: tl.constexpr, RELU: tl.constexpr
):
    """``(x - mean, g)`` of a tile; g is grad_out where the forward's pre-activation was > 0 (or without ReLU)."""
    centered = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC) - mean_3d
    grad = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if RELU:
        grad = tl.where(centered * scale_3d + shift_3d > 0, grad, 0.0)
    return centered, grad


@triton.jit
def _style_mix_backward_kernel(
    grad_out_ptr,
    x_ptr,
    grad_x_ptr,
    mean_ptr,
    std_ptr,
    target_mean_ptr,
    target_std_ptr,
    mix_ptr,
    grad_mean_ptr,
    grad_std_ptr,
    own_grad_mean_ptr,
    own_grad_std_ptr,
    channels,
    height,
    width,
    grid_h,
    grid_w,
    channel_blocks,
    grad_out_stride_b,
    x_stride_b,
    grad_x_stride_b,
    stride_c,
    stride_h,
    stride_w,
    ACC: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    HAS_GRAD_OUT: tl.constexpr,
    HAS_MIX: tl.constexpr,
    RELU: tl.constexpr,
    COMPUTE_GRAD_X: tl.constexpr,
    SUMS_GIVEN: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    KEEP_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    COLUMN_MULTIPLE: tl.constexpr,
    INDEX: tl.constexpr,
):
    """Backward of one (image, patch, channel block); dx = a*g + b + c*(x - mean) with per-channel a, b, c.

    HAS_GRAD_OUT (local_style_mix backward): writes the per-patch sums S1 = sum(g), S2 = sum(g*xn) to
    grad_mean/grad_std (the gradients of the mixed mean/std). Otherwise (patch_mean_std backward): reads the
    incoming gradients of mean/std from grad_mean/grad_std. SUMS_GIVEN (local_style_mix_grad_x, with grad_out):
    reads S1, S2 from grad_mean/grad_std and the whole gradients of the patch's own mean/std from
    own_grad_mean/own_grad_std, and only writes grad_x. grad_out, x, grad_x: each image's elements at the same
    offsets (stride_c, stride_h, stride_w), images each tensor's own batch stride apart.
    """
    image, channel, channel_mask, param_index, row0, col0, rows, cols = _program_coordinates(
        channels, height, width, grid_h, grid_w, channel_blocks, BLOCK_C, COLUMN_MULTIPLE, INDEX
    )
    grad_out_ptr += image.to(tl.int64) * grad_out_stride_b
    x_ptr += image.to(tl.int64) * x_stride_b
    grad_x_ptr += image.to(tl.int64) * grad_x_stride_b
    plane_offsets, plane_mask = _channel_offsets(channel, channel_mask, stride_c, CHANNELS_LAST, INDEX)
    patch = (plane_offsets, plane_mask, row0, col0, rows, cols, stride_h, stride_w)
    count = rows * cols
    mean = tl.load(mean_ptr + param_index, mask=channel_mask, other=0.0)
    std = tl.load(std_ptr + param_index, mask=channel_mask, other=1.0)
    mean_3d = mean[:, None, None]
    if SINGLE_TILE:
        offsets, mask = _tile_offsets(patch, 0, 0, CHANNELS_LAST, BLOCK_H, BLOCK_W)
    else:
        tiles_w = tl.cdiv(cols, BLOCK_W)
        n_tiles = tl.cdiv(rows, BLOCK_H) * tiles_w

    if HAS_GRAD_OUT:
        scale, shift, w = _transfer(
            mean, std, target_mean_ptr, target_std_ptr, mix_ptr, param_index, channel_mask, HAS_MIX
        )
        scale_3d, shift_3d = scale[:, None, None], shift[:, None, None]
        if SUMS_GIVEN:
            if SINGLE_TILE:
                centered, grad = _masked_grad(
                    grad_out_ptr, x_ptr, offsets, mask, mean_3d, scale_3d, shift_3d, ACC, RELU
                )
            sum_grad = tl.load(grad_mean_ptr + param_index, mask=channel_mask, other=0.0)
            sum_grad_centered = tl.load(grad_std_ptr + param_index, mask=channel_mask, other=0.0) * std
        elif SINGLE_TILE:
            centered, grad = _masked_grad(grad_out_ptr, x_ptr, offsets, mask, mean_3d, scale_3d, shift_3d, ACC, RELU)
            sum_grad = _sum_pixels(grad)
            sum_grad_centered = _sum_pixels(grad * centered)
        else:
            # With KEEP_LAST the last tile's (x - mean, g) stay in registers for the grad_x pass.
            sum_grad = tl.zeros([BLOCK_C], ACC)
            sum_grad_centered = tl.zeros([BLOCK_C], ACC)
            centered = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], ACC)
            grad = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], ACC)
            for t in range(0, n_tiles):
                tile_row, tile_col = _tile_start(t, tiles_w, BLOCK_H, BLOCK_W)
                offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)
                tile_centered, tile_grad = _masked_grad(
                    grad_out_ptr, x_ptr, offsets, mask, mean_3d, scale_3d, shift_3d, ACC, RELU
                )
                sum_grad += _sum_pixels(tile_grad)
                sum_grad_centered += _sum_pixels(tile_grad * tile_centered)
                if KEEP_LAST:
                    centered, grad = tile_centered, tile_grad
            tile_row, tile_col = _tile_start(n_tiles - 1, tiles_w, BLOCK_H, BLOCK_W)
            offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)  # the last's
        if SUMS_GIVEN:
            sum_grad_normalized = tl.load(grad_std_ptr + param_index, mask=channel_mask, other=0.0)
            grad_of_mean = tl.load(own_grad_mean_ptr + param_index, mask=channel_mask, other=0.0)
            grad_of_std = tl.load(own_grad_std_ptr + param_index, mask=channel_mask, other=0.0)
        else:
            sum_grad_normalized = sum_grad_centered / std
            tl.store(grad_mean_ptr + param_index, sum_grad, mask=channel_mask)
            tl.store(grad_std_ptr + param_index, sum_grad_normalized, mask=channel_mask)
            # The share w of the gradient of the mixed statistics reaches the patch's own mean and std.
            grad_of_mean = w * sum_grad
            grad_of_std = w * sum_grad_normalized
    else:
        scale = tl.zeros_like(mean)
        sum_grad = tl.zeros_like(mean)
        sum_grad_normalized = tl.zeros_like(mean)
        grad_of_mean = tl.load(grad_mean_ptr + param_index, mask=channel_mask, other=0.0)
        grad_of_std = tl.load(grad_std_ptr + param_index, mask=channel_mask, other=0.0)

    if COMPUTE_GRAD_X:
        # dx = a*g + b + c*(x - mean), as the C++ grad_coefficients: d mean/dx = 1/n, d std/dx = xn/(n-1).
        # A 1-pixel patch (mean = the pixel, variance 0): dx = grad_of_mean exactly, with no cancellation.
        many = count > 1
        coef_g = tl.where(many, scale, 0.0)
        coef_const = tl.where(many, (grad_of_mean - scale * sum_grad) / count.to(ACC), grad_of_mean)
        coef_centered = (
            tl.where(many, (grad_of_std - scale * sum_grad_normalized) / tl.maximum(count - 1, 1).to(ACC), 0.0) / std
        )
        coef_g_3d, coef_const_3d, coef_centered_3d = (
            coef_g[:, None, None],
            coef_const[:, None, None],
            coef_centered[:, None, None],
        )
        if SINGLE_TILE:
            if not HAS_GRAD_OUT:
                centered = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC) - mean_3d
                grad_x = coef_const_3d + coef_centered_3d * centered
            else:
                grad_x = coef_g_3d * grad + coef_const_3d + coef_centered_3d * centered
            tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        else:
            # From the last tile backwards (the most recently read first: the likeliest still in L2); with grad_out
            # and KEEP_LAST the last tile comes from registers.
            if HAS_GRAD_OUT and KEEP_LAST and not SUMS_GIVEN:
                grad_x = coef_g_3d * grad + coef_const_3d + coef_centered_3d * centered
                tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
            for k in range(1 if HAS_GRAD_OUT and KEEP_LAST and not SUMS_GIVEN else 0, n_tiles):
                tile_row, tile_col = _tile_start(n_tiles - 1 - k, tiles_w, BLOCK_H, BLOCK_W)
                offsets, mask = _tile_offsets(patch, tile_row, tile_col, CHANNELS_LAST, BLOCK_H, BLOCK_W)
                if HAS_GRAD_OUT:
                    centered, grad = _masked_grad(
                        grad_out_ptr, x_ptr, offsets, mask, mean_3d, scale_3d, shift_3d, ACC, RELU
                    )
                    grad_x = coef_g_3d * grad + coef_const_3d + coef_centered_3d * centered
                else:
                    centered = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC) - mean_3d
                    grad_x = coef_const_3d + coef_centered_3d * centered
                tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


# launchers


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether x's images are laid out channels_last (NCHW wins when both fit, e.g. C == 1), any batch stride."""
    return batch_strided_layout(x)[0] == "nhwc"


def _batch_stride(t: torch.Tensor) -> int:
    """Elements between t's images (``C*H*W`` for dense tensors, more for a token grid)."""
    return batch_strided_layout(t)[1]


def _like_layout(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t itself when the kernels can read it with x's layout (the same order within each image, its own batch
    stride), else a copy with x's strides (t has x's shape)."""
    layout, x_layout = batch_strided_layout(t), batch_strided_layout(x)
    if layout is not None and layout[0] == x_layout[0]:
        return t
    return empty_kernel_output(x).copy_(t)


def _block_width(patch_cols: int, pixels: int) -> int:
    """Tile width (a power of two <= pixels): the one that pads the patch's columns least, the widest on ties, and
    at least a warp's 32 columns (or the whole row) so that rows stay coalesced: 192 columns -> 64 (3 tiles, no
    padding), not 256 (a quarter of the lanes idle)."""
    widest = min(next_pow2(patch_cols), pixels)
    candidates = [w for w in (1 << k for k in range(widest.bit_length())) if w >= min(32, widest)]
    return min(candidates, key=lambda w: (triton.cdiv(patch_cols, w) * w, -w))


class _TileConfig:
    """Tile shape of one program and how many programs cover x (read MAX_TILE_ELEMENTS at every launch)."""

    def __init__(self, x: torch.Tensor, grid_h: int, grid_w: int):
        batch, channels, height, width = x.shape
        self.channels_last = _is_channels_last(x)
        max_tile = prev_pow2(MAX_TILE_ELEMENTS)
        patch_rows, patch_cols = -(-height // grid_h), -(-width // grid_w)  # the largest patch
        if self.channels_last:
            line = max(1, _CHANNEL_LINE_BYTES // x.element_size())
            self.block_c = min(next_pow2(channels), line, max_tile)
            # Few patches (PODA's global statistics): narrower channel blocks, down to one 128-bit vector per pixel,
            # so that there are enough programs to fill the GPU (64 programs of 32 channels would leave most idle).
            vector = max(1, 16 // x.element_size())
            while self.block_c > vector and batch * grid_h * grid_w * triton.cdiv(channels, self.block_c) < 512:
                self.block_c //= 2
        else:
            self.block_c = 1
        pixels = max(1, max_tile // self.block_c)
        # channels_last: columns are not contiguous anyway; at most 32 columns per tile vs 64 is a wash over the
        # benchmark variants (gpu_report: 25 vs 24.6 warps/SM on average, 16 at least), better for PODA fp32/fp16.
        self.block_w = _block_width(patch_cols, min(pixels, 32) if self.channels_last else pixels)
        self.block_h = min(next_pow2(patch_rows), max(1, pixels // self.block_w))
        self.single_tile = self.block_h >= patch_rows and self.block_w >= patch_cols
        self.tiles = triton.cdiv(patch_rows, self.block_h) * triton.cdiv(patch_cols, self.block_w)
        # Keeping the last tile in registers across the statistics saves 1/tiles of the second read, for the price
        # of a tile of registers: worth it for few tiles (PODA's NCHW planes: 9 tiles, 11%), not for 32.
        self.keep_last = not self.single_tile and self.tiles <= 16
        if not self.channels_last and self.single_tile:
            # Small NCHW patches: several channel planes per program, so that programs stay large.
            self.block_c = min(next_pow2(channels), max(1, max_tile // (self.block_h * self.block_w)))
        # Power of two (<= 16) dividing every patch's first column and width; 1 where columns are not contiguous.
        column_starts = math.gcd(*((j * width) // grid_w for j in range(grid_w + 1)))
        self.column_multiple = 1 if self.channels_last else math.gcd(column_starts, 16)
        self.channel_blocks = triton.cdiv(channels, self.block_c)
        self.programs = batch * grid_h * grid_w * self.channel_blocks
        self.tile_elements = self.block_c * self.block_h * self.block_w
        # 32-bit offsets within an image (fewer registers) while every one, masked lanes of a tile past the edge
        # included, fits; the image's base is a 64-bit scalar added to each pointer.
        extent = sum((n - 1) * abs(st) for n, st in zip(x.shape[1:], x.stride()[1:])) + 1
        self.index = tl.int32 if 2 * extent < 2**31 else tl.int64
        self.num_warps = min(8, max(1, self.tile_elements // 512))

    def constexprs(self) -> dict:
        return {
            "CHANNELS_LAST": self.channels_last,
            "SINGLE_TILE": self.single_tile,
            "KEEP_LAST": self.keep_last,
            "BLOCK_C": self.block_c,
            "BLOCK_H": self.block_h,
            "BLOCK_W": self.block_w,
            "COLUMN_MULTIPLE": self.column_multiple,
            "INDEX": self.index,
        }


def _split_float(value: float) -> tuple[float, float]:
    """(hi, lo) with hi a float32 and hi + lo == value to ~48 bits: floats reach kernels as float32."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def _new_patch_params(x: torch.Tensor, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0], x.shape[1], grid_h, grid_w)
    dtype = acc_dtype(x.dtype)
    return torch.empty(shape, dtype=dtype, device=x.device), torch.empty(shape, dtype=dtype, device=x.device)


def plan_forward(x, out, mean, std, target_mean, target_std, mix, grid_h, grid_w, relu, eps) -> list[LaunchPlan]:
    """Statistics into mean/std and, when target_mean is given, the transferred output into out."""
    config = _TileConfig(x, grid_h, grid_w)
    has_target = target_mean is not None
    eps_hi, eps_lo = _split_float(float(eps))
    x_passes = 1 + (has_target and not config.single_tile) * (1 - config.keep_last / config.tiles)
    args = (
        x,
        out if has_target else x,
        mean,
        std,
        target_mean if has_target else mean,
        target_std if has_target else std,
        mix if mix is not None else mean,
        x.shape[1],
        x.shape[2],
        x.shape[3],
        grid_h,
        grid_w,
        config.channel_blocks,
        _batch_stride(x),
        _batch_stride(out) if has_target else _batch_stride(x),
        *x.stride()[1:],
        eps_hi,
        eps_lo,
    )
    constexprs = dict(
        ACC=tl_acc_dtype(x.dtype),
        HAS_TARGET=has_target,
        HAS_MIX=mix is not None,
        RELU=bool(relu),
        **config.constexprs(),
    )
    return [
        LaunchPlan(
            _style_mix_forward_kernel,
            (config.programs,),
            args,
            constexprs,
            config.num_warps,
            bytes_moved=int(x_passes * nbytes(x))
            + (nbytes(x) if has_target else 0)
            + nbytes(mean, std, target_mean, target_std, mix),
            bytes_per_step=config.tile_elements * x.element_size(),
        )
    ]


def plan_backward(
    grad_out, x, grad_x, mean, std, target_mean, target_std, mix, grad_mean, grad_std, relu, own_grads=None
) -> list[LaunchPlan]:
    """See _style_mix_backward_kernel; grad_out None selects the patch_mean_std backward, grad_x None skips dx;
    ``own_grads = (own_grad_mean, own_grad_std)`` selects local_style_mix_grad_x (grad_mean/grad_std then hold the
    given sums S1, S2)."""
    config = _TileConfig(x, mean.shape[2], mean.shape[3])
    has_grad_out = grad_out is not None
    sums_given = own_grads is not None
    inputs = 1 + has_grad_out  # tensors of x's size read per pass
    reread = (grad_x is not None) * (1 - config.keep_last / config.tiles)
    passes = 1 if config.single_tile or not has_grad_out or sums_given else 1 + reread
    args = (
        grad_out if has_grad_out else x,
        x,
        grad_x if grad_x is not None else x,
        mean,
        std,
        target_mean if target_mean is not None else mean,
        target_std if target_std is not None else std,
        mix if mix is not None else mean,
        grad_mean,
        grad_std,
        *(own_grads if sums_given else (mean, std)),
        x.shape[1],
        x.shape[2],
        x.shape[3],
        mean.shape[2],
        mean.shape[3],
        config.channel_blocks,
        _batch_stride(grad_out if has_grad_out else x),
        _batch_stride(x),
        _batch_stride(grad_x if grad_x is not None else x),
        *x.stride()[1:],
    )
    constexprs = dict(
        ACC=tl_acc_dtype(x.dtype),
        HAS_GRAD_OUT=has_grad_out,
        HAS_MIX=mix is not None,
        RELU=bool(relu),
        COMPUTE_GRAD_X=grad_x is not None,
        SUMS_GIVEN=sums_given,
        **config.constexprs(),
    )
    return [
        LaunchPlan(
            _style_mix_backward_kernel,
            (config.programs,),
            args,
            constexprs,
            config.num_warps,
            bytes_moved=int(passes * inputs * nbytes(x))
            + nbytes(grad_x, mean, std, target_mean, target_std, mix, grad_mean, grad_std, *(own_grads or ())),
            bytes_per_step=config.tile_elements * x.element_size() * inputs,
        )
    ]


def _dense(*params: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Per-patch inputs as the kernels index them, contiguous (the operators take any strides)."""
    return tuple(None if t is None else t.contiguous() for t in params)


def patch_mean_std(x: torch.Tensor, grid_h: int, grid_w: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std of x ``(B, C, H, W)``: each ``(B, C, grid_h, grid_w)`` in the accumulation dtype."""
    x = kernel_layout(x)
    mean, std = _new_patch_params(x, grid_h, grid_w)
    launch(plan_forward(x, None, mean, std, None, None, None, grid_h, grid_w, False, eps))
    return mean, std


def patch_mean_std_backward(
    grad_mean: torch.Tensor, grad_std: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """grad_x ``(B, C, H, W)``, x's strides: ``grad_mean/n + grad_std * xn/(n-1)`` per patch (no std term if n == 1).

    grad_mean, grad_std, mean, std: ``(B, C, gh, gw)``, accumulation dtype.
    """
    grad_mean, grad_std, mean, std = _dense(grad_mean, grad_std, mean, std)
    x = kernel_layout(x)
    grad_x = empty_kernel_output(x)
    launch(plan_backward(None, x, grad_x, mean, std, None, None, None, grad_mean, grad_std, False))
    return grad_x


def local_style_mix(
    x: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
    mix: torch.Tensor | None,
    grid_h: int,
    grid_w: int,
    relu: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patch-wise AdaIN with optional mixing: ``(out, mean, std)``.

    out ``(B, C, H, W)`` (x's strides) ``= act((x - mean) * ms/std + mm)``; mm, ms are the target statistics, or with
    mix w: ``w*mean + (1-w)*target_mean``, ``w*std + (1-w)*target_std``. target_mean, target_std, mix and the returned
    patch statistics mean, std are ``(B, C, grid_h, grid_w)`` in the accumulation dtype (the returned ones contiguous).
    """
    target_mean, target_std, mix = _dense(target_mean, target_std, mix)
    x = kernel_layout(x)
    out = empty_kernel_output(x)
    mean, std = _new_patch_params(x, grid_h, grid_w)
    launch(plan_forward(x, out, mean, std, target_mean, target_std, mix, grid_h, grid_w, relu, eps))
    return out, mean, std


def local_style_mix_into(
    x: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
    mix: torch.Tensor | None,
    grid_h: int,
    grid_w: int,
    relu: bool,
    eps: float,
    out: torch.Tensor,
) -> None:
    """local_style_mix writing into out (x's shape and dtype, each image in x's order, any batch stride: e.g. a
    token grid); out may be x itself (in place)."""
    target_mean, target_std, mix = _dense(target_mean, target_std, mix)
    mean, std = _new_patch_params(x, grid_h, grid_w)
    launch(plan_forward(x, out, mean, std, target_mean, target_std, mix, grid_h, grid_w, relu, eps))


def _transfer_backward(
    grad_out, x, mean, std, target_mean, target_std, mix, sums, relu, compute_grad_x, own_grads=None
) -> torch.Tensor | None:
    """Launches the local_style_mix backward kernel (x and grad_out brought to the kernels' layouts); ``sums``: the
    per-patch sums it writes, or reads with ``own_grads`` (local_style_mix_grad_x). Returns grad_x or None."""
    x = kernel_layout(x)
    grad_out = _like_layout(grad_out, x)
    grad_x = empty_kernel_output(x) if compute_grad_x else None
    launch(
        plan_backward(
            grad_out, x, grad_x, mean, std, target_mean, target_std, mix, *sums, relu, own_grads=own_grads
        )  # fmt: skip
    )
    return grad_x


def local_style_mix_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
    mix: torch.Tensor | None,
    relu: bool,
    compute_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of local_style_mix: ``(grad_x, grad_mixed_mean, grad_mixed_std)``.

    grad_mixed_mean = sum(g), grad_mixed_std = sum(g * xn) per patch, ``(B, C, gh, gw)`` in the accumulation dtype,
    where g is grad_out masked by the ReLU. grad_x ``(B, C, H, W)`` has x's strides, or is ``x.new_empty(0)`` when
    compute_grad_x is False.
    """
    mean, std, target_mean, target_std, mix = _dense(mean, std, target_mean, target_std, mix)
    sums = torch.empty_like(mean), torch.empty_like(mean)
    grad_x = _transfer_backward(grad_out, x, mean, std, target_mean, target_std, mix, sums, relu, compute_grad_x)
    return (grad_x if compute_grad_x else x.new_empty(0)), *sums


def local_style_mix_grad_x(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
    mix: torch.Tensor | None,
    sum_grad: torch.Tensor,
    sum_grad_xn: torch.Tensor,
    grad_mean: torch.Tensor,
    grad_std: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    """grad_x of local_style_mix with given per-patch sums and whole gradients of the patch statistics (see the
    operator's schema comment): ``a*g + (grad_mean - a*sum_grad)/n + (grad_std - a*sum_grad_xn)/((n-1)*std) *
    (x - mean)``, x's strides."""
    mean, std, target_mean, target_std, mix = _dense(mean, std, target_mean, target_std, mix)
    sum_grad, sum_grad_xn, grad_mean, grad_std = _dense(sum_grad, sum_grad_xn, grad_mean, grad_std)
    return _transfer_backward(
        grad_out, x, mean, std, target_mean, target_std, mix, (sum_grad, sum_grad_xn), relu, True,
        own_grads=(grad_mean, grad_std),
    )  # fmt: skip
