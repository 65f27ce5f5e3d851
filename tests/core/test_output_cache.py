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

from styleda_fast import backends, grid_as_tokens, local_style_mix, tokens_as_grid, use_backend
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
    """Under torch's fill_uninitialized_memory, a cached buffer comes back as NaN like at::empty's memory where the
    output's elements go; the prefix rows of a token grid's output, which no kernel writes, are zero."""
    B, prefix, h, w, C = 2, 3, 40, 40, 700  # 9.3 MB of float32 with the prefix rows
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # the second output reuses the first's buffer
        tokens = torch.randn(B, prefix + h * w, C, generator=gen)
        y = torch.ops.styleda_fast.empty_cached_like(tokens_as_grid(tokens, h, w, prefix))
        assert y.stride() == (C * h * w, h * w, w, 1)  # empty_cached_like: no gaps, all NaN
        assert torch.isnan(y).all()
        del y
        with use_backend("cpp"):
            y = local_style_mix(
                tokens_as_grid(tokens, h, w, prefix),
                tokens.new_zeros(B, C),
                tokens.new_ones(B, C),
                grid=1,
                activation=None,
            )
        styled = grid_as_tokens(y)
        assert torch.equal(styled[:, :prefix], torch.zeros_like(styled[:, :prefix]))
        assert torch.isfinite(styled[:, prefix:]).all()
        del y, styled


@pytest.mark.parametrize("size,backend", [("cached", "cpp"), ("small", "cpp"), ("small", "triton")])
def test_fresh_token_outputs_never_show_an_earlier_tensors_data(size, backend, poison_fresh_memory):
    """Issue 22 item 14: grid_as_tokens(y) of a fresh output showed a freed tensor's values (1234.5) in its prefix
    rows through the cache (and through malloc for small outputs). The prefix rows of a fresh output are zero."""
    B, prefix, h, w, C = (2, 3, 40, 40, 700) if size == "cached" else (2, 2, 5, 4, 6)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(B, prefix + h * w, C, generator=gen)
    mean, std = torch.randn(B, C, generator=gen), torch.rand(B, C, generator=gen) + 0.5
    if not backends()[backend].available:
        pytest.skip(backends()[backend].detail)
    with use_backend(backend):
        for _ in range(3):  # each output's buffer filled with the sentinel, freed, then taken by the next
            y = local_style_mix(tokens_as_grid(tokens, h, w, prefix), mean, std, grid=1, activation=None)
            styled = grid_as_tokens(y)
            assert torch.equal(styled[:, :prefix], torch.zeros_like(styled[:, :prefix]))
            expected = reference.local_style_mix(
                tokens_as_grid(tokens, h, w, prefix).double(), mean.double()[..., None, None],
                std.double()[..., None, None], (1, 1), None, None, 1e-5,
            )  # fmt: skip
            assert_close(y, expected, TOLERANCE[torch.float32])
            styled.fill_(1234.5)
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


# ----------------------------------------------------------------------------- the limit, allocation failures


DEFAULT_LIMIT = 2048 << 20
LIMIT_VARIABLE = "STYLEDA_FAST_OUTPUT_CACHE_MB"


def _process_bound() -> int | None:
    """The smaller of this process's cgroup memory limit and RLIMIT_AS, read here independently of the C++ code."""
    import resource

    bounds = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        bounds.append(soft)
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            patterns = ["/sys/fs/cgroup{}/memory.max", "/sys/fs/cgroup/unified{}/memory.max"]
        elif "memory" in controllers.split(","):
            patterns = ["/sys/fs/cgroup/memory{}/memory.limit_in_bytes"]
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = "".join("/" + p for p in parts[:depth])
            for pattern in patterns:
                try:
                    value = open(pattern.format(folder)).read().split()[0]
                except (OSError, IndexError):
                    continue
                if value.isdigit():
                    bounds.append(int(value))
    return min(bounds) if bounds else None


