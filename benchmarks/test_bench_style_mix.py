"""local_style_mix at the FAMix shape (8, 256, 192, 192): FAMix (grid 3, style per patch, Beta mixing) and PODA
(global), forward and forward+backward; providers: copy (memory floor), eager reference, torch.compile of the
reference, and ours. Set STYLEDA_BENCH_QUICK=1 for small shapes."""

import pytest
from conftest import CaseTable, run_provider

from styleda_fast.bench import style_mix_cases

CASES = CaseTable(style_mix_cases)


@pytest.mark.parametrize("provider", ["copy", "eager", "compile", "ours", "ours (out=)"])
@pytest.mark.parametrize("case", ["famix forward", "poda forward", "famix forward+backward", "poda forward+backward"])
def test_style_mix(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
