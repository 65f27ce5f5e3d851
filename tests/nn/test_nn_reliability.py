"""Regression tests of the augmentation layers from the third adversarial run (issue 22 items 2, 7, 8, 9)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close
from torch._subclasses.fake_tensor import FakeTensorMode

from styleda_fast.nn import DistributionUncertainty, MixStyle, PermutedAdaIN, StyleBankAugment, functional
from styleda_fast.nn import reference as R


def _x(shape=(4, 3, 6, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()


def test_mixstyle_layer_second_derivative_is_exact():
    """22.2: ``grad(y.pow(2).sum(), x, create_graph=True)`` through MixStyle(p=1.0) raised ``mul(): functions with
    out=... arguments don't support automatic differentiation``; now it equals the float64 reference's."""
    x = _x()
    layer = MixStyle(p=1.0, generator=3).train()
    y = layer(x)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(3).sum(), x)
    # the same draws: lam (B) then the permutation, from a generator in the same state
    gen = torch.Generator().manual_seed(3)
    lam = functional.beta_weights(layer.alpha, layer.alpha, (x.shape[0],), gen)
    perm = torch.randperm(x.shape[0], generator=gen)
    leaf = x.detach().clone().requires_grad_()
    y_ref = R.mixstyle(leaf, perm, lam.double(), layer.eps)
    (g_ref,) = torch.autograd.grad(y_ref.pow(2).sum(), leaf, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.pow(3).sum(), leaf)
    assert gg_ref.norm() > 1
    assert_close(y.detach(), y_ref.detach(), 1e-12)
    assert_close(g.detach(), g_ref.detach(), 1e-9)
    assert_close(gg, gg_ref, 1e-9)


@pytest.mark.parametrize("perm", [[0, 5], [-1, 0], [2, 2]])
def test_out_of_range_perm_is_a_value_error_naming_perm(perm):
    """22.7: ``perm = [0, 5]`` for B = 2 gave an IndexError from index_select (a device-side assert on CUDA)."""
    x = _x((2, 3, 4, 4))
    perm = torch.tensor(perm)
    with pytest.raises(ValueError, match=r"\bperm\b"):
        functional.mix_style(x, perm, torch.rand(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\bperm\b"):
        functional.permuted_adain(x, perm)


@pytest.mark.parametrize("layer", [MixStyle, PermutedAdaIN, DistributionUncertainty])
def test_p_is_checked_on_assignment(layer):
    """22.8: ``layer.p = 7.0`` made the layer act always and ``nan`` never; now both are refused."""
    module = layer(p=0.5)
    for bad in (7.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"\bp\b"):
            module.p = bad
    with pytest.raises(TypeError, match=r"\bp\b"):
        module.p = "1"
    assert module.p == 0.5
    module.p = 1
    assert module.p == 1.0 and isinstance(module.p, float)
    x = _x()
    assert module.train()(x) is not x  # p = 1 acts on every call
    module.p = 0.0
    assert module(x) is x


def test_style_bank_augment_p_is_checked_on_assignment():
    from styleda_fast import StyleBank

    bank = StyleBank(3, num_classes=1, class_names=("a",))
    bank.add(torch.randn(2, 3), torch.rand(2, 3) + 0.5, 0)
    module = StyleBankAugment.poda(bank)
    with pytest.raises(ValueError, match=r"\bp\b"):
        module.p = 2.0


def test_mixstyle_backward_runs_under_fake_tensor_mode():
    """22.9: the backward's ``empty_cached_like`` had no fake kernel (UnsupportedOperatorException)."""
    with FakeTensorMode():
        x = torch.randn(2, 3, 5, 5, requires_grad=True)
        y = functional.mix_style(x, torch.tensor([1, 0]), torch.rand(2))
        y.sum().backward()
        assert x.grad.shape == x.shape
    if hasattr(torch.ops.styleda_fast, "empty_cached_like"):
        meta = torch.empty(2, 3, 4, device="meta").transpose(1, 2)
        out = torch.ops.styleda_fast.empty_cached_like(meta)
        assert out.device.type == "meta" and out.shape == meta.shape and out.stride() == meta.stride()
