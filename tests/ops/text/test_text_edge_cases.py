"""The text operators on odd input: no silent second derivative, empty rows refused, a NaN stays in its row."""

from __future__ import annotations

import pytest
import torch
from helpers import available_backends, backend_device

from styleda_fast import (
    clip_cosine_loss,
    noisy_text_projection,
    use_backend,
)

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


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


def test_cosine_loss_of_empty_rows_is_refused_on_every_backend():
    for backend in BACKENDS:
        device = backend_device(backend)
        with use_backend(backend), pytest.raises(ValueError, match="D >= 1"):
            clip_cosine_loss(torch.randn(2, 0, device=device), torch.randn(2, 0, device=device))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_in_a_text_row_makes_the_whole_row_nan(backend):
    device = backend_device(backend)
    text = torch.randn(2, 16, device=device)
    text[0, 3] = float("nan")
    with use_backend(backend):
        out = noisy_text_projection(text, 0.1, samples=2, seed=5)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1]).all()
