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
from styleda_fast.bench_text import text_cases
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
    """Median wall time of ``fn`` in milliseconds, after one warm-up call, within about ``budget_s``.

    Providers slower than a second (the public algorithms, eager baselines) get two timed calls instead of three.
    """
    start = time.perf_counter()
    fn()
    _sync(device)
    if time.perf_counter() - start > 1.0:
        min_reps = min(min_reps, 2)
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
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(device)
    compiled = torch.compile(reference.local_style_mix) if compile_baseline else None
    famix = _style_mix_setting("famix", x, 3, True, torch.distributions.Beta(0.1, 0.1), gen, compiled)
    poda = _style_mix_setting("poda", x, 1, False, torch.distributions.Uniform(0.0, 1.0), gen, compiled)
    return famix + poda


def _style_mix_setting(label, x, grid, per_patch, mix_distribution, gen, compiled) -> list[Case]:
    """Forward and forward+backward cases of one setting (grid, style per patch or per image, mixing law)."""
    B, C = x.shape[:2]
    device, nbytes = x.device, x.numel() * x.element_size()
    out = torch.empty_like(x)
    style_shape = (B, C, grid, grid) if per_patch else (B, C, 1, 1)
    style_mean = torch.randn(style_shape, generator=gen).to(device)
    style_std = (torch.rand(style_shape, generator=gen) + 0.5).to(device)
    mix = mix_distribution.sample((B, C)).to(device)
    ref_args = (style_mean, style_std, (grid, grid), mix[:, :, None, None])
    forward = {
        "copy": lambda: out.copy_(x),
        "clone": lambda: x.clone(),
        "eager": lambda: reference.local_style_mix(x, *ref_args),
        "ours (out=)": lambda: local_style_mix(x, style_mean, style_std, grid=grid, mix=mix, out=out),
        "ours": lambda: local_style_mix(x, style_mean, style_std, grid=grid, mix=mix),
    }
    if compiled is not None:
        forward["compile"] = lambda: compiled(x, *ref_args)

    grad = torch.randn(x.shape, generator=gen).to(device)
    xg, sm, ss, mg = (t.clone().requires_grad_() for t in (x, style_mean, style_std, mix))
    leaves = (xg, sm, ss, mg)
    backward = {
        "copy": lambda: out.copy_(x),
        "eager": _forward_backward(
            lambda: reference.local_style_mix(xg, sm, ss, (grid, grid), mg[:, :, None, None]), leaves, grad
        ),
        "ours": _forward_backward(lambda: local_style_mix(xg, sm, ss, grid=grid, mix=mg), leaves, grad),
    }
    if compiled is not None:
        backward["compile"] = _forward_backward(
            lambda: compiled(xg, sm, ss, (grid, grid), mg[:, :, None, None]), leaves, grad
        )
    shape = str(tuple(x.shape))
    return [
        Case("style_mix", f"{label} forward", shape, 2 * nbytes, forward),
        # ideal traffic: forward reads x and writes y; backward reads x and dy and writes dx
        Case("style_mix", f"{label} forward+backward", shape, 5 * nbytes, backward),
    ]


