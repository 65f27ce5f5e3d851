"""Plain-PyTorch reference implementations: the executable specification.

Every fused kernel in the package is tested against these functions (run in float64), and the
benchmarks use them as the eager and ``torch.compile`` baselines. They favour clarity over speed.

Conventions shared by every implementation (the math: ``README.md`` next to this file):

* Patch ``(i, j)`` of a ``gh x gw`` grid covers rows ``floor(i*H/gh) .. floor((i+1)*H/gh)`` and columns
  ``floor(j*W/gw) .. floor((j+1)*W/gw)`` (end exclusive), so any ``H >= gh`` and ``W >= gw`` works.
* ``std = sqrt(var_unbiased + eps)``. A patch of a single pixel has no unbiased variance; we define
  its variance as 0 (so ``std = sqrt(eps)``, the patch is normalized to 0 and takes the target mean),
  rather than PyTorch's NaN, which would poison a whole training step.
"""

from __future__ import annotations

import torch


def patch_bounds(size: int, parts: int) -> list[int]:
    """Boundaries ``[floor(k*size/parts) for k in 0..parts]`` of a non-overlapping split."""
    return [(k * size) // parts for k in range(parts + 1)]


def patch_index(size: int, parts: int, device=None) -> torch.Tensor:
    """For each of ``size`` positions, the index of the patch that contains it. Shape ``(size,)``."""
    bounds = patch_bounds(size, parts)
    lengths = torch.tensor([bounds[k + 1] - bounds[k] for k in range(parts)], device=device)
    return torch.repeat_interleave(torch.arange(parts, device=device), lengths)


def patch_mean_std_loop(x: torch.Tensor, grid: tuple[int, int], eps: float = 1e-5):
    """Per-patch mean and std of ``x (B, C, H, W)``, one patch at a time (the way public code does it).

    Returns ``(mean, std)``, each ``(B, C, gh, gw)``.
    """
    gh, gw = grid
    rows, cols = patch_bounds(x.shape[2], gh), patch_bounds(x.shape[3], gw)
    mean = x.new_empty(x.shape[0], x.shape[1], gh, gw)
    std = torch.empty_like(mean)
    for i in range(gh):
        for j in range(gw):
            patch = x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].flatten(2)
            var = patch.var(dim=2) if patch.shape[2] > 1 else torch.zeros_like(patch[:, :, 0])
            mean[:, :, i, j] = patch.mean(dim=2)
            std[:, :, i, j] = (var + eps).sqrt()
    return mean, std


def local_style_mix_loop(x, style_mean, style_std, grid, mix=None, activation="relu", eps=1e-5):
    """Patch-wise AdaIN with optional mixing, one patch at a time, written for reading.

    ``style_mean``, ``style_std`` and ``mix`` must already be ``(B, C, gh, gw)``.
    """
    gh, gw = grid
    rows, cols = patch_bounds(x.shape[2], gh), patch_bounds(x.shape[3], gw)
    mean, std = patch_mean_std_loop(x, grid, eps)
    out = torch.empty_like(x)
    for i in range(gh):
        for j in range(gw):
            m, s = mean[:, :, i, j, None, None], std[:, :, i, j, None, None]
            mt, st = style_mean[:, :, i, j, None, None], style_std[:, :, i, j, None, None]
            if mix is not None:
                w = mix[:, :, i, j, None, None]
                mt, st = w * m + (1 - w) * mt, w * s + (1 - w) * st
            patch = x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            y = st * (patch - m) / s + mt
            out[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = torch.relu(y) if activation == "relu" else y
    return out


def _expand_to_pixels(per_patch: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor):
    """``(B, C, gh, gw)`` per-patch values -> ``(B, C, H, W)`` map (each pixel gets its patch's value)."""
    return per_patch.index_select(2, row_index).index_select(3, col_index)


def _patch_sums(t: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor, grid: tuple[int, int]):
    """Sum of ``t (B, C, H, W)`` over each patch: ``(B, C, gh, gw)``. Index-adds, so a NaN stays in its patch."""
    B, C, _, W = t.shape
    rows = t.new_zeros(B, C, grid[0], W).index_add(2, row_index, t)
    return rows.new_zeros(B, C, grid[0], grid[1]).index_add(3, col_index, rows)


def patch_mean_std(x: torch.Tensor, grid: tuple[int, int], eps: float = 1e-5):
    """Vectorized per-patch statistics (no Python loop over patches); same numbers as the loop version.

    Patch sums are index-adds along rows then columns, which handles grids that do not divide ``H`` or ``W``.
    The variance is two-pass (centered), never ``E[x^2] - E[x]^2``.
    """
    gh, gw = grid
    H, W = x.shape[2], x.shape[3]
    row_index, col_index = patch_index(H, gh, x.device), patch_index(W, gw, x.device)
    bounds_h, bounds_w = patch_bounds(H, gh), patch_bounds(W, gw)
    rows = torch.tensor([bounds_h[i + 1] - bounds_h[i] for i in range(gh)], dtype=x.dtype, device=x.device)
    cols = torch.tensor([bounds_w[j + 1] - bounds_w[j] for j in range(gw)], dtype=x.dtype, device=x.device)
    count = rows[:, None] * cols[None, :]  # (gh, gw)
    mean = _patch_sums(x, row_index, col_index, grid) / count
    centered = x - _expand_to_pixels(mean, row_index, col_index)
    var = _patch_sums(centered * centered, row_index, col_index, grid) / (count - 1).clamp_min(1)
    return mean, (var + eps).sqrt()


def local_style_mix(x, style_mean, style_std, grid, mix=None, activation="relu", eps=1e-5):
    """Vectorized patch-wise AdaIN with optional mixing; the eager/compile baseline.

    Args:
        x: ``(B, C, H, W)`` features.
        style_mean, style_std: target statistics broadcastable to ``(B, C, gh, gw)``.
        grid: ``(gh, gw)``.
        mix: ``None`` or weights broadcastable to ``(B, C, gh, gw)``; the patch's own statistics get weight ``mix``.
        activation: ``"relu"`` or ``None``.
    Returns:
        ``(B, C, H, W)`` tensor.
    """
    gh, gw = grid
    row_index, col_index = patch_index(x.shape[2], gh, x.device), patch_index(x.shape[3], gw, x.device)
    mean, std = patch_mean_std(x, grid, eps)
    shape = mean.shape
    target_mean, target_std = style_mean.expand(shape), style_std.expand(shape)
    if mix is not None:
        mix = mix.expand(shape)
        target_mean = mix * mean + (1 - mix) * target_mean
        target_std = mix * std + (1 - mix) * target_std
    scale = _expand_to_pixels(target_std / std, row_index, col_index)
    y = (x - _expand_to_pixels(mean, row_index, col_index)) * scale + _expand_to_pixels(
        target_mean, row_index, col_index
    )
    return torch.relu(y) if activation == "relu" else y
