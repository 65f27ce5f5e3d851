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

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from styleda_fast.bench.machine import (
    BUSY_LIMIT,
    BusyNeighbour,
    OtherLoad,
    busy_cores,
    describe,
    machine_info,
    native_bf16,
)

NOISE_LIMIT = 0.20  # spread / median above which a timing is flagged
QUANTUM_MS = 4.0  # scheduler ticks on time-sliced machines: medians at exact multiples of 4 ms are suspicious
PLOT_HINT = 'pip install "styleda_fast[bench]" (or: pip install matplotlib)'
QUIET_WAIT_S = 20.0  # how long a family waits for the machine to be quiet before rerunning its rows that are no results
NOT_A_RESULT = {"busy": "busy: not a result", "quantum": "tick: not a result"}

__all__ = ["Case", "Timing", "busy_cores", "machine_info", "run"]


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
        bf16: providers that compute in bfloat16: they run only where the device has native bfloat16.
    """

    family: str
    name: str
    shape: str
    providers: dict[str, Callable[[], object]]
    replaces: str | None = None
    bytes_moved: int = 0
    floor: str | None = "copy"
    items: tuple[int, str] | None = None
    bf16: tuple[str, ...] = ()


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
    others: float | None = None  # cores other processes kept busy meanwhile (None: unknown)

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


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    budget_s: float,
    warm_up: bool = True,
    min_calls: tuple[int, int, int, int] = (7, 5, 3, 2),
    exclude_pid: int | None = None,
) -> Timing:
    """Time ``fn`` repeatedly (after one warm-up call) for about ``budget_s``: at least ``min_calls`` calls, by
    the typical call: under 50 ms, 200 ms, 1 s, longer. Also measures the other processes' load meanwhile."""
    first_ms = 0.0
    if warm_up:
        start = time.perf_counter()
        fn()
        _sync(device)
        first_ms = (time.perf_counter() - start) * 1e3
    samples: list[float] = []
    with OtherLoad(exclude_pid) as load:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples.append((time.perf_counter() - t0) * 1e3)
            typical = statistics.median(samples)
            needed = min_calls[0 if typical < 50 else 1 if typical < 200 else 2 if typical < 1000 else 3]
            if len(samples) >= needed and (time.perf_counter() - start > budget_s or len(samples) >= 100):
                break
    return Timing(samples, first_ms or samples[0], others=load.cores)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    budget_s: float,
    rerun_limit_s: float = 10.0,
    quick: bool = False,
    exclude_pid: int | None = None,
) -> Timing:
    """:func:`time_calls`, rerun once (without a new warm-up) when noisy; a timing still noisy is flagged. A timing
    whose calls took over ``rerun_limit_s`` in all is flagged without a rerun (it would cost as much again).
    ``quick``: no warm-up call, 3 calls at least (2 under 200 ms, else 1) and no rerun: a smoke test."""
    min_calls = (3, 2, 1, 1) if quick else (7, 5, 3, 2)
    timing = time_calls(fn, device, budget_s, warm_up=not quick, min_calls=min_calls, exclude_pid=exclude_pid)
    timing.noise = noise_reason(timing)
    if quick or timing.noise is None or sum(timing.samples) > rerun_limit_s * 1e3:
        return timing
    again = time_calls(fn, device, budget_s, warm_up=False, min_calls=min_calls, exclude_pid=exclude_pid)
    best = again if noise_reason(again) is None or again.spread <= timing.spread else timing
    return Timing(best.samples, timing.first_ms, reruns=1, noise=noise_reason(best), others=best.others)


def not_a_result(timing: Timing) -> str | None:
    """Why a timing cannot stand as a result: ``"busy"`` (other processes kept more than :data:`BUSY_LIMIT` cores
    busy while it ran), ``"quantum"`` (its calls sat on scheduler ticks), or None (a result; a ``"spread"`` timing
    is a rough one, marked ``~``)."""
    if timing.others is not None and timing.others > BUSY_LIMIT:
        return "busy"
    if timing.noise == "quantum":
        return "quantum"
    return None


# ---------------------------------------------------------------- running cases


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}" if ms < 10_000 else f"{ms:.0f}"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x" if v < 1000 else f"{v:.0f}x"