def _expected_limit(configured: int) -> int:
    bound = _process_bound()
    return configured if bound is None else min(configured, bound // 4)


def _limit_in_subprocess(value: str | None) -> tuple[int, str, bool]:
    """(output_cache_limit(), stderr, cpu_allocator_wrapped()) of a process whose STYLEDA_FAST_OUTPUT_CACHE_MB is
    ``value`` (None: unset), after two cached outputs and a release (each could warn)."""
    env = {k: v for k, v in os.environ.items() if k != LIMIT_VARIABLE}
    if value is not None:
        env[LIMIT_VARIABLE] = value
    script = textwrap.dedent(f"""
        import torch
        from styleda_fast import local_style_mix
        from styleda_fast.memory import cpu_allocator_wrapped, output_cache_limit, release_output_cache
        x = torch.randn({SHAPE}); mean = torch.zeros({SHAPE[:2]}); std = torch.ones({SHAPE[:2]})
        for _ in range(2):
            y = local_style_mix(x, mean, std, grid=1); del y
        release_output_cache()
        print(output_cache_limit(), int(cpu_allocator_wrapped()))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    limit, wrapped = done.stdout.split()[-2:]
    return int(limit), done.stderr, wrapped == "1"


@pytest.mark.parametrize(
    ("value", "megabytes"),
    [(None, 2048), ("", 2048), ("0", 0), ("10", 10), ("1048576", 1048576), (" 100\t", 100), ("007", 7)],
    ids=["unset", "empty", "zero", "ten", "maximum", "spaces", "leading-zeros"],
)
def test_the_limit_variable_accepts_plain_decimal_megabytes(value, megabytes):
    """Issue 22 item 6: digits only (spaces or tabs around them allowed), 0 to 1048576; no warning."""
    limit, stderr, wrapped = _limit_in_subprocess(value)
    assert limit == _expected_limit(megabytes << 20)
    assert LIMIT_VARIABLE not in stderr
    assert wrapped == (megabytes != 0)  # the cache off: PyTorch's CPU allocator is left as it is


@pytest.mark.parametrize(
    "value", ["-1", "17592186044416", "1048577", "abc", "1e3", "0x10", "+5", "10MB", "1 0", " ", "٣"]
)
def test_a_bad_limit_variable_warns_once_and_uses_the_default(value):
    """Issue 22 item 6: -1 meant unlimited, 17592186044416 wrapped to 0 (off), the rest silently gave the default.
    Each now warns once (the variable and its value named) and the documented default 2048 MB applies."""
    limit, stderr, wrapped = _limit_in_subprocess(value)
    assert limit == _expected_limit(DEFAULT_LIMIT)
    assert wrapped
    assert stderr.count(LIMIT_VARIABLE) == 1, stderr
    assert "2048 MB" in stderr


def _memory_script(body: str) -> str:
    """A script that fills the cache with four idle 64 MB buffers, then lowers RLIMIT_AS to 96 MB above the address
    space in use: anything larger than that only fits once the idle buffers are freed."""
    return textwrap.dedent("""
        import resource
        import torch
        torch.set_num_threads(1)  # no new threads (and malloc arenas) after the limit is set
        from styleda_fast import local_style_mix
        from styleda_fast.memory import output_cache_bytes, release_output_cache
        MB = 1 << 20
        x = torch.randn(1, 64, 512, 512)  # 64 MB
        mean, std = torch.randn(1, 64), torch.rand(1, 64) + 0.5
        big = torch.randn(1, 64, 800, 800)  # 156 MB: its output needs a new buffer
        outputs = [local_style_mix(x, mean, std, grid=1, activation=None) for _ in range(4)]
        del outputs
        assert output_cache_bytes() == 4 * 64 * MB, output_cache_bytes()
        in_use = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 96 * MB, hard))
    """) + textwrap.dedent(body)


def _run_memory_script(body: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != LIMIT_VARIABLE}
    done = subprocess.run(
        [sys.executable, "-c", _memory_script(body)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_plain_tensor_succeeds_once_idle_buffers_are_released():
    """Issue 22 item 3: with 256 MB of idle cached buffers and 96 MB of address space left, a plain 160 MB tensor
    failed with "can't allocate memory"; now the failed allocation frees the idle buffers and is tried again."""
    out = _run_memory_script("""
        t = torch.ones(160 * MB // 4)
        print(output_cache_bytes(), float(t.sum()))
    """)
    cached, total = out.split()
    assert int(cached) == 0 and float(total) == 160 * 2**20 // 4


def test_a_new_output_succeeds_once_idle_buffers_are_released():
    """Issue 22 item 3: a new output (156 MB, no cached buffer of its size) under the same limit: the failed
    allocation frees the idle buffers and is tried again; its values are right."""
    out = _run_memory_script("""
        y = local_style_mix(big, mean, std, grid=1, activation=None)
        cached = output_cache_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        from styleda_fast.ops.style_mix import reference
        m, s = mean.double()[..., None, None], std.double()[..., None, None]
        want = reference.local_style_mix(big.double(), m, s, (1, 1), None, None, 1e-5)
        print(cached, float((y.double() - want).abs().max()))
    """)
    cached, error = out.split()
    assert int(cached) == 0 and float(error) < 1e-4


def test_the_cache_keeps_at_most_a_quarter_of_the_address_space_limit():
    """Issue 22 item 3: the limit follows RLIMIT_AS (read again when a buffer is freed), not only the 2 GB default."""
    script = textwrap.dedent(f"""
        import resource
        import torch
        from styleda_fast.memory import output_cache_limit
        from styleda_fast import local_style_mix
        x = torch.randn({SHAPE}); mean = torch.zeros({SHAPE[:2]}); std = torch.ones({SHAPE[:2]})
        before = output_cache_limit()
        in_use = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        soft = in_use + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
        print(before, output_cache_limit(), soft)
    """)
    env = {k: v for k, v in os.environ.items() if k != LIMIT_VARIABLE}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after, soft = map(int, done.stdout.split())
    assert before == _expected_limit(DEFAULT_LIMIT)
    assert after == min(before, soft // 4) and after < DEFAULT_LIMIT


def test_without_the_extension_the_cache_functions_return_zero():
    """Issue 22 item 1 (memory part): with styleda_fast._C blocked, output_cache_bytes() and release_output_cache()
    raised AttributeError; there is no cache then, and they say 0."""
    script = textwrap.dedent("""
        import importlib.abc
        import sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "styleda_fast._C":
                    raise ImportError("blocked by the test")
                return None

        sys.meta_path.insert(0, Block())
        from styleda_fast.core.extension import CPP_PROBLEM
        from styleda_fast.memory import output_cache_bytes, output_cache_limit, release_output_cache
        assert CPP_PROBLEM is not None and "styleda_fast._C" not in sys.modules
        print(output_cache_bytes(), release_output_cache(), output_cache_limit())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "0"]
