"""pytest-benchmark runs: `python -m pytest benchmarks --benchmark-only` (CPU, or CUDA when present).

The cases and their baselines come from styleda_fast.bench, which imports the plain-PyTorch references that the
tests also use, so benchmarks and tests never measure different things.
"""

import torch


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
