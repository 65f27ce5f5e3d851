"""A/B timing of the C++ CPU kernels: this checkout's kernels against those of an older git revision, in ONE
process, calls interleaved (old, new, copy, old, new, copy, ...), so that a loaded or drifting machine affects both
alike. Prints medians, the spread (interquartile range / median) and the load average before and after.

    PYTHONPATH=$PWD python benchmarks/cpu_profile.py --old HEAD~1 [--isa avx2|generic] [--cases style,text]

The old kernels are built from ``git archive <rev>`` of core/csrc and ops/ with the C++ namespace and the operator
library renamed (``-Dstyleda_fast=styleda_oldk``), so both load side by side as torch.ops.styleda_fast and
torch.ops.styleda_oldk. ``--isa`` sets STYLEDA_FAST_CPU_ISA for both (``avx2`` is what an AVX2-only CPU runs).
Not a test: the suite checks numbers, this checks speed.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_old(rev: str) -> str:
    """Builds the kernels of git revision `rev` as namespace styleda_oldk; returns the namespace."""
    from torch.utils import cpp_extension

    sha = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True).strip()
    src = Path(tempfile.gettempdir()) / f"styleda_old_{sha}"
    if not src.exists():
        src.mkdir(parents=True)
        archive = subprocess.check_output(
            ["git", "archive", sha, "styleda_fast/core/csrc", "styleda_fast/ops"], cwd=ROOT
        )
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
    sources = sorted(str(p) for p in src.glob("styleda_fast/core/csrc/*.cpp")) + sorted(
        str(p) for p in src.glob("styleda_fast/ops/*/*_cpu.cpp")
    )
    build = src / "build"
    build.mkdir(exist_ok=True)
    cpp_extension.load(
        name=f"styleda_old_{sha}",
        sources=sources,
        extra_include_paths=[str(src / "styleda_fast/core/csrc")],
        extra_cflags=["-O3", "-DNDEBUG", "-fopenmp", "-Dstyleda_fast=styleda_oldk"],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    return "styleda_oldk"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0:3].__str__()


CLOCK = time.perf_counter


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def run_interleaved(providers: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Times every provider once per round, `repeats` rounds; the order of the providers rotates each round."""
    names = list(providers)
    for _ in range(warmup):
        for n in names:
            providers[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            times[n].append(timed(providers[n]))
    return times


def summary(times: dict[str, list[float]], ref: str = "copy") -> str:
    lines = []
    base = statistics.median(times[ref]) if ref in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4)
        ratio = f"{med / base:6.2f}x {ref}" if base else ""
        lines.append(f"  {name:<28} {med * 1e3:9.3f} ms  spread {100 * (q[2] - q[0]) / med:5.1f}%  {ratio}")
    if "old" in times and "new" in times:
        lines.append(f"  new / old = {statistics.median(times['new']) / statistics.median(times['old']):.3f}")
    return "\n".join(lines)


def style_setting(fmt: str, ns_old: str | None, torch) -> dict:
    """The cases of one memory format, each {provider: call}; the tensors are bound per call of this function."""
    gen = torch.Generator().manual_seed(0)
    B, C, H, W, g = 8, 256, 192, 192, 3
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = (torch.randn(B, C, H, W, generator=gen) * 2 + 1).contiguous(memory_format=memory_format)
    tm = torch.randn(B, C, g, g, generator=gen)
    ts = torch.rand(B, C, g, g, generator=gen) + 0.5
    mix = torch.rand(B, C, g, g, generator=gen)
    dy = torch.randn(x.shape, generator=gen).contiguous(memory_format=memory_format)
    out = torch.empty_like(x)

    def ops(ns):
        o = getattr(torch.ops, ns)
        _, mean, std = o.local_style_mix(x, tm, ts, mix, g, g, True, 1e-5)
        sg, sgx = o.local_style_mix_backward(dy, x, mean, std, tm, ts, mix, True, False)[1:]

        def forward_backward():
            _, m, s = o.local_style_mix(x, tm, ts, mix, g, g, True, 1e-5)
            o.local_style_mix_backward(dy, x, m, s, tm, ts, mix, True, True)

        return {
            "statistics only (passes 1-2)": lambda: o.patch_mean_std(x, g, g, 1e-5),
            "forward out=": lambda: o.local_style_mix_into(x, tm, ts, mix, g, g, True, 1e-5, out),
            "fwd+bwd": forward_backward,
            "grad_x": lambda: o.local_style_mix_grad_x(dy, x, mean, std, tm, ts, mix, sg, sgx, sg, sgx, True),
        }

    new = ops("styleda_fast")
    old = ops(ns_old) if ns_old else {}
    cases = {}
    for kind in new:
        providers = {"copy": lambda: out.copy_(x), "new": new[kind]}
        if old:
            providers["old"] = old[kind]
        cases[f"style {kind} {fmt} {tuple(x.shape)}"] = providers
    return cases


