"""Launch helpers shared by the families' Triton launchers (imported only where triton is installed).

Every launcher first builds its :class:`LaunchPlan` list (``plan_*`` in each family's ``_triton.py``: the kernel,
its arguments, constexprs, ``num_warps`` and grid) and then launches it. A plan built from tensors on the ``meta``
device holds the same specialization a real launch would get, so ``styleda_fast.devtools.gpu_report`` can compile
exactly what a launch at a given shape runs, without a GPU and without allocating the tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl

from styleda_fast.core.checks import acc_dtype


def tl_acc_dtype(dtype: torch.dtype):
    """The Triton accumulation dtype for tensors of ``dtype`` (the rule of
    :func:`styleda_fast.core.checks.acc_dtype`)."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, n - 1).bit_length()


def prev_pow2(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << (max(1, n).bit_length() - 1)


def vector_warps(length: int, element_size: int, most: int) -> int:
    """Warps for 1-D tiles of ``length`` elements: as many as leave each thread one 128-bit vector or more."""
    return max(1, min(most, length * element_size // (16 * 32)))


def device_guard(t: torch.Tensor):
    """Launch on t's GPU (a no-op for CPU tensors under the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@dataclasses.dataclass
class LaunchPlan:
    """One kernel launch, described without launching it.

    ``args`` are the runtime arguments in the kernel's order, ``constexprs`` the compile-time ones by name.
    The traffic fields feed the GPU report (``styleda_fast.devtools.gpu_report``), not the launch:

    * ``bytes_moved``: bytes the whole launch reads and writes in global memory, counting every pass it makes over
      its inputs (a second pass over x counts again, whether or not L2 serves it);
    * ``bytes_per_step``: bytes of global loads one program issues before it needs the first of them (one tile of
      each input it streams): what a program keeps in flight.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    num_warps: int
    bytes_moved: int = 0
    bytes_per_step: int = 0
    label: str = ""

    @property
    def programs(self) -> int:
        total = 1
        for g in self.grid:
            total *= g
        return total

    def launch(self) -> None:
        """Run the kernel (on the GPU of the first tensor argument)."""
        if self.programs == 0:
            return
        first = next((a for a in self.args if isinstance(a, torch.Tensor)), None)
        with device_guard(first) if first is not None else contextlib.nullcontext():
            self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)


def launch(plans: Sequence[LaunchPlan]) -> None:
    """Launch the plans in order (one operator may need several kernels)."""
    for plan in plans:
        plan.launch()


def nbytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the given tensors (None counts 0); works on meta tensors."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@triton.jit
def philox_normal4(seed, c0, c1, c2, c3):
    """Four standard normals per counter (uint32 tensors), as tl.randn4x draws them from its counter: the generator
    of the noise-drawing operators, specified by :func:`styleda_fast.ops.philox.philox_normal4`."""
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1))
    n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r2), tl.uint_to_uniform_float(r3))
    return n0, n1, n2, n3
