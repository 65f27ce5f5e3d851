"""Text family under pytest-benchmark: `python -m pytest benchmarks/test_bench_text.py --benchmark-only`.

Noisy text projection (forward) and CLIP cosine loss (forward + backward) for K in {19, 380, 10000}, D = 1024, and
the noisy synthesized features of style mining; providers: copy (floor), eager recipe, torch.compile of it, ours.
The cases and baselines come from styleda_fast.bench_text, which imports the plain-PyTorch references the tests use.
Set STYLEDA_BENCH_QUICK=1 for small shapes.
"""

import pytest
from conftest import QUICK, CaseTable, run_provider

from styleda_fast.bench_text import text_cases

CASES = CaseTable(text_cases)
_KS = (19, 380) if QUICK else (19, 380, 10000)
_NAMES = [f"noisy text K={k}" for k in _KS] + [f"cosine loss K={k} fwd+bwd" for k in _KS] + ["noisy features fwd+bwd"]


@pytest.mark.parametrize("provider", ["copy", "eager", "compile", "ours"])
@pytest.mark.parametrize("case", _NAMES)
def test_text(benchmark, case, provider):
    run_provider(benchmark, CASES, case, provider)