def run_case(
    case: Case, device: torch.device, budget_s: float, log=print, quick: bool = False, exclude_pid: int | None = None
) -> list[dict]:
    """Time every provider of ``case`` (printing each as it goes) and return the table rows."""
    timings: dict[str, Timing] = {}
    for k, (provider, fn) in enumerate(case.providers.items()):
        log(f"{',' if k else ''} {provider}", end="", flush=True)
        try:
            timing = measure(fn, device, budget_s, quick=quick, exclude_pid=exclude_pid)
        except Exception as exc:  # a baseline that fails (e.g. compile on an odd setup) is reported, not fatal
            log(f" failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})", end="")
            continue
        timings[provider] = timing
        first = f", first call {timing.first_ms / 1e3:.1f} s" if timing.first_ms > 2000 else ""
        why = not_a_result(timing)
        mark = f" ({NOT_A_RESULT[why]})" if why else "~" if timing.noise else ""
        log(f" {'' if why else mark}{fmt_ms(timing.median)} ms{mark if why else ''}{first}", end="", flush=True)
    log("")
    return case_rows(case, timings)


def case_rows(case: Case, timings: dict[str, Timing]) -> list[dict]:
    def med(name):
        return timings[name].median if name in timings else None

    floor, replaced, compiled = med(case.floor), med(case.replaces), med("compile")
    # ratios compare providers timed back to back: one provider that is not a result spoils the case's ratios
    reasons = [why for why in map(not_a_result, timings.values()) if why]
    case_reason = reasons[0] if reasons else None
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
            "others_busy_cores": None if t.others is None else round(t.others, 2),
            "result": case_reason is None,
            "not_a_result": case_reason,
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
    """The results, one block per family, shapes on each case's first line; rough figures marked ``~``; the ratios
    of a case measured while the machine was busy (or on the scheduler tick) replaced by "busy: not a result"."""

    def ratio(v):
        return "" if v is None else fmt_ratio(v)

    cells = []
    for r in rows:
        ms = ("~" if r["noisy"] else "") + fmt_ms(r["ms"])
        if r.get("not_a_result"):
            x_copy, vs, vs_compile = "", NOT_A_RESULT[r["not_a_result"]], ""
        else:
            x_copy, vs_compile = ratio(r["x_copy"]), ratio(r["speedup_vs_compile"])
            vs = "replaced" if r["provider"] == r["replaces"] else ratio(r["speedup_vs_replaced"])
        tput = f"{r['throughput']:.3g} {r['throughput_unit']}" if "throughput" in r else ""
        cells.append((r, [r["provider"], ms, f"{r['spread']:.0%}", x_copy, vs, vs_compile, tput]))
    titles = ["provider", "median ms", "spread", "x copy", "vs replaced", "vs compile", "throughput"]
    left = {0}  # left-aligned columns among the cells above; the rest are right-aligned
    case_w = max([4, *(len(r["case"]) for r in rows)])
    shape_w = max([5, *(len(r["shape"]) for r in rows)])
    widths = [max([len(titles[k]), *(len(c[k]) for _, c in cells)]) for k in range(len(titles))]

    def line(case: str, shape: str, values: list[str]) -> str:
        parts = [v.ljust(w) if k in left else v.rjust(w) for k, (v, w) in enumerate(zip(values, widths))]
        return f"{case:{case_w}} {shape:{shape_w}} " + " ".join(parts)

    head = line("case", "shape", titles)
    lines, family, case = [], None, None
    for r, values in cells:
        if r["family"] != family:
            family, case = r["family"], None
            lines += ["", f"== {family}", head]
        first = (r["family"], r["case"]) != case
        case = (r["family"], r["case"])
        lines.append(line(r["case"] if first else "", r["shape"] if first else "", values).rstrip())
    return "\n".join(lines)


def footnotes(rows: list[dict], skipped_bf16: list[str] | None = None) -> str:
    notes = [
        "median ms: median wall time of repeated calls after a warm-up call; spread: interquartile range / median"
        " (range / median under 5 calls).",
        "x copy: time / time of copying the input into a preallocated tensor (the memory floor).",
        "vs replaced: time of the code a user replaces / time (higher is better); the replaced provider is 'public'"
        " (the public PODA/FAMix code) where one exists, else 'eager' (the fastest plain PyTorch).",
        "vs compile: time of torch.compile of the fastest plain PyTorch / time.",
    ]
    noisy = [r for r in rows if r["noisy"] and r.get("result", True)]
    if noisy:
        notes.append(
            f"~ rough figure ({len(noisy)} of {len(rows)}): a spread above {NOISE_LIMIT:.0%} of the median after"
            " one rerun (slow providers: without a rerun): compare such rows with care."
        )
    bad = [r for r in rows if not r.get("result", True)]
    if bad:
        notes.append(
            f"not a result ({len(bad)} of {len(rows)} rows): measured while other processes kept more than"
            f" {BUSY_LIMIT:g} cores busy ('busy') or with calls on the {QUANTUM_MS:g} ms scheduler tick ('tick'),"
            " (a full run reruns such cases once when the machine is quiet); their times and ratios say nothing about"
            " the code: rerun on a quiet machine."
        )
    if skipped_bf16:
        notes.append(f"skipped bfloat16 rows: {', '.join(skipped_bf16)} (see the line at the start).")
    notes.append(f"results: {len(rows) - len(bad)} of {len(rows)} rows.")
    return "\n".join(notes)


