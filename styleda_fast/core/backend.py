"""Which implementation runs an operation: the C++ kernels (CPU tensors), Triton (CUDA tensors), or the
plain-PyTorch reference. ``use_backend`` forces one, e.g. Triton on CPU tensors under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from styleda_fast.core.extension import CPP_PROBLEM as _CPP_PROBLEM
from styleda_fast.core.library import Operator, interpreted

BACKENDS = ("reference", "cpp", "triton")


class BackendStatus(NamedTuple):
    """Whether a backend can run here, and in words why (not)."""

    available: bool
    detail: str


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_problem() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (`pip install triton`)"
    if not torch.cuda.is_available() and not _interpreting():
        return "no CUDA device; set TRITON_INTERPRET=1 before importing triton to run its kernels on CPU tensors"
    if torch.cuda.is_available() and _CPP_PROBLEM is not None:
        return "the CUDA operators are registered on the compiled library: " + _CPP_PROBLEM
    return None


_TRITON_PROBLEM = _triton_problem()
# per thread and per asyncio task: a `use_backend` block in one thread does not change another thread's calls
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("styleda_fast_backend", default=None)
_warned: set[str] = set()


def backends() -> dict[str, BackendStatus]:
    """The backends and whether each can run on this machine, with the reason when it cannot."""
    triton_detail = "CUDA tensors" if torch.cuda.is_available() else "CPU tensors through the Triton interpreter"
    return {
        "reference": BackendStatus(True, "plain PyTorch, any device (slow; the executable specification)"),
        "cpp": BackendStatus(_CPP_PROBLEM is None, _CPP_PROBLEM or "fused C++ kernels for CPU tensors"),
        "triton": BackendStatus(
            _TRITON_PROBLEM is None, _TRITON_PROBLEM or f"fused Triton kernels for {triton_detail}"
        ),
    }


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every styleda_fast operation inside the ``with`` block to run on backend ``name``.

    ``name`` is ``"reference"``, ``"cpp"`` or ``"triton"``. Using a backend that cannot run the given tensors
    (e.g. ``"cpp"`` with CUDA tensors) raises a ``ValueError`` at the call. The choice holds for the calling
    thread (and asyncio task) only; other threads keep theirs, and the previous choice is restored on exit.
    """
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def select_backend(device: torch.device) -> str:
    """The backend that runs an operation on tensors of ``device``: the forced one, or the fastest available."""
    forced = _forced.get()
    if forced is not None:
        _check_forced(forced, device)
        return forced
    if device.type == "cpu":
        return "cpp" if _CPP_PROBLEM is None else _fallback("cpp", _CPP_PROBLEM)
    if device.type == "cuda":
        return "triton" if _TRITON_PROBLEM is None else _fallback("triton", _TRITON_PROBLEM)
    return "reference"


def _check_forced(name: str, device: torch.device) -> None:
    if name == "cpp":
        if _CPP_PROBLEM is not None:
            raise RuntimeError(f"backend 'cpp' is not available: {_CPP_PROBLEM}")
        if device.type != "cpu":
            raise ValueError(f"backend 'cpp' runs on CPU tensors; x is on {device}")
    elif name == "triton":
        if _TRITON_PROBLEM is not None:
            raise RuntimeError(f"backend 'triton' is not available: {_TRITON_PROBLEM}")
        if device.type not in ("cuda", "cpu"):
            raise ValueError(
                f"backend 'triton' runs on CUDA tensors (or CPU tensors when interpreting); x is on {device}"
            )
        if device.type == "cpu" and not _interpreting():
            raise ValueError("backend 'triton' runs on CPU tensors only under TRITON_INTERPRET=1")


def _fallback(name: str, problem: str) -> str:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"styleda_fast: using the slow reference implementation: {problem}", stacklevel=3)
    return "reference"


def run_op(op: Operator, *args) -> Any:
    """Run the declared operator ``op`` with its arguments ``args`` on the backend chosen for the device of its first
    tensor argument: the reference (plain PyTorch), the Triton launchers on CPU tensors (interpreter), or the
    registered operator (C++ on CPU, Triton on CUDA). Every path checks the arguments with ``op``'s rules, and both
    kernel paths have the operator's autograd formula."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    backend = select_backend(device)
    if backend == "reference":
        return op.run_reference(*args)
    if backend == "triton" and device.type == "cpu":
        return interpreted(op.name)(*args)
    return getattr(torch.ops.styleda_fast, op.name)(*args)
