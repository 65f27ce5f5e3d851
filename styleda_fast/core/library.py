"""How an operator family plugs into torch.library, and the one generic path that runs a family's Triton launchers
on CPU tensors under ``TRITON_INTERPRET=1`` with the same autograd formulas as the registered operators.

The schemas and CPU kernels are defined in C++ (``ops/<family>/<family>_cpu.cpp``, one ``TORCH_LIBRARY_FRAGMENT`` per
family). Each family's ``_ops.py`` calls :func:`register_family` with its fake kernels and its autograd formulas;
the Triton launchers (``styleda_fast.<family>._triton``) are imported on first use (importing triton is slow).

Autograd formulas are written once, for both paths: a backward calls the family's backward operators through
``op_namespace(ctx)``, which is ``torch.ops.styleda_fast`` for the registered operators and the family's Triton
launchers for the interpreter path.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable

import torch

from styleda_fast.core.extension import CPP_PROBLEM

LIBRARY = "styleda_fast"

# operator name -> (backward, setup_context), for the interpreter path
_AUTOGRAD: dict[str, tuple[Callable, Callable]] = {}
# operator name -> argument check run before every Triton launch (the C++ kernels check their own)
_CHECKS: dict[str, Callable] = {}


def triton_launchers(family: str) -> types.ModuleType:
    """The Triton launchers of ``family`` (e.g. ``"style_mix"``), imported on first use."""
    return importlib.import_module(f"styleda_fast.ops.{family}._triton")


def op_namespace(ctx):
    """Where a backward finds the backward operators: the launchers on the interpreter path, else torch.ops."""
    return getattr(ctx, "kernels", None) or getattr(torch.ops, LIBRARY)


def register_family(
    family: str,
    fakes: dict[str, Callable],
    autograd: dict[str, tuple[Callable, Callable]],
    checks: dict[str, Callable],
) -> torch.library.Library | None:
    """Register the operators of ``family`` defined in C++.

    ``fakes`` maps each operator to its fake kernel, ``autograd`` maps the differentiable ones to ``(backward,
    setup_context)``, ``checks`` each operator to the argument check run before its Triton launcher. Every operator
    in ``fakes`` also gets a CUDA kernel: the Triton launcher of the same name.

    Without the compiled library the operators do not exist (the public API then runs the reference); the
    formulas and checks are still recorded for the interpreter path.
    """
    _AUTOGRAD.update(autograd)
    _CHECKS.update(checks)
    if CPP_PROBLEM is not None:
        return None
    for name, fake in fakes.items():
        torch.library.register_fake(f"{LIBRARY}::{name}", fake, _stacklevel=2)
    for name, (backward, setup_context) in autograd.items():
        torch.library.register_autograd(f"{LIBRARY}::{name}", backward, setup_context=setup_context)
    library = torch.library.Library(LIBRARY, "IMPL")
    for name in fakes:
        library.impl(name, _cuda_kernel(family, name), "CUDA")
    return library


@functools.cache
def checked_launcher(family: str, name: str) -> Callable:
    """The Triton launcher of operator ``name``, preceded by the operator's argument check."""
    launcher = getattr(triton_launchers(family), name)
    check = _CHECKS[name]

    def run(*args):
        check(*args)
        return launcher(*args)

    run.__name__ = f"{name}_triton"
    return run


def _cuda_kernel(family: str, name: str) -> Callable:
    def cuda_kernel(*args):
        return checked_launcher(family, name)(*args)

    cuda_kernel.__name__ = f"{name}_cuda"
    return cuda_kernel


@functools.cache
def interpreted(family: str, name: str) -> Callable:
    """Operator ``name`` of ``family`` run by its Triton launcher on CPU tensors (``TRITON_INTERPRET=1``), with
    the autograd formula registered for the operator (the launchers are not registered for the CPU key)."""
    launchers = triton_launchers(family)
    launcher = checked_launcher(family, name)
    if name not in _AUTOGRAD:
        return launcher
    backward, setup_context = _AUTOGRAD[name]

    def forward(ctx, *args):
        output = launcher(*args)
        setup_context(ctx, args, output)
        ctx.kernels = launchers
        return output

    function = type(
        f"Interpreted_{name}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )
    return function.apply


def differentiable_grads(forward: Callable, inputs: tuple, needs: tuple, grad_outputs: tuple) -> tuple:
    """Gradients of ``forward(*inputs)`` (the plain-PyTorch reference of an operator) with respect to the inputs
    marked in ``needs``, as a differentiable graph: the backward of an operator under ``create_graph=True``, so
    that second derivatives (gradient penalties, MAML-style inner loops) are exact. Slower than the kernels."""
    with torch.enable_grad():
        leaves = [
            t if t is None or t.requires_grad else t.detach().requires_grad_(need) for t, need in zip(inputs, needs)
        ]
        outputs = forward(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
        wanted = [t for t, need in zip(leaves, needs) if need and t is not None]
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True, allow_unused=True
            )
        )
    return tuple(next(grads) if need and t is not None else None for t, need in zip(leaves, needs))


def once_differentiable(name: str, grads: tuple) -> tuple:
    """The kernels' gradients, made to raise a clear error if something differentiates through them again (they
    carry no graph, so a second derivative would otherwise be silently zero)."""
    if not torch.is_grad_enabled():
        return grads
    tensors = [g for g in grads if g is not None]
    if not tensors:
        return grads
    # the error node needs inputs that require grad to appear in the graph at all
    delayed = torch._C._functions.DelayedError(
        f"styleda_fast: {name} has no second derivative; compute it without create_graph=True", len(tensors)
    )(*(t.detach().requires_grad_() for t in tensors))
    delayed = iter(delayed if isinstance(delayed, tuple) else (delayed,))
    return tuple(None if g is None else next(delayed) for g in grads)
