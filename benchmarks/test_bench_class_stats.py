"""Class statistics (``python -m pytest benchmarks/test_bench_class_stats.py --benchmark-only``): dominant class of
8 int64 768x768 label maps (grid 3) against FAMix's per-patch ``torch.mode`` loop and a vectorized histogram;
``class_mean_std`` on (8, 256, 192, 192) with 19 classes against ``y.copy_(x)``, one-hot matrix products ("eager")
and ``torch.compile`` of them (STYLEDA_BENCH_FULL=1 adds the index-add reference); bank sampling of 8 x 9 styles
from 10,000 against FAMix's ``random.choice`` loop. The cases come from ``styleda_fast.bench.class_stats``. Set
STYLEDA_BENCH_QUICK=1 for small shapes."""

import pytest
from conftest import CaseTable, bench_device, run_provider

from styleda_fast.bench.class_stats import cases, check_baselines

CASES = CaseTable(cases)


def test_baselines_compute_ours_numbers():
    check_baselines(bench_device())


@pytest.mark.parametrize("provider", ["copy", "ours", "eager", "compile", "public", "reference"])
@pytest.mark.parametrize("case", ["dominant class grid 3", "class_mean_std 19 classes", "bank sampling 8x9"])
def test_class_stats(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