def style_cases(ns_old: str | None, torch) -> dict:
    """Style-mix kernels at the FAMix shape (grid 3, per-patch styles, mixing), NCHW and channels_last."""
    return {**style_setting("nchw", ns_old, torch), **style_setting("channels_last", ns_old, torch)}


def small_cases(ns_old: str | None, torch) -> dict:
    """Per-(B, C) work of the layers on small feature maps, where opening a parallel region costs more than the work
    (and much more when another process keeps a core busy: run with --busy)."""
    cases = {}
    for shape, g in (((2, 64, 16, 16), 3), ((8, 256, 7, 7), 1), ((1, 3, 32, 32), 2)):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen)
        tm = torch.randn(*shape[:2], g, g, generator=gen)
        ts = torch.rand(*shape[:2], g, g, generator=gen) + 0.5
        out = torch.empty_like(x)

        def providers_of(ns, x=x, tm=tm, ts=ts, out=out, g=g):
            o = getattr(torch.ops, ns)
            return lambda: o.local_style_mix_into(x, tm, ts, None, g, g, True, 1e-5, out)

        providers = {"copy": lambda x=x, out=out: out.copy_(x), "new": providers_of("styleda_fast")}
        if ns_old:
            providers["old"] = providers_of(ns_old)
        cases[f"small forward out= {shape} grid {g}"] = providers
    return cases


def text_cases(ns_old: str | None, torch):
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(10000, 1024, generator=gen)
    xn = torch.randn(16, 256, 64, 64, generator=gen)
    mean = torch.randn(16, 256, generator=gen)
    std = torch.rand(16, 256, generator=gen) + 0.5
    gout = torch.randn(xn.shape, generator=gen)
    tout = torch.empty_like(text)
    xout = torch.empty_like(xn)
    cases = {}

    def ops(ns):
        o = getattr(torch.ops, ns)

        def features_fb():
            o.noisy_style_features(xn, mean, std, 0.1, 7, 3)
            o.noisy_style_features_backward(gout, xn, mean, std, True)

        return {
            "noisy_text_projection (10000, 1024)": lambda: o.noisy_text_projection(text, 0.05, 1, 7, 3),
            "noisy_style_features fwd (16, 256, 64, 64)": lambda: o.noisy_style_features(xn, mean, std, 0.1, 7, 3),
            "noisy_style_features fwd+bwd (16, 256, 64, 64)": features_fb,
        }

    new = ops("styleda_fast")
    old = ops(ns_old) if ns_old else {}
    for kind in new:
        copy = (lambda: tout.copy_(text)) if "text" in kind else (lambda: xout.copy_(xn))
        providers = {"copy": copy, "new": new[kind]}
        if old:
            providers["old"] = old[kind]
        cases[kind] = providers
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", help="git revision whose kernels are the A side (none: new and copy only)")
    parser.add_argument("--isa", choices=["avx2", "generic"], help="STYLEDA_FAST_CPU_ISA for both sides")
    parser.add_argument("--cases", default="style,text", help="comma-separated: style, text, small")
    parser.add_argument("--busy", action="store_true", help="keep one core busy with a spinning process meanwhile")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the calling thread's CPU time (time.thread_time) instead of wall time; with --threads 1 this is "
        "the kernel's own work, much less sensitive to other processes than wall time on a loaded machine",
    )
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.thread_time
    if args.isa:
        os.environ["STYLEDA_FAST_CPU_ISA"] = args.isa
    sys.path.insert(0, str(ROOT))
    import torch

    import styleda_fast  # noqa: F401  (loads the new kernels)

    if args.threads:
        torch.set_num_threads(args.threads)

    ns_old = build_old(args.old) if args.old else None
    isa = os.environ.get("STYLEDA_FAST_CPU_ISA", "auto")
    clock = "thread CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, STYLEDA_FAST_CPU_ISA={isa}, {clock}")
    cases = {}
    if "style" in args.cases:
        cases.update(style_cases(ns_old, torch))
    if "small" in args.cases:
        cases.update(small_cases(ns_old, torch))
    if "text" in args.cases:
        cases.update(text_cases(ns_old, torch))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        run_cases(cases, args)
    finally:
        if busy is not None:
            busy.kill()


def run_cases(cases: dict, args) -> None:
    for name, providers in cases.items():
        if args.filter not in name:
            continue
        before = loadavg()
        times = run_interleaved(providers, args.repeats)
        print(f"{name}  (load before {before}, after {loadavg()})")
        print(summary(times))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
