"""The CPU kernels' cache of large output buffers: freed outputs are reused by the next output of the same size
(no page faults in a training loop), bounded, released on request, and never handed out while a tensor uses them.

Shapes here are just above the 8 MB from which outputs are cached."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import TOLERANCE, assert_close

from styleda_fast import grid_as_tokens, local_style_mix, tokens_as_grid, use_backend
from styleda_fast.memory import output_cache_bytes, release_output_cache
from styleda_fast.ops.style_mix import reference

SHAPE = (2, 64, 130, 129)  # 8.6 MB of float32: a cached size (buffers are whole 2 MB pages: 10 MB)
BUFFER_BYTES = 10 << 20


def _inputs(seed: int, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2 + 1
    mean = torch.randn(shape[:2], generator=gen)
    std = torch.rand(shape[:2], generator=gen) + 0.5
    return x, mean, std


@pytest.fixture(autouse=True)
def empty_cache():
    release_output_cache()
    yield
    release_output_cache()


def test_a_freed_output_is_reused_and_fully_rewritten():
    x, mean, std = _inputs(0)
    with use_backend("cpp"):
        y = local_style_mix(x, mean, std, grid=3)
        address = y.data_ptr()
        assert output_cache_bytes() == 0
        del y
        assert output_cache_bytes() == BUFFER_BYTES
        x2, mean2, std2 = _inputs(1)
        y2 = local_style_mix(x2, mean2, std2, grid=(2, 5), activation=None)
    assert y2.data_ptr() == address and output_cache_bytes() == 0
    expected = reference.local_style_mix(
        x2.double(), mean2.double()[..., None, None], std2.double()[..., None, None], (2, 5), None, None, 1e-5
    )
    assert_close(y2, expected, TOLERANCE[torch.float32])


def test_a_buffer_in_use_is_never_handed_out():
    x, mean, std = _inputs(2)
    with use_backend("cpp"):
        y = local_style_mix(x, mean, std, grid=1)
        view = y[1:]  # keeps the buffer alive after y is gone
        del y
        assert output_cache_bytes() == 0
        before = view.clone()
        other = local_style_mix(x * 3, mean, std, grid=1)
    assert other.data_ptr() != view.data_ptr() - view.storage_offset() * view.element_size()
    assert torch.equal(view, before)
    del view, other
    assert output_cache_bytes() == 2 * BUFFER_BYTES
    assert release_output_cache() == 2 * BUFFER_BYTES and output_cache_bytes() == 0


def test_gradients_use_the_cache_too():
    x, mean, std = _inputs(3)
    x.requires_grad_()
    with use_backend("cpp"):
        local_style_mix(x, mean, std, grid=3).sum().backward()
    assert output_cache_bytes() == BUFFER_BYTES  # the forward output, freed with the graph
    grad = x.grad.clone()
    x.grad = None
    assert output_cache_bytes() == 2 * BUFFER_BYTES  # and the gradient
    x64 = x.detach().double().requires_grad_()
    reference.local_style_mix(
        x64, mean.double()[..., None, None], std.double()[..., None, None], (3, 3), None, "relu", 1e-5
    ).sum().backward()
    assert_close(grad, x64.grad, TOLERANCE[torch.float32])


@pytest.mark.usefixtures("poison_fresh_memory")
def test_reused_buffers_are_poisoned_like_fresh_memory():
    """Under torch's fill_uninitialized_memory, a cached buffer comes back as NaN like at::empty's memory: the
    unwritten prefix rows of a token grid's output show it."""
    B, prefix, h, w, C = 2, 3, 40, 40, 700  # 9.3 MB of float32 with the prefix rows
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # the second output reuses the first's buffer
        tokens = torch.randn(B, prefix + h * w, C, generator=gen)
        with use_backend("cpp"):
            y = local_style_mix(
                tokens_as_grid(tokens, h, w, prefix),
                tokens.new_zeros(B, C),
                tokens.new_ones(B, C),
                grid=1,
                activation=None,
            )
        styled = grid_as_tokens(y)
        assert torch.isnan(styled[:, :prefix]).all() and torch.isfinite(styled[:, prefix:]).all()
        del y, styled


def _run(code: str, megabytes: str) -> str:
    env = dict(os.environ, STYLEDA_FAST_OUTPUT_CACHE_MB=megabytes)
    script = textwrap.dedent(f"""
        import torch
        from styleda_fast import local_style_mix
        from styleda_fast.memory import output_cache_bytes
        x = torch.randn({SHAPE}); mean = torch.zeros({SHAPE[:2]}); std = torch.ones({SHAPE[:2]})
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout


def test_the_limit_bounds_what_is_kept():
    code = """
        a = local_style_mix(x, mean, std, grid=1); b = local_style_mix(x, mean, std, grid=1)
        del a; print(output_cache_bytes()); del b; print(output_cache_bytes())
    """
    assert _run(code, "10").split() == [str(BUFFER_BYTES)] * 2  # room for one: the older goes
    assert _run(code, "0").split() == ["0", "0"]  # off
    assert _run(code, "").split() == [str(BUFFER_BYTES), str(2 * BUFFER_BYTES)]  # the default keeps both


def test_forked_children_use_the_cache_while_the_parent_allocates():
    """DataLoader workers fork the process: a child must find the cache's lock free even if a thread of the parent
    was allocating at that moment (the lock is held across fork and released on both sides). A race: a run without
    that handling hangs only when a fork lands inside the lock, so this test may miss a regression."""
    import multiprocessing
    import threading

    x, mean, std = _inputs(7)
    stop = threading.Event()

    def allocate():
        while not stop.is_set():
            local_style_mix(x, mean, std, grid=1)

    worker = threading.Thread(target=allocate)
    worker.start()
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as pool:
            results = pool.starmap_async(_child_mix, [(seed,) for seed in range(6)]).get(timeout=120)
    finally:
        stop.set()
        worker.join()
    for seed, value in zip(range(6), results):
        xs, ms, ss = _inputs(seed)
        assert value == pytest.approx(float(local_style_mix(xs, ms, ss, grid=1).double().sum()), rel=1e-6)


def _child_mix(seed: int) -> float:
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's thread pool does not survive a fork
    xs, ms, ss = _inputs(seed)
    return float(local_style_mix(xs, ms, ss, grid=1).double().sum())
