"""``styleda-fast bench``: times each operation against a plain copy of its input, eager PyTorch and
``torch.compile`` of the reference, in one run, and writes a table, JSON and a PNG plot.

Each operation family contributes cases (``style_mix_cases`` below; more families add their own function to
``CASE_FAMILIES``). A case names its providers; ``"copy"`` is the memory floor that all ratios refer to.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from styleda_fast import reference
from styleda_fast.bench_class_stats import class_stats_cases
from styleda_fast.style_mix import local_style_mix


@dataclasses.dataclass
class Case:
    """One benchmark: providers that compute the same thing (plus ``copy``, the floor) and the bytes moved."""

    family: str
    name: str
    shape: str
    bytes_moved: int  # bytes an ideal kernel reads + writes (for GB/s)
    providers: dict[str, Callable[[], object]]
    ratio_to: str = "copy"  # the floor that "x floor" refers to


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, budget_s: float = 1.0, min_reps: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call, within about ``budget_s``."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _forward_backward(fn, inputs, grad):
    def run():
        for t in inputs:
            t.grad = None
        fn().backward(grad)

    return run


def style_mix_cases(device: torch.device, quick: bool, compile_baseline: bool) -> list[Case]:
    """FAMix (grid 3, a style per patch, Beta mixing) and PODA (global, uniform mixing) at the FAMix shape."""
    shape = (2, 64, 48, 48) if quick else (8, 256, 192, 192)
    B, C = shape[:2]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(device)
    out = torch.empty_like(x)
    grad = torch.randn(shape, generator=gen).to(device)
    nbytes = x.numel() * x.element_size()
    compiled = torch.compile(reference.local_style_mix) if compile_baseline else None
    cases = []
    for label, grid, per_patch, mix_dist in (
        ("famix", 3, True, torch.distributions.Beta(0.1, 0.1)),
        ("poda", 1, False, torch.distributions.Uniform(0.0, 1.0)),
    ):
        style_shape = (B, C, grid, grid) if per_patch else (B, C, 1, 1)
        style_mean = (torch.randn(style_shape, generator=gen)).to(device)
        style_std = (torch.rand(style_shape, generator=gen) + 0.5).to(device)
        mix = mix_dist.sample((B, C)).to(device)
        mix4 = mix[:, :, None, None]
        ref_args = (style_mean, style_std, (grid, grid), mix4)
        forward = {
            "copy": lambda: out.copy_(x),
            "clone": lambda: x.clone(),
            "eager": lambda ra=ref_args: reference.local_style_mix(x, *ra),
            "ours (out=)": lambda g=grid, sm=style_mean, ss=style_std, m=mix: local_style_mix(
                x, sm, ss, grid=g, mix=m, out=out
            ),
            "ours": lambda g=grid, sm=style_mean, ss=style_std, m=mix: local_style_mix(x, sm, ss, grid=g, mix=m),
        }
        if compiled is not None:
            forward["compile"] = lambda ra=ref_args: compiled(x, *ra)
        cases.append(Case("style_mix", f"{label} forward", str(shape), 2 * nbytes, forward))

        xg = x.clone().requires_grad_()
        sm, ss, mg = (t.clone().requires_grad_() for t in (style_mean, style_std, mix))
        sm4, ss4 = sm, ss
        backward = {
            "copy": lambda: out.copy_(x),
            "eager": _forward_backward(
                lambda g=grid: reference.local_style_mix(xg, sm4, ss4, (g, g), mg[:, :, None, None]), (xg, sm, ss, mg), grad
            ),
            "ours": _forward_backward(
                lambda g=grid: local_style_mix(xg, sm, ss, grid=g, mix=mg), (xg, sm, ss, mg), grad
            ),
        }
        if compiled is not None:
            backward["compile"] = _forward_backward(
                lambda g=grid: compiled(xg, sm4, ss4, (g, g), mg[:, :, None, None]), (xg, sm, ss, mg), grad
            )
        # ideal: forward reads x, writes y; backward reads x and dy, writes dx
        cases.append(Case("style_mix", f"{label} forward+backward", str(shape), 5 * nbytes, backward))
    return cases


CASE_FAMILIES: dict[str, Callable[[torch.device, bool, bool], list[Case]]] = {"style_mix": style_mix_cases}


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
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


def run_cases(cases: list[Case], device: torch.device, budget_s: float, log=print) -> list[dict]:
    rows = []
    for case in cases:
        times = {}
        for provider, fn in case.providers.items():
            try:
                times[provider] = time_call(fn, device, budget_s)
            except Exception as exc:  # a baseline that fails (e.g. compile on an odd setup) is reported, not fatal
                log(f"  {case.name}: {provider} failed: {type(exc).__name__}: {exc}")
        floor = times.get(case.ratio_to)
        for provider, ms in times.items():
            rows.append(
                {
                    "family": case.family,
                    "case": case.name,
                    "shape": case.shape,
                    "provider": provider,
                    "ms": ms,
                    "x_copy": ms / floor if floor else None,
                    "speedup_vs_eager": times["eager"] / ms if "eager" in times else None,
                    "speedup_vs_compile": times["compile"] / ms if "compile" in times else None,
                    "GB/s": case.bytes_moved / (ms * 1e-3) / 1e9,
                }
            )
        log(format_table([r for r in rows if r["case"] == case.name and r["family"] == case.family]))
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    header = f"{'case':28} {'provider':12} {'ms':>9} {'x copy':>7} {'vs eager':>9} {'vs compile':>10} {'GB/s':>7}"
    lines = [header] if rows else []
    for r in rows:
        lines.append(
            f"{r['case']:28} {r['provider']:12} {r['ms']:9.2f} {fmt(r['x_copy'], '7.2f')} "
            f"{fmt(r['speedup_vs_eager'], '9.2f')} {fmt(r['speedup_vs_compile'], '10.2f')} {r['GB/s']:7.1f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(f"{r['family']}: {r['case']}" for r in rows))
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "copy"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / max(1, len(providers))
    for k, provider in enumerate(providers):
        values = []
        for c in cases:
            match = [r for r in rows if f"{r['family']}: {r['case']}" == c and r["provider"] == provider]
            values.append(match[0]["x_copy"] if match and match[0]["x_copy"] else 0.0)
        ax.bar([i + k * width for i in range(len(cases))], values, width, label=provider)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("time / time of a plain copy (log)")
    ax.set_xticks([i + width * (len(providers) - 1) / 2 for i in range(len(cases))])
    ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(device: str | None, out_dir: str, quick: bool, compile_baseline: bool, families: list[str] | None) -> list[dict]:
    """Run the benchmark families on ``device`` (default: CUDA if present, else CPU); write JSON and PNG."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(dev)
    print(f"styleda-fast bench on {info.get('gpu') or info['cpu']} ({dev}), torch {info['torch']}, {info['date']}")
    rows: list[dict] = []
    for name, make_cases in CASE_FAMILIES.items():
        if families and name not in families:
            continue
        cases = make_cases(dev, quick, compile_baseline)
        rows += run_cases(cases, dev, budget_s=0.3 if quick else 1.5)
    (out / "bench.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1))
    plot(rows, out / "bench.png", f"styleda_fast on {info.get('gpu') or info['cpu']}, {info['date'][:10]}")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return rows


CASE_FAMILIES["class_stats"] = class_stats_cases  # the class-statistics family (styleda_fast/bench_class_stats.py)
