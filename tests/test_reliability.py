"""Regression tests for defects found by an adversarial review: aliasing through out=, second derivatives,
per-thread backends, backends that disagree on odd input, unusual strides, float64 mixing weights, bad arguments,
and direct operator calls with bad arguments."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import assert_close, available_backends, backend_device, random_labels

import styleda_fast
from styleda_fast import (
    class_mean_std,
    clip_cosine_loss,
    local_style_mix,
    noisy_text_projection,
    patch_dominant_class,
    patch_mean_std,
    use_backend,
)
from styleda_fast.core.backend import select_backend
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


# ----------------------------------------------------------------------------- second derivatives


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
    with use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda x, sm, ss, mix: local_style_mix(x, sm, ss, grid=2, mix=mix, activation=None), (x, sm, ss, mix)
        )
        assert torch.autograd.gradgradcheck(lambda x: patch_mean_std(x, (2, 3)), (x,))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_text_operators_refuse_a_second_derivative_clearly(backend):
    device = backend_device(backend)
    image = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    text = torch.randn(3, 8, dtype=torch.float64, device=device)
    with use_backend(backend):
        (g,) = torch.autograd.grad(clip_cosine_loss(image, text), image, create_graph=True)
        with pytest.raises(RuntimeError, match="clip_cosine_loss has no second derivative"):
            g.sum().backward()
        text_leaf = text.clone().requires_grad_()
        noisy = noisy_text_projection(text_leaf, 0.1, seed=1)
        (g,) = torch.autograd.grad((noisy * torch.randn_like(noisy)).sum(), text_leaf, create_graph=True)
        with pytest.raises(RuntimeError, match="noisy_text_projection has no second derivative"):
            g.sum().backward()
    # first derivatives keep working without create_graph
    with use_backend(backend):
        clip_cosine_loss(image, text).backward()
    assert image.grad is not None


# ----------------------------------------------------------------------------- backends per thread


def test_use_backend_is_per_thread_and_restores_exactly():
    inside, other_thread = threading.Event(), []
    release = threading.Event()

    def forced():
        with use_backend("reference"):
            inside.set()
            release.wait(10)

    def observer():
        inside.wait(10)
        other_thread.append(select_backend(torch.device("cpu")))
        release.set()

    threads = [threading.Thread(target=forced), threading.Thread(target=observer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    default = select_backend(torch.device("cpu"))
    assert other_thread == [default], "a use_backend block in one thread changed another thread's backend"
    # two overlapping blocks on two threads leave nothing forced
    barrier = threading.Barrier(2)

    def overlapping(name):
        with use_backend(name):
            barrier.wait(10)
        barrier.wait(10)

    threads = [threading.Thread(target=overlapping, args=(n,)) for n in ("reference", KERNEL_BACKENDS[0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert select_backend(torch.device("cpu")) == default


# ----------------------------------------------------------------------------- backends agree on odd input


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


def test_cosine_loss_of_empty_rows_is_refused_on_every_backend():
    for backend in BACKENDS:
        device = backend_device(backend)
        with use_backend(backend), pytest.raises(ValueError, match="D >= 1"):
            clip_cosine_loss(torch.randn(2, 0, device=device), torch.randn(2, 0, device=device))


def test_many_classes_agree_on_every_backend():
    labels = random_labels((1, 9, 9), num_classes=20000, ignore=-1, ignore_frac=0.1, seed=4)
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    results = {}
    for backend in BACKENDS:
        device = backend_device(backend)
        with use_backend(backend):
            results[backend] = (
                patch_dominant_class(labels.to(device), 3, num_classes=20000, ignore_index=-1).cpu(),
                [t.cpu() for t in class_mean_std(x.to(device), labels.to(device), 20000, ignore_index=-1)],
            )
    first = results[BACKENDS[0]]
    for backend, (dominant, stats) in results.items():
        assert torch.equal(dominant, first[0]), backend
        for a, b in zip(stats, first[1]):
            assert_close(a, b, 1e-12, f"{backend} class statistics")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_in_a_text_row_makes_the_whole_row_nan(backend):
    device = backend_device(backend)
    text = torch.randn(2, 16, device=device)
    text[0, 3] = float("nan")
    with use_backend(backend):
        out = noisy_text_projection(text, 0.1, samples=2, seed=5)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1]).all()


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: patch_dominant_class(torch.zeros(1, 4, 4, dtype=torch.long), 2, num_classes=2**40),
            ValueError,
            "num_classes",
        ),
        (
            lambda: patch_dominant_class(torch.zeros(1, 4, 4, dtype=torch.long), 2, ignore_index=2**63),
            ValueError,
            "ignore_index",
        ),
        (lambda: patch_mean_std(torch.randn(1, 1, 4, 4), 1, eps="1e-5"), TypeError, "eps"),
        (lambda: styleda_fast.labels_to_size(torch.zeros(1, 4, 4, dtype=torch.long), (2, 0)), ValueError, "size"),
        (lambda: styleda_fast.labels_to_size(torch.zeros(1, 4, 4, dtype=torch.long), (2, 2.0)), TypeError, "size"),
    ],
)
def test_bad_arguments_raise_the_rule_type(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_direct_operator_calls_with_bad_arguments_get_clear_errors(backend):
    """The registered operators are reachable without the public API; every backend checks their arguments."""
    from styleda_fast.core.library import operators

    def call(name, *args):
        if backend == "cpp":
            return getattr(torch.ops.styleda_fast, name)(*args)
        return operators()[name].run_triton(*args)

    x = torch.randn(2, 3, 8, 8)
    good = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="grid"):
        call("patch_mean_std", x, 9, 1, 1e-5)
    with pytest.raises(ValueError, match="target_mean"):
        call("local_style_mix", x, torch.zeros(2, 3, 3, 3), good, None, 2, 2, True, 1e-5)
    with pytest.raises(ValueError, match="target_std"):
        call("local_style_mix", x, good, good.double(), None, 2, 2, True, 1e-5)
    with pytest.raises(ValueError, match="out"):
        call("local_style_mix_into", x, good, good, None, 2, 2, True, 1e-5, torch.empty(2, 3, 8, 7))
    with pytest.raises(TypeError, match="labels"):
        call("patch_dominant_class", torch.zeros(1, 4, 4), 2, 2, 19, 255, True)
    with pytest.raises(ValueError, match="num_classes"):
        call("patch_dominant_class", torch.zeros(1, 4, 4, dtype=torch.long), 2, 2, 0, 255, True)
    with pytest.raises(ValueError, match="same shape"):
        call("clip_cosine_loss", torch.randn(2, 4), torch.randn(2, 5))
