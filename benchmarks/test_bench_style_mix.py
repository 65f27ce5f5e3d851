"""local_style_mix at the FAMix shape (8, 256, 192, 192): FAMix (grid 3, style per patch, Beta mixing) and PODA
(global), forward and forward+backward; providers: copy (memory floor), ours, the public code, the fastest plain
PyTorch (a reshape, "eager") and torch.compile of it; STYLEDA_BENCH_FULL=1 adds the index-add reference ("reference",
10-17 s per call on 2 CPU cores). Set STYLEDA_BENCH_QUICK=1 for small shapes. The cases come from
styleda_fast.bench.style_mix (the ones `styleda-fast bench` times)."""

import pytest
from conftest import CaseTable, bench_device, run_provider

from styleda_fast.bench.style_mix import cases, check_baselines

CASES = CaseTable(cases)
PROVIDERS = ["copy", "clone", "ours", "ours (out=)", "compile", "eager", "public", "reference"]


def test_baselines_compute_ours_numbers():
    """The reshape baseline, the public code and the reference agree with ours (runs without --benchmark-only)."""
    check_baselines(bench_device())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ["famix forward", "poda forward", "famix forward+backward", "poda forward+backward"])
def test_style_mix(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
