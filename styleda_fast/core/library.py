"""One declaration per operator (:class:`Operator`) and the one path that wires every declaration to torch.library,
to the Triton interpreter and to the plain-PyTorch reference.

The schemas and CPU kernels are defined in C++ (``ops/<family>/<family>_cpu.cpp``, one ``TORCH_LIBRARY_FRAGMENT``
per family). Each family's ``_ops.py`` declares its operators and calls :func:`register`. From a declaration:

- the argument check runs before the fake kernel (so also for meta tensors), before every Triton launch (CUDA and
  the interpreter) and before the reference; the C++ kernels repeat the checks as their memory-safety net, with
  the same exception types (``TypeError`` for a type, ``ValueError`` for a value);
- a backend limit (``triton_limit``) sends such calls to the reference inside the operator, so a direct
  ``torch.ops.styleda_fast.<op>`` call honours it as the public API does;
- the autograd formula is registered for the operator and reused by the interpreter path; its backward finds the
  backward operators through :func:`op_namespace`;
- the double-backward policy is explicit: exact (a differentiable backward from the reference, see
  :func:`differentiable_grads`), the backward itself (made of differentiable tensor operations), or refused with
  a clear error (:func:`once_differentiable`).

The Triton launchers (``styleda_fast.ops.<family>._triton``, one function per operator, named like it) are imported
on first use (importing triton is slow).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from styleda_fast.core.extension import CPP_PROBLEM

LIBRARY = "styleda_fast"

# the second derivative of an operator: exact from its reference, the backward's own graph, or a clear error
DoubleBackward = Literal["exact", "backward", "refuse"]


@dataclasses.dataclass(frozen=True)
class Operator:
    """Everything about one operator ``styleda_fast::<name>`` except its C++ schema and kernels.

    Attributes:
        name: the schema name (``torch.ops.styleda_fast.<name>``) and the name of its Triton launcher.
        family: the folder under ``styleda_fast/ops`` holding its launchers (``_triton.py``).
        check: the argument rules, called with the operator's arguments; raises ``TypeError``/``ValueError``.
        fake: output shapes, dtypes and strides from the (checked) arguments, for FakeTensor, meta and compile.
        reference: the plain-PyTorch implementation with the operator's arguments and outputs (differentiable), or
            None for backward operators that only kernels call.
        backward, setup_context: the autograd formula (both None: not differentiable).
        double_backward: ``"exact"``: under ``create_graph=True`` the gradients come from differentiating the
            reference (:func:`differentiable_grads`); ``"backward"``: the backward is made of differentiable tensor
            operations; ``"refuse"``: differentiating the gradients raises a clear error.
        differentiable_inputs: positions of the tensor arguments ``"exact"`` differentiates.
        differentiable_outputs: positions of the outputs whose gradients ``"exact"`` uses.
        triton_limit: called with the arguments; the reason the Triton kernel cannot run them (then the reference
            runs inside the operator), or None.
    """

    name: str
    family: str
    check: Callable[..., None]
    fake: Callable[..., Any]
    reference: Callable[..., Any] | None = None
    backward: Callable | None = None
    setup_context: Callable | None = None
    double_backward: DoubleBackward = "refuse"
    differentiable_inputs: tuple[int, ...] = ()
    differentiable_outputs: tuple[int, ...] = (0,)
    triton_limit: Callable[..., str | None] | None = None

    @property
    def qualname(self) -> str:
        return f"{LIBRARY}::{self.name}"

    def checked(self, *args) -> None:
        """The operator's argument rules, and the rule of every operator: all tensor arguments on one device."""
        check_one_device(args)
        self.check(*args)

    def run_reference(self, *args):
        """The reference on checked arguments (the ``reference`` backend)."""
        if self.reference is None:
            raise RuntimeError(f"styleda_fast: {self.name} has no reference implementation; it runs on the kernels")
        self.checked(*args)
        return self.reference(*args)

    def run_triton(self, *args):
        """The Triton launcher on checked arguments, or the reference where ``triton_limit`` says the kernel cannot
        run them."""
        self.checked(*args)
        if self.triton_limit is not None and self.triton_limit(*args) is not None:
            return self.reference(*args)
        return getattr(triton_launchers(self.family), self.name)(*args)

    def autograd_backward(self, ctx, *grads):
        """The registered backward with the double-backward policy applied."""
        if self.double_backward == "exact" and torch.is_grad_enabled():
            return _exact_grads(self, ctx, grads)
        result = self.backward(ctx, *grads)
        if self.double_backward == "refuse":
            return once_differentiable(self.name, result)
        return result


def check_one_device(args: tuple) -> None:
    """All tensor arguments of an operator call on one device (a meta tensor among CPU tensors included)."""
    devices = {a.device for a in args if isinstance(a, Tensor)}
    if len(devices) > 1:
        raise ValueError(
            f"styleda_fast: the tensor arguments are on different devices {sorted(map(str, devices))}; "
            "move them to one device"
        )


