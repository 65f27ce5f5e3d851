"""Shared test utilities: devices/backends present, tolerances per dtype, and an assertion that explains."""

from __future__ import annotations

import importlib.util

import torch

import styleda_fast

# Relative tolerance (error / max |reference|) per dtype of the kernel under test.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def available_backends() -> list[str]:
    """Backends that can run on this machine, for parametrizing tests."""
    return [name for name, status in styleda_fast.backends().items() if status.available]


def backend_device(backend: str) -> torch.device:
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "output") -> None:
    """``|actual - expected| <= rtol * max|expected|`` elementwise, NaN where expected is NaN.

    On failure, says how many elements differ, the worst one and where, and whether NaN/inf appeared.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_ok = torch.isnan(a) == torch.isnan(e)
    finite = torch.isfinite(e)
    scale = e[finite].abs().max().item() if finite.any() else 1.0
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = (err > rtol * max(scale, 1e-30)) | ~nan_ok | (torch.isinf(e) & (a != e))
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        worst = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ (rtol {rtol:g} of max|ref| {scale:.3g}); "
            f"first at {idx}: {a[idx].item():.6g} vs {e[idx].item():.6g}; worst abs error {err.max().item():.3g} "
            f"at {worst}; NaN in actual {int(torch.isnan(a).sum())} / expected {int(torch.isnan(e).sum())}; "
            f"inf in actual {int(torch.isinf(a).sum())}"
        )
