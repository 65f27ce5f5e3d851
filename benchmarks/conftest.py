"""pytest-benchmark runs: `python -m pytest benchmarks --benchmark-only` (CPU, or CUDA when present).

The cases and their baselines come from the family modules of styleda_fast.bench (the ones `styleda-fast bench`
runs), which check at setup that every baseline computes ours' numbers. STYLEDA_BENCH_QUICK=1: small shapes;
STYLEDA_BENCH_FULL=1: also the slow general references (`styleda-fast bench --full`).
"""

import os

import pytest
import torch

QUICK = os.environ.get("STYLEDA_BENCH_QUICK") == "1"
FULL = os.environ.get("STYLEDA_BENCH_FULL") == "1"


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CaseTable:
    """The cases of one benchmark family, built on first use (they allocate large tensors)."""

    def __init__(self, make_cases):
        self.make_cases, self.cases = make_cases, {}

    def __getitem__(self, name):
        if not self.cases:
            for case in self.make_cases(bench_device(), quick=QUICK, full=FULL, compile_baseline=True):
                self.cases[case.name] = case
        if name not in self.cases:
            pytest.skip(f"{name} is timed only with STYLEDA_BENCH_FULL=1 (styleda-fast bench --full)")
        return self.cases[name]


def run_provider(benchmark, table: CaseTable, case: str, provider: str) -> None:
    """Time one provider of one case with pytest-benchmark (after a warm-up that also compiles)."""
    c = table[case]
    if provider not in c.providers:
        pytest.skip(f"{provider} is not a provider of {case}")
    fn = c.providers[provider]
    fn()
    if bench_device().type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()

        benchmark(run)
    else:
        benchmark(fn)
    benchmark.extra_info.update({"case": case, "provider": provider, "shape": c.shape, "bytes": c.bytes_moved})