def triton_launchers(family: str) -> types.ModuleType:
    """The Triton launchers of ``family`` (e.g. ``"style_mix"``), imported on first use."""
    return importlib.import_module(f"styleda_fast.ops.{family}._triton")


def op_namespace(ctx):
    """Where a backward finds the backward operators: the checked launchers on the interpreter path, else
    torch.ops."""
    return getattr(ctx, "kernels", None) or getattr(torch.ops, LIBRARY)


_OPERATORS: dict[str, Operator] = {}


def operators() -> dict[str, Operator]:
    """Every declared operator by name (those of the families imported so far)."""
    return dict(_OPERATORS)


def register(*declared: Operator) -> None:
    """Wire the declared operators: fake kernel (check first), autograd, and the CUDA kernel (check, Triton limit,
    Triton launcher). Without the compiled library the operators do not exist (the public API then runs the
    reference and the interpreter path); the declarations are still recorded for those paths.

    Call it from the module named in the C++ fragment's ``set_python_module`` (the family's ``_ops.py``):
    torch.library checks that the fake kernels are registered there.
    """
    for op in declared:
        _OPERATORS[op.name] = op
    if CPP_PROBLEM is not None:
        return
    library = _library()
    for op in declared:
        torch.library.register_fake(op.qualname, _fake_kernel(op), _stacklevel=2)
        if op.backward is not None:
            torch.library.register_autograd(op.qualname, op.autograd_backward, setup_context=op.setup_context)
        library.impl(op.name, _cuda_kernel(op), "CUDA")


@functools.cache
def _library() -> torch.library.Library:
    library = torch.library.Library(LIBRARY, "IMPL")
    # the output cache's allocation: a fake kernel so that code calling it traces under FakeTensorMode and compile
    torch.library.register_fake(f"{LIBRARY}::empty_cached_like", torch.empty_like, lib=library)
    return library


def _fake_kernel(op: Operator) -> Callable:
    def fake_kernel(*args):
        op.checked(*args)
        return op.fake(*args)

    fake_kernel.__name__ = f"{op.name}_fake"
    return fake_kernel


def _cuda_kernel(op: Operator) -> Callable:
    def cuda_kernel(*args):
        return op.run_triton(*args)

    cuda_kernel.__name__ = f"{op.name}_cuda"
    return cuda_kernel


class _CheckedLaunchers:
    """The backward operators of the interpreter path: each declared operator by name, run by :meth:`run_triton`."""

    def __getattr__(self, name: str) -> Callable:
        return _OPERATORS[name].run_triton


@functools.cache
def interpreted(name: str) -> Callable:
    """Operator ``name`` run by its Triton launcher on CPU tensors (``TRITON_INTERPRET=1``), with the operator's
    autograd formula (the launchers are not registered for the CPU dispatch key)."""
    op = _OPERATORS[name]
    if op.backward is None:
        return op.run_triton

    def forward(ctx, *args):
        output = op.run_triton(*args)
        op.setup_context(ctx, args, output)
        ctx.kernels = _CheckedLaunchers()
        return output

    function = type(
        f"Interpreted_{name}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(op.autograd_backward)},
    )
    return function.apply


def cached_empty_like(t: Tensor) -> Tensor:
    """An uninitialised tensor like ``t``: from the compiled library's output cache for CPU tensors (no page faults
    on a fresh feature-map-sized buffer), else ``torch.empty_like``."""
    if CPP_PROBLEM is None and t.device.type == "cpu":
        return torch.ops.styleda_fast.empty_cached_like(t)
    return torch.empty_like(t)


def _exact_grads(op: Operator, ctx, grads: tuple) -> tuple:
    """The ``"exact"`` policy: the gradients of the inputs ``op.differentiable_inputs`` (saved by setup_context as
    ``ctx.saved_tensors[:n]``, the other arguments as ``ctx.arguments`` with None in their place) as a
    differentiable graph of the reference."""
    n = len(op.differentiable_inputs)
    tensors = ctx.saved_tensors[:n]
    needs = tuple(ctx.needs_input_grad[i] for i in op.differentiable_inputs)

    def forward(*leaves):
        args = list(ctx.arguments)
        for i, leaf in zip(op.differentiable_inputs, leaves):
            args[i] = leaf
        outputs = op.reference(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(outputs[i] for i in op.differentiable_outputs)

    wanted = tuple(grads[i] for i in op.differentiable_outputs)
    result = [None] * len(ctx.needs_input_grad)
    if all(g is None for g in wanted) or not any(need and t is not None for t, need in zip(tensors, needs)):
        return tuple(result)
    for i, grad in zip(op.differentiable_inputs, differentiable_grads(forward, tensors, needs, wanted)):
        result[i] = grad
    return tuple(result)


def save_arguments(ctx, op: Operator, inputs: tuple) -> None:
    """For the ``"exact"`` policy: the non-differentiated arguments on ctx (the differentiated ones must be the
    first saved tensors)."""
    ctx.arguments = tuple(None if i in op.differentiable_inputs else a for i, a in enumerate(inputs))


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
