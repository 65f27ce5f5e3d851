"""Argument checks shared by the public operations: each error names the argument at fault."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_features(x, name: str = "x") -> None:
    """``x`` must be a 4-D ``(B, C, H, W)`` float16/bfloat16/float32/float64 tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {x.dim()} dims (shape {tuple(x.shape)})")
    if x.dtype not in FEATURE_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def normalize_grid(grid, height: int, width: int) -> tuple[int, int]:
    """``grid`` as ``(gh, gw)``: an int ``g`` means ``(g, g)``. Each must be in ``[1, H]`` resp. ``[1, W]``."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) for g in grid)
    ):
        raise TypeError(f"grid must be an int or a pair of ints (gh, gw), got {grid!r}")
    gh, gw = grid
    if not (1 <= gh <= height and 1 <= gw <= width):
        raise ValueError(f"grid {(gh, gw)} must be at least 1 and at most the feature size (H, W) = {(height, width)}")
    return gh, gw


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` must be an int (not a bool) in ``[minimum, maximum]`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if maximum is not None and not (minimum if minimum is not None else value) <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def per_patch(value, name: str, shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Bring a per-image or per-patch parameter to a contiguous ``shape = (B, C, gh, gw)`` tensor of ``dtype``.

    Accepted: ``(B, C)`` (one value per image and channel), anything that broadcasts to ``(B, C, gh, gw)`` with
    4 dims (``(B, C, 1, 1)``, ``(B, C, gh, gw)``, ...), a 0-dim tensor, or (for ``mix``) a Python number.
    The expansion stays differentiable, so gradients come back in the caller's shape and dtype.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "mix":
        value = torch.tensor(float(value), device=device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}; move them to one device")
    if value.dim() == 2:
        value = value[:, :, None, None]
    if value.dim() not in (0, 4) or any(s not in (1, t) for s, t in zip(value.shape, shape)):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to (B, C, gh, gw) = {shape}; "
            "give (B, C), (B, C, 1, 1) or (B, C, gh, gw)"
        )
    return value.to(dtype).expand(shape).contiguous()


def dense_layout(x: Tensor) -> Tensor:
    """``x`` itself if it is NCHW- or channels_last-contiguous, else an NCHW-contiguous copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()
