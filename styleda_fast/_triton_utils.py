"""Launch helpers shared by the families' Triton launchers (imported only where triton is installed)."""

from __future__ import annotations

import contextlib

import torch
import triton.language as tl

from styleda_fast._checks import acc_dtype


def tl_acc_dtype(dtype: torch.dtype):
    """The Triton accumulation dtype for tensors of ``dtype`` (the rule of :func:`styleda_fast._checks.acc_dtype`)."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, n - 1).bit_length()


def prev_pow2(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << (max(1, n).bit_length() - 1)


def device_guard(t: torch.Tensor):
    """Launch on t's GPU (a no-op for CPU tensors under the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
