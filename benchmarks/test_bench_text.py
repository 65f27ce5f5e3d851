"""Text family under pytest-benchmark: `python -m pytest benchmarks/test_bench_text.py --benchmark-only`.

Noisy text projection (forward) and CLIP cosine loss (forward + backward) for K in {19, 10000} (STYLEDA_BENCH_FULL=1:
also 380), D = 1024, and the noisy synthesized features of style mining; providers: copy (floor), ours, the eager
recipe and torch.compile of it. The cases come from styleda_fast.bench.text. Set STYLEDA_BENCH_QUICK=1 for small
shapes (K in {19, 380}).
"""

import pytest
from conftest import FULL, QUICK, CaseTable, bench_device, run_provider

from styleda_fast.bench.text import cases, check_baselines

CASES = CaseTable(cases)
_KS = (19, 380) if QUICK else (19, 380, 10000) if FULL else (19, 10000)
_NAMES = [f"noisy text K={k}" for k in _KS] + [f"cosine loss K={k} fwd+bwd" for k in _KS] + ["noisy features fwd+bwd"]


def test_baselines_compute_ours_numbers():
    check_baselines(bench_device())


@pytest.mark.parametrize("provider", ["copy", "ours", "eager", "compile"])
@pytest.mark.parametrize("case", _NAMES)
def test_text(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