# ---------------------------------------------------------------- plot


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
        for yy, r in zip(ys, frows):
            if r.get("result", True):
                ax.barh(yy, r["ms"], color=PROVIDER_COLORS.get(r["provider"], "#bcbd22"), height=0.85)
            else:  # greyed and hatched: a timing of a busy machine, not of the code
                ax.barh(yy, r["ms"], color="#e0e0e0", edgecolor="#909090", hatch="///", height=0.85)
        for yy, r in zip(ys, frows):
            if not r.get("result", True):
                extra = f"  {NOT_A_RESULT[r['not_a_result']]}"
            elif r["provider"] == r["replaces"]:
                extra = "  (replaced)"
            elif r["speedup_vs_replaced"]:
                up = r["speedup_vs_replaced"]
                extra = f"  {fmt_ratio(up)} faster" if up >= 1 else f"  {fmt_ratio(1 / up)} slower"
            else:
                extra = ""
            mark = "~" if r["noisy"] and r.get("result", True) else ""
            color = "black" if r.get("result", True) else "#707070"
            label = f" {r['provider']}: {mark}{fmt_ms(r['ms'])} ms{extra}"
            ax.text(r["ms"], yy, label, va="center", fontsize=7, color=color)
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
        "faster/slower: than the code a user replaces (marked 'replaced'); ~ rough figure (noisy timing);"
        " grey hatched: measured while the machine was busy, not a result",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.25 / total, 1, 1 - 0.1 / total))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- run


def drop_bf16(cases: list[Case], device: torch.device, info: dict) -> list[str]:
    """Remove the bfloat16 providers of ``cases`` where ``device`` has no native bfloat16; their names."""
    if native_bf16(device, info):
        return []
    dropped = []
    for case in cases:
        for name in case.bf16:
            if case.providers.pop(name, None) is not None:
                dropped.append(f"{case.family}/{case.name}: {name}")
    return dropped


def bf16_skip_line(info: dict, dropped: list[str]) -> str:
    return (
        f"skipping {len(dropped)} bfloat16 row{'s' * (len(dropped) > 1)}: this CPU ({info['cpu']}) has no native"
        " bfloat16 (AVX-512-BF16 or AMX), so bfloat16 arithmetic is emulated there and slower than float32; they"
        " run on CPUs that have it and on GPUs"
    )


def _quiet_soon(wait_s: float, exclude_pid: int | None) -> bool:
    """Wait up to ``wait_s`` for a second in which other processes keep at most :data:`BUSY_LIMIT` cores busy."""
    deadline = time.perf_counter() + wait_s
    while True:
        cores = busy_cores(1.0, exclude_pid)
        if cores is None or cores <= BUSY_LIMIT:
            return cores is not None
        if time.perf_counter() + 1.0 > deadline:
            return False


