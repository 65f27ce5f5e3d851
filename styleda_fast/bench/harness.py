"""The benchmark harness: :class:`Case`, timing with spread and noise flags, the table, JSON and the plot.

It knows nothing of the operator families: each family module (``styleda_fast/bench/<family>.py``, registered in
``styleda_fast/bench/__init__.py``) builds its cases with ``cases(device, quick, full, compile_baseline)`` and
this module times them. Provider names shared by the families:

* ``copy``: ``y.copy_(x)`` of the input into a preallocated tensor, the memory floor ("x copy" refers to it);
* ``ours`` (``ours (out=)``: into a preallocated output);
* ``public``: the algorithm as the public PODA/FAMix code runs it (``styleda_fast.compat.public_code``);
* ``eager``: the fastest plain PyTorch a user would write; ``compile``: ``torch.compile`` of that same function;
* ``reference`` (``--full`` only): the family's general plain-PyTorch specification, slow.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

NOISE_LIMIT = 0.20  # spread / median above which a timing is flagged
QUANTUM_MS = 4.0  # scheduler ticks on time-sliced machines: medians at exact multiples of 4 ms are suspicious
PLOT_HINT = 'pip install "styleda_fast[bench]" (or: pip install matplotlib)'


@dataclasses.dataclass
class Case:
    """One benchmark: providers that compute the same numbers (plus floors such as ``copy``).

    Attributes:
        family, name: where and what; ``shape`` is printed in the table (the input's shape).
        providers: name -> zero-argument callable, timed in this order (put the cheap ones first).
        replaces: the provider whose code a user replaces ("vs replaced" and the plot refer to it).
        bytes_moved: bytes an ideal kernel reads + writes per call, for GB/s (0: no GB/s).
        floor: the provider that "x copy" refers to (``None``: the case is not memory-bound).
        items: ``(count, unit)`` done per call, e.g. ``(48, "styles")``: throughput in unit/s instead of GB/s.
    """

    family: str
    name: str
    shape: str
    providers: dict[str, Callable[[], object]]
    replaces: str | None = None
    bytes_moved: int = 0
    floor: str | None = "copy"
    items: tuple[int, str] | None = None


def forward_backward(fn: Callable[[], torch.Tensor], leaves: Iterable[torch.Tensor], grad) -> Callable[[], None]:
    """A provider that runs ``fn()`` and back-propagates ``grad`` into ``leaves`` (their grads reset first)."""
    leaves = tuple(leaves)

    def run():
        for t in leaves:
            t.grad = None
        fn().backward(grad)

    return run


# ---------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Wall times (ms) of repeated calls after one warm-up call (``first_ms``: that call, compilation included)."""

    samples: list[float]
    first_ms: float
    reruns: int = 0
    noise: str | None = None  # why the timing is flagged (None: clean)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 5:
            return min(self.samples), max(self.samples)
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range over the median (range over the median for fewer than 5 calls)."""
        lo, hi = self.quartiles()
        return (hi - lo) / self.median if self.median > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def looks_quantized(samples: list[float]) -> bool:
    """Times that sit on scheduler ticks (e.g. 8.00, 16.00, 15.99, 28.01 ms): a busy machine descheduled a thread of
    the call, which then waited for a later tick, so the figure measures ticks, not the code. True when at least 2
    calls and 40% of them lie within 0.15 ms of a multiple of 4 ms (by chance: under 8% of calls each)."""

    def on_tick(ms: float) -> bool:
        return ms > QUANTUM_MS - 0.15 and abs(ms - QUANTUM_MS * round(ms / QUANTUM_MS)) <= 0.15

    return sum(map(on_tick, samples)) >= max(2, math.ceil(0.4 * len(samples)))


def noise_reason(t: Timing) -> str | None:
    """``"quantum"``, ``"spread"`` (interquartile range above 20% of the median, or the fastest call under a third
    of the median: some calls were slowed down by something else) or None."""
    if looks_quantized(t.samples):
        return "quantum"
    if t.spread > NOISE_LIMIT or min(t.samples) < t.median / 3:
        return "spread"
    return None


def time_calls(fn: Callable[[], object], device: torch.device, budget_s: float, warm_up: bool = True) -> Timing:
    """Time ``fn`` repeatedly (after one warm-up call) for about ``budget_s``: at least 7 calls when a call takes
    under 50 ms, 5 under 200 ms, 3 under 1 s, else 2."""
    first_ms = 0.0
    if warm_up:
        start = time.perf_counter()
        fn()
        _sync(device)
        first_ms = (time.perf_counter() - start) * 1e3
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        typical = statistics.median(samples)
        min_calls = 7 if typical < 50 else 5 if typical < 200 else 3 if typical < 1000 else 2
        if len(samples) >= min_calls and (time.perf_counter() - start > budget_s or len(samples) >= 100):
            break
    return Timing(samples, first_ms or samples[0])


def measure(fn: Callable[[], object], device: torch.device, budget_s: float, rerun_limit_s: float = 10.0) -> Timing:
    """:func:`time_calls`, rerun once (without a new warm-up) when noisy; a timing still noisy is flagged. A timing
    whose calls took over ``rerun_limit_s`` in all is flagged without a rerun (it would cost as much again)."""
    timing = time_calls(fn, device, budget_s)
    timing.noise = noise_reason(timing)
    if timing.noise is None or sum(timing.samples) > rerun_limit_s * 1e3:
        return timing
    again = time_calls(fn, device, budget_s, warm_up=False)
    best = again if noise_reason(again) is None or again.spread <= timing.spread else timing
    return Timing(best.samples, timing.first_ms, reruns=1, noise=noise_reason(best))


class _Heartbeat:
    """Prints a dot every ``period`` seconds while a slow provider runs (nothing stays silent for long)."""

    def __init__(self, period: float = 5.0, log=print):
        self.period, self.log, self.stop = period, log, threading.Event()

    def __enter__(self):
        def beat():
            while not self.stop.wait(self.period):
                self.log(".", end="", flush=True)

        self.thread = threading.Thread(target=beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# ---------------------------------------------------------------- running cases


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}" if ms < 10_000 else f"{ms:.0f}"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x" if v < 1000 else f"{v:.0f}x"


def run_case(case: Case, device: torch.device, budget_s: float, log=print) -> list[dict]:
    """Time every provider of ``case`` (printing each as it goes) and return the table rows."""
    timings: dict[str, Timing] = {}
    for k, (provider, fn) in enumerate(case.providers.items()):
        log(f"{',' if k else ''} {provider}", end="", flush=True)
        try:
            with _Heartbeat(log=log):
                timing = measure(fn, device, budget_s)
        except Exception as exc:  # a baseline that fails (e.g. compile on an odd setup) is reported, not fatal
            log(f" failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})", end="")
            continue
        timings[provider] = timing
        first = f", first call {timing.first_ms / 1e3:.1f} s" if timing.first_ms > 2000 else ""
        log(f" {'~' if timing.noise else ''}{fmt_ms(timing.median)} ms{first}", end="", flush=True)
    log("")
    return case_rows(case, timings)


def case_rows(case: Case, timings: dict[str, Timing]) -> list[dict]:
    def med(name):
        return timings[name].median if name in timings else None

    floor, replaced, compiled = med(case.floor), med(case.replaces), med("compile")
    rows = []
    for provider, t in timings.items():
        is_floor = provider in (case.floor, "clone")
        ms = t.median
        q1, q3 = t.quartiles()
        row = {
            "family": case.family,
            "case": case.name,
            "shape": case.shape,
            "provider": provider,
            "ms": ms,
            "min_ms": min(t.samples),
            "max_ms": max(t.samples),
            "q1_ms": q1,
            "q3_ms": q3,
            "spread": t.spread,
            "calls": len(t.samples),
            "samples_ms": [round(v, 4) for v in t.samples],
            "first_call_ms": t.first_ms,
            "reruns": t.reruns,
            "noisy": t.noise,
            "replaces": case.replaces,
            "x_copy": ms / floor if floor and case.floor in timings else None,
            "speedup_vs_replaced": replaced / ms if replaced and provider != case.replaces and not is_floor else None,
            "speedup_vs_compile": compiled / ms if compiled and provider.startswith("ours") else None,
        }
        if case.items:
            row["throughput"], row["throughput_unit"] = case.items[0] / (ms * 1e-3), f"{case.items[1]}/s"
        elif case.bytes_moved:
            row["throughput"], row["throughput_unit"] = case.bytes_moved / (ms * 1e-3) / 1e9, "GB/s"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- table


def format_table(rows: list[dict]) -> str:
    """The results, one block per family, shapes on each case's first line; noisy figures marked ``~``."""

    def ratio(v):
        return "" if v is None else fmt_ratio(v)

    head = (
        f"{'case':30} {'shape':20} {'provider':12} {'median ms':>10} {'spread':>6}"
        f" {'x copy':>7} {'vs replaced':>11} {'vs compile':>10} {'throughput':>15}"
    )
    lines, family, case = [], None, None
    for r in rows:
        if r["family"] != family:
            family, case = r["family"], None
            lines += ["", f"== {family}", head]
        first = (r["family"], r["case"]) != case
        case = (r["family"], r["case"])
        ms = ("~" if r["noisy"] else "") + fmt_ms(r["ms"])
        if r["provider"] == r["replaces"]:
            vs = "replaced"
        else:
            vs = ratio(r["speedup_vs_replaced"])
        tput = f"{r['throughput']:.3g} {r['throughput_unit']}" if "throughput" in r else ""
        lines.append(
            f"{r['case'] if first else '':30} {r['shape'] if first else '':20} {r['provider']:12} {ms:>10}"
            f" {r['spread']:>6.0%} {ratio(r['x_copy']) if r['x_copy'] is not None else '':>7} {vs:>11}"
            f" {ratio(r['speedup_vs_compile']):>10} {tput:>15}"
        )
    return "\n".join(lines)


def footnotes(rows: list[dict]) -> str:
    notes = [
        "median ms: median wall time of repeated calls after a warm-up call; spread: interquartile range / median"
        " (range / median under 5 calls).",
        "x copy: time / time of copying the input into a preallocated tensor (the memory floor).",
        "vs replaced: time of the code a user replaces / time (higher is better); the replaced provider is 'public'"
        " (the public PODA/FAMix code) where one exists, else 'eager' (the fastest plain PyTorch).",
        "vs compile: time of torch.compile of the fastest plain PyTorch / time.",
    ]
    noisy = [r for r in rows if r["noisy"]]
    if noisy:
        notes.append(
            f"~ rough figure ({len(noisy)} of {len(rows)}): noisy after one rerun (slow providers: without a rerun),"
            f" either a spread above {NOISE_LIMIT:.0%} of the median or a median on a {QUANTUM_MS:g} ms scheduler"
            " tick (the machine was busy): compare such rows with care, or rerun on a quiet machine."
        )
    return "\n".join(notes)


# ---------------------------------------------------------------- machine, JSON, plot


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes keep busy, sampled from ``/proc/stat`` over ``seconds`` before the benchmark
    starts (the 1-minute load average lags: it still counts a run that just ended). None where unavailable."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
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
    else:
        try:
            model = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
            info["cpu"] = model[0].split(":", 1)[1].strip() if model else info["cpu"]
        except OSError:
            pass
    return info


PROVIDER_COLORS = {
    "ours": "#1f77b4",
    "ours (out=)": "#6baed6",
    "ours bf16": "#9ecae1",
    "compile": "#ff7f0e",
    "eager": "#d62728",
    "public": "#7f7f7f",
    "reference": "#8c564b",
    "copy": "#2ca02c",
    "clone": "#98df8a",
}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """One panel per family; per case, a horizontal bar per provider: time per call, log scale, lower is better.
    Each bar is labelled with its time and its speed-up over the code a user replaces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    heights = [len([r for r in rows if r["family"] == f]) * 0.28 + 0.9 for f in families]
    fig, axes = plt.subplots(
        len(families), 1, figsize=(10, sum(heights) + 0.8), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax, family in zip(axes[:, 0], families):
        frows = [r for r in rows if r["family"] == family]
        ys, centers, y = [], [], 0.0
        for case in dict.fromkeys(r["case"] for r in frows):
            crows = [r for r in frows if r["case"] == case]
            start = y
            for _ in crows:
                ys.append(y)
                y += 1
            centers.append(((start + y - 1) / 2, f"{case}\n{crows[0]['shape']}"))
            y += 0.6
        colors = [PROVIDER_COLORS.get(r["provider"], "#bcbd22") for r in frows]
        ax.barh(ys, [r["ms"] for r in frows], color=colors, height=0.85)
        for yy, r in zip(ys, frows):
            if r["provider"] == r["replaces"]:
                extra = "  (replaced)"
            elif r["speedup_vs_replaced"]:
                up = r["speedup_vs_replaced"]
                extra = f"  {fmt_ratio(up)} faster" if up >= 1 else f"  {fmt_ratio(1 / up)} slower"
            else:
                extra = ""
            mark = "~" if r["noisy"] else ""
            ax.text(r["ms"], yy, f" {r['provider']}: {mark}{fmt_ms(r['ms'])} ms{extra}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_yticks([c for c, _ in centers], [t for _, t in centers], fontsize=8)
        ax.invert_yaxis()
        lo, hi = min(r["ms"] for r in frows), max(r["ms"] for r in frows)
        ax.set_xlim(lo / 2, hi * 60)  # room for the labels right of the bars
        ax.set_title(family, fontsize=10, loc="left")
        ax.set_xlabel("time per call, ms (log scale; lower is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="major", linewidth=0.4, alpha=0.5)
    total = sum(heights) + 0.6
    fig.suptitle(title, fontsize=10)
    fig.text(
        0.01,
        0.005,
        "faster/slower: than the code a user replaces (marked 'replaced'); ~ rough figure (noisy timing)",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.25 / total, 1, 1 - 0.1 / total))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- run


def load_family(module_path: str):
    """Import a family module; ``ImportError`` only when a dependency outside the package is missing."""
    try:
        return importlib.import_module(module_path)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "styleda_fast":
            raise  # a broken module of this package is a bug, not a missing optional dependency
        raise


def run(
    registry: dict[str, str],
    device: str | None,
    out_dir: str,
    quick: bool = False,
    compile_baseline: bool = True,
    families: list[str] | None = None,
    full: bool = False,
    extras: dict[str, str] | None = None,
    log=print,
) -> list[dict]:
    """Time the cases of the ``registry`` families (name -> module path) on ``device`` (default: CUDA if present,
    else CPU); print progress and the table; write ``bench.json`` and ``bench.png`` into ``out_dir``."""
    unknown = sorted(set(families or ()) - set(registry))
    if unknown:
        raise SystemExit(f"styleda-fast bench: unknown family {', '.join(unknown)}; known: {', '.join(registry)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(dev)
    settings = {"quick": quick, "full": full, "compile": compile_baseline}
    budget_s = 0.2 if quick else 0.5
    started = time.perf_counter()
    where = f"{info.get('gpu') or info['cpu']} ({dev}, {info['threads']} threads)"
    log(f"styleda-fast bench on {where}, torch {info['torch']}")
    log(
        "providers: copy (memory floor), ours, public (the PODA/FAMix code), compile (torch.compile of the fastest"
        " plain PyTorch)"
        + (", eager and reference (slow general spec)" if full else ", eager; --full adds the slow general references")
        + ("" if compile_baseline else "; compile skipped (--no-compile)")
        + (".  --quick: small shapes, a smoke test, not a measurement" if quick else "")
    )
    if info.get("busy_cores") is not None and info["busy_cores"] > 0.25:
        log(
            f"note: this machine is busy (other processes kept {info['busy_cores']:.1f} of {info['cores']} cores busy"
            " over the last second): timings will be inflated and noisy; for figures to publish, rerun on a quiet"
            " machine"
        )
    if compile_baseline:
        importlib.import_module("torch.utils.cpp_extension")  # torch.compile's import: its warnings here, not mid-line
    rows: list[dict] = []
    info["family_wall_s"] = {}
    for name, module_path in registry.items():
        if families and name not in families:
            continue
        try:
            module = importlib.import_module(module_path)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] == "styleda_fast":
                raise  # a broken module of this package is a bug, not a missing optional dependency
            missing = (exc.name or "").split(".")[0]
            hint = f' (pip install "styleda_fast[{extras[missing]}]")' if extras and missing in extras else ""
            log(f"skipping family {name}: needs {missing or exc}{hint}")
            continue
        t0 = time.perf_counter()
        log(f"{name}: preparing inputs and checking that the providers agree ...", flush=True)
        cases = module.cases(dev, quick, full, compile_baseline)
        log(f"{name}: {len(cases)} cases (prepared in {time.perf_counter() - t0:.1f} s)")
        for k, case in enumerate(cases, 1):
            log(f"  [{k}/{len(cases)}] {case.name} {case.shape}:", end="", flush=True)
            rows += run_case(case, dev, budget_s, log=log)
        del cases, module
        info["family_wall_s"][name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: done in {info['family_wall_s'][name]:.0f} s")
    wall = time.perf_counter() - started
    log(format_table(rows))
    log("")
    log(footnotes(rows))
    info["wall_s"] = round(wall, 1)
    (out / "bench.json").write_text(json.dumps({"machine": info, "settings": settings, "results": rows}, indent=1))
    written = [str(out / "bench.json")]
    try:
        plot(rows, out / "bench.png", f"styleda_fast on {info.get('gpu') or info['cpu']} ({dev}), {info['date'][:10]}")
        written.append(str(out / "bench.png"))
    except ImportError:
        log(f"no plot: matplotlib is not installed; for bench.png: {PLOT_HINT}")
    log(f"wrote {' and '.join(written)}; {wall:.0f} s in all")
    return rows
