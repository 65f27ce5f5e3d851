"""Class statistics (``python -m pytest benchmarks/test_bench_class_stats.py --benchmark-only``): dominant class of
8 int64 768x768 label maps (grid 3) against FAMix's per-patch ``torch.mode`` loop; ``class_mean_std`` on
(8, 256, 192, 192) with 19 classes against ``y.copy_(x)``, the eager reference and ``torch.compile`` of it; bank
sampling of 8 x 9 styles from 10,000 against FAMix's ``random.choice`` loop. The cases and baselines come from
``styleda_fast.bench_class_stats``, which imports them from ``styleda_fast.reference_class_stats`` (the tests'
references). Set STYLEDA_BENCH_QUICK=1 for small shapes."""

import pytest
from conftest import CaseTable, run_provider

from styleda_fast.bench_class_stats import class_stats_cases

CASES = CaseTable(class_stats_cases)


@pytest.mark.parametrize("provider", ["copy", "eager", "compile", "ours"])
@pytest.mark.parametrize("case", ["dominant class grid 3", "class_mean_std 19 classes", "bank sampling 8x9"])
def test_class_stats(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
