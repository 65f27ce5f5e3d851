"""Memory accounting for training steps, on any device (CPU included): what autograd keeps for the backward pass,
what the model and optimizer keep, and the peak of what a piece of code allocates.

    with SavedBytes(exclude=model.parameters()) as saved:
        loss = criterion(model(images), labels)
    saved.bytes                      # held for backward, parameters excluded
    state_bytes(model, optimizer)    # parameters, gradients, optimizer state

    with LiveBytes() as live:        # transient memory of a call
        y = augment(x)
    live.peak

The CPU kernels keep freed large outputs (at least 8 MB) for the next output of the same size, so that a training
loop does not fault the same memory in at every step: ``output_cache_bytes()`` says how much they hold that no
tensor uses, ``release_output_cache()`` frees it, ``output_cache_limit()`` says the most they keep now.

The limit: ``STYLEDA_FAST_OUTPUT_CACHE_MB`` megabytes, a plain decimal integer from 0 (the cache off) to 1048576
(1 TiB), spaces or tabs around it allowed; unset or empty: 2048. Any other value (``-1``, ``1e3``, ``0x10``,
``abc``, larger than the maximum) warns once, naming the variable, and the default 2048 applies. The cache also
keeps at most a quarter of what the process may use: the smaller of its cgroup memory limit and its address-space
limit (``RLIMIT_AS``). When a CPU allocation fails (a kernel's output or any other CPU tensor), the idle buffers
are freed and the allocation is tried once more. Without the compiled extension there is no cache: these
functions return 0.

Counts are of tensor storages (each counted once, also when several saved tensors are views of it); memory that
kernels allocate internally and free before returning (workspaces) is not seen, nor the caching allocator's
rounding and fragmentation on a GPU. Read the sums as lower bounds of what a device needs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "LiveBytes",
    "SavedBytes",
    "cpu_allocator_wrapped",
    "format_bytes",
    "optimizer_state_bytes",
    "output_cache_bytes",
    "output_cache_limit",
    "release_output_cache",
    "state_bytes",
]


def _cache_operator(name: str):
    """The output cache's operator ``name``, or None without the compiled extension (then there is no cache)."""
    from styleda_fast.core.extension import CPP_PROBLEM

    return None if CPP_PROBLEM is not None else getattr(torch.ops.styleda_fast, name)


def output_cache_bytes() -> int:
    """Bytes of large CPU output buffers that the kernels keep for reuse and that no tensor uses now (0 without the
    compiled extension)."""
    op = _cache_operator("output_cache_bytes")
    return 0 if op is None else int(op())


def release_output_cache() -> int:
    """Frees the CPU output buffers kept for reuse that no tensor uses (memory back to the OS); returns the bytes
    (0 without the compiled extension). Buffers still in use return to the cache when their tensors are freed."""
    op = _cache_operator("release_output_cache")
    return 0 if op is None else int(op())


def output_cache_limit() -> int:
    """The most bytes of idle buffers the output cache keeps now: ``STYLEDA_FAST_OUTPUT_CACHE_MB``, at most a
    quarter of the process's cgroup memory limit and of its ``RLIMIT_AS`` (0 without the compiled extension)."""
    op = _cache_operator("output_cache_limit")
    return 0 if op is None else int(op())


def cpu_allocator_wrapped() -> bool:
    """Whether importing the compiled extension wrapped PyTorch's CPU allocator, so that a CPU allocation that fails
    while the output cache holds idle buffers frees them and is tried once more: yes unless
    ``STYLEDA_FAST_OUTPUT_CACHE_MB=0`` turns the cache off (False without the compiled extension)."""
    op = _cache_operator("cpu_allocator_wrapped")
    return False if op is None else bool(op())


