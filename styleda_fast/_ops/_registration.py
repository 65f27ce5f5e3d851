"""What every operator family registers with torch.library: fake kernels, autograd formulas, and CUDA kernels
that call the family's Triton launchers (``styleda_fast._triton.<family>``, imported on first use: importing
triton takes a while)."""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable

import torch

LIBRARY = "styleda_fast"


def triton_launchers(family: str) -> types.ModuleType:
    """The Triton launchers of ``family`` (e.g. ``"style_mix"``)."""
    return importlib.import_module(f"styleda_fast._triton.{family}")


def register_family(
    family: str,
    fakes: dict[str, Callable],
    autograd: dict[str, tuple[Callable, Callable]],
) -> torch.library.Library:
    """Register the operators of ``family`` defined in C++: ``fakes`` maps each operator to its fake kernel,
    ``autograd`` maps the differentiable ones to ``(backward, setup_context)``; every operator in ``fakes`` also
    gets a CUDA kernel that calls the launcher of the same name. Call it from ``styleda_fast._ops.<family>``,
    the module that the C++ schema names as the home of its fake kernels."""
    for name, fake in fakes.items():
        torch.library.register_fake(f"{LIBRARY}::{name}", fake, _stacklevel=2)
    for name, (backward, setup_context) in autograd.items():
        torch.library.register_autograd(f"{LIBRARY}::{name}", backward, setup_context=setup_context)
    library = torch.library.Library(LIBRARY, "IMPL")
    for name in fakes:
        library.impl(name, _cuda_kernel(family, name), "CUDA")
    return library


def _cuda_kernel(family: str, name: str) -> Callable:
    def cuda_kernel(*args):
        return getattr(triton_launchers(family), name)(*args)

    cuda_kernel.__name__ = f"{name}_cuda"
    return cuda_kernel
