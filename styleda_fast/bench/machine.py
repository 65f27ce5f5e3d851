"""What the benchmark ran on, and whether other processes shared it: the CPU's model, cores and instruction sets,
native bfloat16, the CPU time other processes took while a provider was timed, and an optional busy neighbour."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

# (name shown, /proc/cpuinfo flags that must all be present), in the order shown
ISA_FLAGS = (
    ("AVX2", ("avx2", "fma")),
    ("AVX-512", ("avx512f",)),
    ("AVX-512-BF16", ("avx512_bf16",)),
    ("AMX", ("amx_tile", "amx_bf16")),
)
BUSY_LIMIT = 0.3  # cores that other processes may keep busy while a provider is timed before it is not a result


def cpu_info(cpuinfo: str | None = None) -> dict:
    """``{"cpu": model, "cores": n, "isa": ["AVX2", ...], "native_bf16": bool}`` from ``/proc/cpuinfo`` (or the
    text ``cpuinfo``); without it, the platform's name and an empty ISA list. Native bfloat16 means AVX-512-BF16 or
    AMX: elsewhere bfloat16 arithmetic (convolutions, matrix products) is emulated and slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    isa = [name for name, needed in ISA_FLAGS if all(f in flags for f in needed)]
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "isa": isa,
        "native_bf16": "AVX-512-BF16" in isa or "AMX" in isa,
    }


def native_bf16(device: torch.device, info: dict) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA: compute capability 8.0 and later)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(info.get("native_bf16"))


def describe(info: dict) -> str:
    """One line: the CPU (or GPU), cores, ISA and threads."""
    if info.get("gpu"):
        return f"{info['gpu']} ({info['device']})"
    isa = "/".join(info.get("isa") or []) or "no AVX2"
    return f"{info['cpu']}, {info['cores']} cores, {isa}, {info['threads']} threads"


def _system_busy_s() -> float | None:
    """CPU seconds all processes have run (non-idle time summed over cores), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user time


def _process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds of this process (all threads), or of process ``pid`` (0 when it cannot be read)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class OtherLoad:
    """Measures, over a ``with`` block, how many cores other processes kept busy (CPU seconds of everything minus
    this process's and the busy neighbour's, over the wall time). ``cores`` is None where ``/proc/stat`` is missing.
    The counters advance in clock ticks (10 ms) per core, so one tick per core is taken off before dividing: a block
    of 30 ms on an idle 2-core machine could otherwise read 0.3-0.7 cores of "other" load from rounding alone."""

    def __init__(self, exclude_pid: int | None = None):
        self.exclude_pid = exclude_pid
        self.cores: float | None = None

    def _sample(self):
        excluded = _process_cpu_s(self.exclude_pid) if self.exclude_pid else 0.0
        return _system_busy_s(), _process_cpu_s() + excluded, time.perf_counter()

    def __enter__(self) -> OtherLoad:
        self.start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        (system0, own0, t0), (system1, own1, t1) = self.start, self._sample()
        if system0 is None or system1 is None or t1 <= t0:
            return
        rounding = (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")
        self.cores = max(0.0, ((system1 - system0) - (own1 - own0) - rounding) / (t1 - t0))


def busy_cores(seconds: float = 1.0, exclude_pid: int | None = None) -> float | None:
    """How many cores other processes keep busy, sampled over ``seconds`` (None where unavailable)."""
    with OtherLoad(exclude_pid) as load:
        time.sleep(seconds)
    return load.cores


class BusyNeighbour:
    """A child process that spins on one core for the length of a ``with`` block: the small-tensor paths measured
    while another process wants the CPU. Its own CPU time is not counted as other processes' load."""

    def __enter__(self) -> BusyNeighbour:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def machine_info(device: torch.device) -> dict:
    """Date, device, versions, the CPU (:func:`cpu_info`), threads and the load before the run."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **cpu_info(),
        "threads": torch.get_num_threads(),
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "busy_cores": busy_cores() if device.type == "cpu" else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
