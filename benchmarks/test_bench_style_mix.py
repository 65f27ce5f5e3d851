"""local_style_mix at the FAMix shape (8, 256, 192, 192): FAMix (grid 3, style per patch, Beta mixing) and PODA
(global), forward and forward+backward; providers: copy (memory floor), eager reference, torch.compile of the
reference, and ours. Set STYLEDA_BENCH_QUICK=1 for small shapes."""

import os

import pytest
import torch
from conftest import bench_device

from styleda_fast.bench import style_mix_cases

_QUICK = os.environ.get("STYLEDA_BENCH_QUICK") == "1"
_CASES = {}


def _case(name):
    if not _CASES:
        for case in style_mix_cases(bench_device(), quick=_QUICK, compile_baseline=True):
            _CASES[case.name] = case
    return _CASES[name]


@pytest.mark.parametrize("provider", ["copy", "eager", "compile", "ours", "ours (out=)"])
@pytest.mark.parametrize("case", ["famix forward", "poda forward", "famix forward+backward", "poda forward+backward"])
def test_style_mix(benchmark, case, provider):
    c = _case(case)
    if provider not in c.providers:
        pytest.skip(f"{provider} is not a provider of {case}")
    fn = c.providers[provider]
    fn()  # warm-up (and compilation for the torch.compile baseline)
    if bench_device().type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()

        benchmark(run)
    else:
        benchmark(fn)
    benchmark.extra_info.update({"case": case, "provider": provider, "shape": c.shape, "bytes": c.bytes_moved})