@contextlib.contextmanager
def _quiet_cpp_extension(device: torch.device):
    """torch.compile imports ``torch.utils.cpp_extension``, which warns "No CUDA runtime is found" on a machine
    without a GPU when a CUDA toolkit is installed: not news on a CPU run."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    if device.type == "cpu":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    busy_neighbour: bool = False,
) -> list[dict]:
    """Time the cases of the ``registry`` families (name -> module path) on ``device`` (default: CUDA if present,
    else CPU); print progress and the table; write ``bench.json`` and ``bench.png`` into ``out_dir``.

    ``quick``: small shapes, few calls, no ``torch.compile`` baseline (a smoke test). ``busy_neighbour``: a process
    spins on one core during the run (the small-tensor paths under load). Cases measured while other processes kept
    the machine busy are rerun once when it is quiet (waiting up to :data:`QUIET_WAIT_S` per family; not in quick
    mode); those still busy are marked as not results."""
    unknown = sorted(set(families or ()) - set(registry))
    if unknown:
        raise SystemExit(f"styleda-fast bench: unknown family {', '.join(unknown)}; known: {', '.join(registry)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _quiet_cpp_extension(dev), BusyNeighbour() if busy_neighbour else contextlib.nullcontext() as neighbour:
        return _run(registry, dev, Path(out_dir), quick, compile_baseline and not quick, families, full, extras, log,
                    neighbour.pid if neighbour else None)  # fmt: skip


def _run(registry, dev, out, quick, compile_baseline, families, full, extras, log, neighbour_pid) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(dev)
    info["busy_neighbour"] = neighbour_pid is not None
    settings = {"quick": quick, "full": full, "compile": compile_baseline, "busy_neighbour": neighbour_pid is not None}
    budget_s = 0.05 if quick else 0.5
    started = time.perf_counter()
    log(f"styleda-fast bench on {describe(info)}, torch {info['torch']}")
    log(
        "providers: copy (memory floor), ours, public (the PODA/FAMix code), compile (torch.compile of the fastest"
        " plain PyTorch)"
        + (", eager and reference (slow general spec)" if full else ", eager; --full adds the slow general references")
        + ("" if compile_baseline else "; compile skipped" + (" (--quick)" if quick else " (--no-compile)"))
        + (".  --quick: small shapes, a smoke test, not a measurement" if quick else "")
    )
    if neighbour_pid is not None:
        log("busy neighbour: another process spins on one core during the whole run (its load is expected)")
    elif info.get("busy_cores") is not None and info["busy_cores"] > BUSY_LIMIT:
        log(
            f"note: this machine is busy (other processes kept {info['busy_cores']:.1f} of {info['cores']} cores busy"
            " over the last second): cases measured while it stays busy are rerun once when it is quiet, or marked"
            " 'not a result'"
        )
    if compile_baseline:
        importlib.import_module("torch.utils.cpp_extension")  # torch.compile's import: its warnings here, not mid-line
    rows: list[dict] = []
    skipped_bf16: list[str] = []
    info["family_wall_s"], info["family_cpu_s"] = {}, {}
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
        t0, cpu0 = time.perf_counter(), time.process_time()
        log(f"{name}: preparing inputs and checking that the providers agree", flush=True)
        cases = module.cases(dev, quick, full, compile_baseline)
        dropped = drop_bf16(cases, dev, info)
        if dropped:
            log(bf16_skip_line(info, dropped))
            skipped_bf16 += dropped
        log(f"{name}: {len(cases)} cases (prepared in {time.perf_counter() - t0:.1f} s)")
        family_rows = []
        for k, case in enumerate(cases, 1):
            log(f"  [{k}/{len(cases)}] {case.name} {case.shape}:", end="", flush=True)
            family_rows.append(run_case(case, dev, budget_s, log=log, quick=quick, exclude_pid=neighbour_pid))
        busy = [k for k, case_rows_ in enumerate(family_rows) if any(not r["result"] for r in case_rows_)]
        if busy and not quick:
            log(f"{name}: {len(busy)} case{'s' * (len(busy) > 1)} measured while busy; waiting for a quiet machine")
            if _quiet_soon(QUIET_WAIT_S, neighbour_pid):
                for k in busy:
                    case = cases[k]
                    log(f"  rerun [{k + 1}/{len(cases)}] {case.name} {case.shape}:", end="", flush=True)
                    family_rows[k] = [
                        {**r, "rerun_when_quiet": True}
                        for r in run_case(case, dev, budget_s, log=log, exclude_pid=neighbour_pid)
                    ]
            else:
                log(f"{name}: still busy after {QUIET_WAIT_S:.0f} s: those rows stay marked 'not a result'")
        rows += [r for case_rows_ in family_rows for r in case_rows_]
        del cases, module
        info["family_wall_s"][name] = round(time.perf_counter() - t0, 1)
        info["family_cpu_s"][name] = round(time.process_time() - cpu0, 1)
        log(
            f"{name}: done in {info['family_wall_s'][name]:.0f} s (process CPU time {info['family_cpu_s'][name]:.0f} s)"
        )
    wall = time.perf_counter() - started
    info["skipped_bf16"] = skipped_bf16
    log(f"\nstyleda-fast bench, {info['date'][:16].replace('T', ' ')} UTC, on {describe(info)}, torch {info['torch']}")
    log(format_table(rows))
    log("")
    log(footnotes(rows, skipped_bf16))
    info["wall_s"] = round(wall, 1)
    (out / "bench.json").write_text(json.dumps({"machine": info, "settings": settings, "results": rows}, indent=1))
    written = [str(out / "bench.json")]
    try:
        results = sum(r["result"] for r in rows)
        title = (
            f"styleda_fast on {describe(info)}, torch {info['torch']}, {info['date'][:10]}"
            f"\n{results} of {len(rows)} rows are results"
            + ("; with a busy neighbour process" if neighbour_pid is not None else "")
        )
        plot(rows, out / "bench.png", title)
        written.append(str(out / "bench.png"))
    except ImportError:
        log(f"no plot: matplotlib is not installed; for bench.png: {PLOT_HINT}")
    log(f"wrote {' and '.join(written)}; {wall:.0f} s in all (process CPU time {time.process_time():.0f} s)")
    return rows
