"""Regression tests of the operators from the third adversarial run (issue 22 item 16): leftover exception types and
backends that disagreed on edge cases."""

from __future__ import annotations

import pytest
import torch
from helpers import available_backends, backend_device

from styleda_fast import class_mean_std, labels_to_size, noisy_text_projection, use_backend
from styleda_fast.core.backend import run_op
from styleda_fast.core.library import interpreted, operators
from styleda_fast.ops.style_mix import _ops as style_mix_ops

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


@pytest.mark.parametrize("shape", [(1, 0, 4), (2, 4, 0)])
def test_labels_to_size_of_labels_without_pixels_is_a_value_error(shape):
    """``labels_to_size`` of a map with H = 0 raised a RuntimeError from index_select."""
    with pytest.raises(ValueError, match=r"\blabels\b"):
        labels_to_size(torch.zeros(shape, dtype=torch.long), (3, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noisy_text_projection_with_huge_samples_is_a_value_error_up_front(backend):
    """A ``samples`` whose output cannot fit raised an out-of-memory RuntimeError after trying to allocate it."""
    text = torch.randn(4, 1024, device=backend_device(backend))
    with use_backend(backend), pytest.raises(ValueError, match=r"\bsamples\b"):
        noisy_text_projection(text, 0.1, samples=2**31 - 1, seed=1)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_noisy_text_projection_operator_with_huge_samples_is_a_value_error(backend):
    text = torch.randn(4, 1024, device=backend_device(backend))
    call = torch.ops.styleda_fast.noisy_text_projection if backend == "cpp" else interpreted("noisy_text_projection")
    with pytest.raises(ValueError, match=r"\bsamples\b"):
        call(text, 0.1, 2**31 - 1, 1, 0)


def _grad_x_arguments(device, std_value):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=gen).to(device)
    tm, ts = torch.randn(2, 3, 2, 2, generator=gen).to(device), (torch.rand(2, 3, 2, 2, generator=gen) + 0.5).to(device)
    _, mean, std = run_op(style_mix_ops.LOCAL_STYLE_MIX, x, tm, ts, None, 2, 2, False, 1e-5)
    std = std.clone()
    std[0, 1, 1, 0] = std_value
    sums = [torch.randn(2, 3, 2, 2, generator=gen).to(device) for _ in range(4)]
    return (torch.randn(2, 3, 6, 6, generator=gen).to(device), x, mean, std, tm, ts, None, *sums, False)


@pytest.mark.parametrize("std_value", [0.0, float("nan")])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_local_style_mix_grad_x_with_zero_or_nan_std_is_non_finite_in_that_patch_only(backend, std_value):
    """Decided and documented (``ops/style_mix/_ops.py``): std values are not checked (a pass over the data and a
    device sync); a patch whose std is 0 or NaN gets a non-finite gradient, every other patch is exact."""
    with use_backend(backend):
        args = _grad_x_arguments(backend_device(backend), std_value)
        grad_x = run_op(style_mix_ops.LOCAL_STYLE_MIX_GRAD_X, *args).cpu()
    finite = torch.isfinite(grad_x)
    patch = (slice(0, 1), slice(1, 2), slice(3, 6), slice(0, 3))
    assert not finite[patch].any()
    finite[patch] = True
    assert finite.all()


@pytest.mark.parametrize("position", [0, 1, 2, 7])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_local_style_mix_grad_x_with_a_meta_tensor_among_cpu_tensors_is_a_value_error(backend, position):
    """A meta tensor among CPU tensors was accepted by a direct call (dispatched to the fake kernel)."""
    with use_backend(backend):
        args = list(_grad_x_arguments(backend_device(backend), 1.0))
    args[position] = args[position].to("meta")
    if backend == "cpp":
        call = torch.ops.styleda_fast.local_style_mix_grad_x
    else:
        call = operators()["local_style_mix_grad_x"].run_triton
    with pytest.raises(ValueError, match="devices"):
        call(*args)


@pytest.mark.parametrize("shape", [(2, 3, 0, 0), (2, 3, 0, 5), (1, 2, 4, 0)])
def test_class_mean_std_of_features_without_pixels_agrees_on_every_backend(shape):
    """Triton refused features with H = W = 0 while the C++ kernel accepted them: every backend returns every
    class absent (count 0, mean = std = 0)."""
    x = torch.randn(shape, dtype=torch.float64)
    labels = torch.zeros((shape[0], shape[2], shape[3]), dtype=torch.long)
    for backend in BACKENDS:
        device = backend_device(backend)
        with use_backend(backend):
            mean, std, count = class_mean_std(x.to(device), labels.to(device), 5)
        assert mean.shape == std.shape == (shape[0], 5, shape[1]) and count.shape == (shape[0], 5), backend
        assert not mean.any() and not std.any() and not count.any(), backend
