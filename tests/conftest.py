"""Test set-up: run the Triton kernels through the interpreter on machines without a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported; the Triton backend then runs on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poison_fresh_memory():
    """Fresh tensors from torch.empty come filled with NaN (integers: their largest value) while the test runs."""
    previous = torch.utils.deterministic.fill_uninitialized_memory, torch.are_deterministic_algorithms_enabled()
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.utils.deterministic.fill_uninitialized_memory = previous[0]
    torch.use_deterministic_algorithms(previous[1])