def _key(t: Tensor) -> int:
    return t.untyped_storage()._cdata  # the StorageImpl's address: one key per storage, also on the meta device


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Context manager counting the bytes autograd saves for backward while it is active.

    Each storage is counted once (a tensor saved by several operations, or views of one storage), and storages of
    ``exclude`` (e.g. ``model.parameters()``: counted as the model's state) not at all. A non-reentrant
    ``torch.utils.checkpoint`` saves its inputs through these hooks (counted) and nothing of the region inside
    (recomputed in the backward pass). Tensors kept alive for the backward pass by other means can be counted
    with :meth:`add`.

    Attributes:
        bytes: the total; ``count``: how many storages; ``by_dtype``: bytes per dtype.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._excluded = {_key(t) for t in exclude}
        self._seen: set[int] = set()
        self.bytes = 0
        self.count = 0
        self.by_dtype: dict[torch.dtype, int] = {}
        super().__init__(self._pack, lambda t: t)

    def __enter__(self) -> SavedBytes:
        super().__enter__()
        return self

    def add(self, t: Tensor) -> None:
        """Count ``t``'s storage (once) as held for the backward pass."""
        key = _key(t)
        if key in self._excluded or key in self._seen:
            return
        self._seen.add(key)
        nbytes = t.untyped_storage().nbytes()
        self.bytes += nbytes
        self.count += 1
        self.by_dtype[t.dtype] = self.by_dtype.get(t.dtype, 0) + nbytes

    def _pack(self, t: Tensor) -> Tensor:
        self.add(t)
        return t


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the optimizer's state tensors (e.g. SGD momentum buffers). Before the first step, when the state
    is still empty, SGD with momentum counts one buffer per trainable parameter (what its first step creates)."""
    if optimizer is None:
        return 0
    total = sum(v.nbytes for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor))
    if total == 0 and isinstance(optimizer, torch.optim.SGD):
        total = sum(p.nbytes for group in optimizer.param_groups if group.get("momentum", 0) for p in group["params"])
    return total


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """``{"parameters", "buffers", "gradients", "optimizer", "total"}`` in bytes: all parameters and buffers, a
    gradient per trainable parameter (whether or not ``backward`` has run yet), and :func:`optimizer_state_bytes`."""
    params = {_key(p): p for p in model.parameters()}
    result = {
        "parameters": sum(p.untyped_storage().nbytes() for p in params.values()),
        "buffers": sum(b.nbytes for b in model.buffers()),
        "gradients": sum(p.nbytes for p in model.parameters() if p.requires_grad),
        "optimizer": optimizer_state_bytes(optimizer),
    }
    result["total"] = sum(result.values())
    return result


class LiveBytes(TorchDispatchMode):
    """Context manager tracking the storages that operations create while it is active: ``current`` bytes still
    alive, ``peak`` (the most alive at once), per device type in ``peak_by_device``.

    It sees every ATen operation's outputs (custom operators included, the backward pass's too) but not
    allocations a kernel frees before it returns. Storages that existed before the block (inputs) are not counted.
    ``timeline=True`` keeps ``current`` after each operation in ``timeline`` (one entry per operation: runs of the
    same code on inputs of other sizes can be compared operation by operation). Python overhead per operation:
    meant for measuring a call, not for timing it.
    """

    def __init__(self, timeline: bool = False):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int, str]] = {}
        self.current = 0
        self.peak = 0
        self.peak_by_device: dict[str, int] = {}
        self.timeline: list[int] | None = [] if timeline else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                entry = self._live.get(key)
                if entry is None or entry[0].expired() or entry[1] != storage.nbytes():
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes(), t.device.type)
        self._update()
        return out

    def _update(self) -> None:
        for key in [k for k, (ref, _, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        by_device: dict[str, int] = {}
        for _, nbytes, device in self._live.values():
            by_device[device] = by_device.get(device, 0) + nbytes
        self.current = sum(by_device.values())
        self.peak = max(self.peak, self.current)
        if self.timeline is not None:
            self.timeline.append(self.current)
        for device, nbytes in by_device.items():
            self.peak_by_device[device] = max(self.peak_by_device.get(device, 0), nbytes)


def format_bytes(n: float) -> str:
    """``1.50 GB`` style (powers of 1000: GB, MB, kB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