def famix_step_cases(device: torch.device, quick: bool, compile_baseline: bool) -> list[Case]:
    """One FAMix training step's augmentation for a batch of 8: dominant classes of 768x768 label maps, a style per
    patch drawn from the bank, patch statistics, mixing, ReLU. "public" is the algorithm as FAMix writes it
    (Python loops, torch.mode per patch, full-resolution maps built on the CPU and copied to the device)."""
    import random

    from styleda_fast.class_stats import patch_dominant_class
    from styleda_fast.compat.famix import CITYSCAPES_NAMES, transfer_fast
    from styleda_fast.reference_public import famix_step_public
    from styleda_fast.style_bank import StyleBank

    B, C, size = (2, 32, 48) if quick else (8, 256, 192)
    gen = torch.Generator().manual_seed(0)
    features = (torch.randn(B, C, size, size, generator=gen) * 2 + 1).to(device)
    blocks = torch.randint(0, 19, (B, 12, 12), generator=gen)
    blocks[torch.rand(B, 12, 12, generator=gen) < 0.1] = 255
    labels = blocks.repeat_interleave(size * 4 // 12, 1).repeat_interleave(size * 4 // 12, 2)  # spatially coherent
    styles_per_class = 50
    class_ids = torch.arange(20).repeat_interleave(styles_per_class)
    class_ids[class_ids == 19] = 255
    bank_mean = torch.randn(len(class_ids), C, generator=gen)
    bank_std = torch.rand(len(class_ids), C, generator=gen) + 0.5
    names = [*CITYSCAPES_NAMES, "255"]
    saved_params = {f"{n}_{k}": [] for n in names for k in ("mu", "std")}
    for row, c in enumerate(class_ids.tolist()):
        name = "255" if c == 255 else CITYSCAPES_NAMES[c]
        saved_params[name + "_mu"].append(bank_mean[row].view(C, 1, 1))
        saved_params[name + "_std"].append(bank_std[row].view(C, 1, 1))
    bank = StyleBank(C, device=device)
    bank.add(bank_mean.to(device), bank_std.to(device), class_ids.to(device))
    s = torch.distributions.Beta(0.1, 0.1).sample((B, C, 1, 1)).to(device)
    labels_dev = labels.to(device)
    out = torch.empty_like(features)
    rng = random.Random(0)
    sampler = torch.Generator(device=device).manual_seed(0)

    def ours():
        return transfer_fast(features, patch_dominant_class(labels_dev, 3), bank, s, generator=sampler)

    providers = {
        "copy": lambda: out.copy_(features),
        "public": lambda: famix_step_public(features, labels, saved_params, s, CITYSCAPES_NAMES, rng),
        "ours": ours,
    }
    nbytes = features.numel() * features.element_size()
    return [Case("famix_step", "famix step augmentation", str(tuple(features.shape)), 2 * nbytes, providers)]


CASE_FAMILIES: dict[str, Callable[[torch.device, bool, bool], list[Case]]] = {
    "style_mix": style_mix_cases,
    "famix_step": famix_step_cases,
}


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
        baseline = "eager" if "eager" in times else ("public" if "public" in times else None)
        for provider, ms in times.items():
            rows.append(
                {
                    "family": case.family,
                    "case": case.name,
                    "shape": case.shape,
                    "provider": provider,
                    "ms": ms,
                    "x_copy": ms / floor if floor else None,
                    "speedup_vs_eager": times[baseline] / ms if baseline else None,
                    "speedup_vs_compile": times["compile"] / ms if "compile" in times else None,
                    "GB/s": case.bytes_moved / (ms * 1e-3) / 1e9,
                }
            )
        log(format_table([r for r in rows if r["case"] == case.name and r["family"] == case.family]))
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    header = (
        f"{'case':28} {'provider':12} {'ms':>9} {'x copy':>7} {'vs eager/public':>15} {'vs compile':>10} {'GB/s':>7}"
    )
    lines = [header] if rows else []
    for r in rows:
        lines.append(
            f"{r['case']:28} {r['provider']:12} {r['ms']:9.2f} {fmt(r['x_copy'], '7.2f')} "
            f"{fmt(r['speedup_vs_eager'], '15.2f')} {fmt(r['speedup_vs_compile'], '10.2f')} {r['GB/s']:7.1f}"
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


def run(
    device: str | None, out_dir: str, quick: bool, compile_baseline: bool, families: list[str] | None
) -> list[dict]:
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
        try:
            cases = make_cases(dev, quick, compile_baseline)
        except ImportError as exc:  # e.g. the mining family needs open_clip (pip install "styleda_fast[mining]")
            print(f"skipping family {name}: {exc}")
            continue
        rows += run_cases(cases, dev, budget_s=0.3 if quick else 1.5)
    (out / "bench.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1))
    plot(rows, out / "bench.png", f"styleda_fast on {info.get('gpu') or info['cpu']}, {info['date'][:10]}")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return rows


CASE_FAMILIES["text"] = text_cases  # the text family (styleda_fast/bench_text.py)
CASE_FAMILIES["class_stats"] = class_stats_cases  # the class-statistics family (styleda_fast/bench_class_stats.py)


def _mining_cases(device, quick, compile_baseline):
    from styleda_fast.bench_mining import mining_cases

    return mining_cases(device, quick, compile_baseline)


CASE_FAMILIES["mining"] = _mining_cases  # styles per second of style mining (styleda_fast/bench_mining.py)
