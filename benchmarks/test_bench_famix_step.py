"""One FAMix training step's augmentation (batch 8, 768x768 label maps, a bank of 20 x 50 styles): ours
(patch_dominant_class + StyleBank + local_style_mix) against the public algorithm and a copy of the features. The
case comes from styleda_fast.bench.famix_step. Set STYLEDA_BENCH_QUICK=1 for small shapes."""

import pytest
from conftest import CaseTable, run_provider

from styleda_fast.bench.famix_step import cases

CASES = CaseTable(cases)


@pytest.mark.parametrize("provider", ["copy", "ours", "public"])
def test_famix_step(benchmark, provider):
    run_provider(benchmark, CASES, "famix step augmentation", provider)
