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


# Tests left out of the development loop `pytest -m "not slow"` (the full suite and CI run them), by node id as
# `pytest --durations` prints it: the slowest tests of a `--durations=30` run on a 2-core machine, kept here so
# that marking them does not touch the test files. A test that takes long marks itself `@pytest.mark.slow`.
SLOW_TESTS: frozenset[str] = frozenset()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    seen = {item.nodeid for item in items if item.nodeid in SLOW_TESTS}
    for item in items:
        if item.nodeid in seen:
            item.add_marker(pytest.mark.slow)
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
    if whole_suite and SLOW_TESTS - seen:  # a renamed or removed test: its entry here would be silently dead
        missing = sorted(SLOW_TESTS - seen)
        config.issue_config_time_warning(pytest.PytestWarning(f"SLOW_TESTS names unknown tests: {missing}"), 2)
