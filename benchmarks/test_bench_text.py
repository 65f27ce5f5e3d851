"""Text family under pytest-benchmark: `python -m pytest benchmarks/test_bench_text.py --benchmark-only`.

Noisy text projection (forward) and CLIP cosine loss (forward + backward) for K in {19, 380, 10000}, D = 1024, and
the noisy synthesized features of style mining; providers: copy (floor), eager recipe, torch.compile of it, ours.
The cases and baselines come from styleda_fast.bench_text, which imports the plain-PyTorch references the tests use.
Set STYLEDA_BENCH_QUICK=1 for small shapes.
"""

import os

import pytest
import torch

from styleda_fast.bench_text import text_cases

_QUICK = os.environ.get("STYLEDA_BENCH_QUICK") == "1"
_CASES = {}
_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_KS = (19, 380) if _QUICK else (19, 380, 10000)
_NAMES = [f"noisy text K={k}" for k in _KS] + [f"cosine loss K={k} fwd+bwd" for k in _KS] + ["noisy features fwd+bwd"]


def _case(name):
    if not _CASES:
        for case in text_cases(_DEVICE, quick=_QUICK, compile_baseline=True):
            _CASES[case.name] = case
    return _CASES[name]


@pytest.mark.parametrize("provider", ["copy", "eager", "compile", "ours"])
@pytest.mark.parametrize("case", _NAMES)
def test_text(benchmark, case, provider):
    c = _case(case)
    if provider not in c.providers:
        pytest.skip(f"{provider} is not a provider of {case}")
    fn = c.providers[provider]
    fn()  # warm-up (and compilation for the torch.compile baseline)
    if _DEVICE.type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()

        benchmark(run)
    else:
        benchmark(fn)
    benchmark.extra_info.update({"case": case, "provider": provider, "shape": c.shape, "bytes": c.bytes_moved})
