"""The augmentation layers as modules: when they act, what they draw, how they are switched, argument errors."""

import copy
import math
import pickle

import pytest
import torch

from styleda_fast import StyleBank, local_style_mix, patch_dominant_class
from styleda_fast.nn import DistributionUncertainty, MixStyle, PermutedAdaIN, StyleBankAugment
from styleda_fast.nn import functional as F
from styleda_fast.nn import reference as R


def features(shape=(4, 6, 7, 5), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    offset = torch.rand((1, shape[1], 1, 1), generator=g) * 4 - 1
    return (torch.randn(shape, generator=g) * 1.5 + offset).to(dtype)


def make_bank(channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = StyleBank(channels, num_classes=3, class_names=("road", "car", "sky"))
    ids = [0, 0, 1, 1, 2, 255, 255, 0]
    bank.add(torch.randn((8, channels), generator=g) + 2, torch.rand((8, channels), generator=g) + 0.5, ids)
    return bank


LAYERS = {
    "MixStyle": lambda **kw: MixStyle(**kw),
    "PermutedAdaIN": lambda **kw: PermutedAdaIN(**kw),
    "DSU": lambda **kw: DistributionUncertainty(**kw),
    "PODA": lambda **kw: StyleBankAugment.poda(make_bank(), **kw),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_returns_x_itself_when_not_acting(name):
    x = features()
    assert LAYERS[name](p=0.0, generator=0)(x) is x
    assert LAYERS[name](p=1.0, generator=0).eval()(x) is x
    assert LAYERS[name](p=1.0, generator=0).disable()(x) is x


@pytest.mark.parametrize("name", list(LAYERS))
def test_p1_always_acts_and_seed_fixes_the_output(name):
    x = features()
    a, b, c = LAYERS[name](p=1.0, generator=5), LAYERS[name](p=1.0, generator=5), LAYERS[name](p=1.0, generator=6)
    for _ in range(5):
        ya, yb, yc = a(x), b(x), c(x)
        assert ya is not x and not torch.allclose(ya, x)
        assert torch.equal(ya, yb)
        assert not torch.equal(ya, yc)


@pytest.mark.parametrize("name", list(LAYERS))
def test_acts_with_probability_p(name):
    layer = LAYERS[name](p=0.3, generator=1)
    x = features((2, 6, 3, 3))
    acted = sum(layer(x) is not x for _ in range(400))
    assert 80 <= acted <= 160  # 120 expected, sd 9


def test_global_generator_when_none():
    x = features()
    torch.manual_seed(11)
    y1 = MixStyle(p=1.0)(x)
    torch.manual_seed(11)
    y2 = MixStyle(p=1.0)(x)
    assert torch.equal(y1, y2)


def test_mixstyle_draws_lam_then_perm():
    x = features((5, 6, 7, 5))
    for mix in ("random", "crossdomain"):
        layer = MixStyle(p=1.0, alpha=0.3, mix=mix, generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        lam = F.beta_weights(0.3, 0.3, (5,), g)
        perm = torch.randperm(5, generator=g) if mix == "random" else F.crossdomain_permutation(5, g)
        torch.testing.assert_close(layer(x), R.mixstyle(x.double(), perm, lam).float(), rtol=1e-5, atol=1e-5)


def test_mixstyle_with_coin_draws_coin_first():
    x = features()
    layer = MixStyle(p=0.999999, generator=3)
    g = torch.Generator().manual_seed(3)
    torch.rand((), generator=g)
    lam = F.beta_weights(0.1, 0.1, (4,), g)
    perm = torch.randperm(4, generator=g)
    torch.testing.assert_close(layer(x), F.mix_style(x, perm, lam))


def test_permuted_adain_and_dsu_draws():
    x = features()
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(4, generator=g)
    torch.testing.assert_close(PermutedAdaIN(p=1.0, generator=4)(x), F.permuted_adain(x, perm))
    layer = PermutedAdaIN(p=1.0, eps_after_sqrt=True, generator=4)
    torch.testing.assert_close(layer(x), F.permuted_adain(x, perm, eps_after_sqrt=True))
    g = torch.Generator().manual_seed(4)
    nm, ns = torch.randn((4, 6), generator=g), torch.randn((4, 6), generator=g)
    torch.testing.assert_close(DistributionUncertainty(p=1.0, generator=4)(x), F.dsu(x, nm, ns))


@pytest.mark.parametrize("grid", [1, 3])
def test_style_bank_poda_global_draws(grid):
    bank = make_bank()
    x = features((3, 6, 11, 13), torch.float64)
    layer = StyleBankAugment(bank, grid=grid, mix="uniform", generator=9)
    y = layer(x)
    g = torch.Generator().manual_seed(9)
    mean, std = bank.sample_any(3 * grid * grid, generator=g)
    mean = mean.reshape(3, grid, grid, 6).permute(0, 3, 1, 2)
    std = std.reshape(3, grid, grid, 6).permute(0, 3, 1, 2)
    s = torch.rand((3, 6), generator=g)
    torch.testing.assert_close(y, R.patch_transfer(x, mean, std, (grid, grid), s, "relu"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("via", ["set_labels", "argument"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_style_bank_famix_class_aware_draws(via, channels_last):
    bank = make_bank()
    x = features((3, 6, 11, 13), torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    labels = torch.randint(0, 3, (3, 44, 52), generator=torch.Generator().manual_seed(0))
    labels[0, :20] = 255  # a mostly unlabelled patch takes the fallback styles
    layer = StyleBankAugment.famix(bank, generator=torch.Generator().manual_seed(8))
    if via == "set_labels":
        layer.set_labels(labels)
        y = layer(x)
    else:
        y = layer(x, labels=labels)
    g = torch.Generator().manual_seed(8)
    dominant = patch_dominant_class(labels, 3, num_classes=3, ignore_index=255)
    mean, std = bank.sample_grid(dominant, generator=g)
    s = F.beta_weights(0.1, 0.1, (3, 6), g)
    ref = R.patch_transfer(x, mean, std, (3, 3), s, "relu")
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    (grad_ref,) = torch.autograd.grad(ref, x, grad_out)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, local_style_mix(x, mean, std, grid=3, mix=s))


def test_style_bank_pure_transfer_no_activation():
    bank = make_bank()
    x = features((2, 6, 5, 5), torch.float64)
    y = StyleBankAugment(bank, mix=None, activation=None, generator=1)(x)
    mean, std = bank.sample_any(2, generator=torch.Generator().manual_seed(1))
    ref = R.patch_transfer(x, mean[:, :, None, None], std[:, :, None, None], (1, 1), None, None)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_style_bank_labels_errors():
    bank = make_bank()
    layer = StyleBankAugment.famix(bank, generator=0)
    x = features((2, 6, 9, 9))
    with pytest.raises(ValueError, match="labels"):
        layer(x)
    with pytest.raises(ValueError, match="labels"):
        layer(x, labels=torch.zeros((3, 9, 9), dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        layer.set_labels(torch.zeros((2, 9, 9)))
    with pytest.raises(TypeError, match="labels"):
        MixStyle(p=1.0)(x, labels=torch.zeros((2, 9, 9), dtype=torch.int64))
    with pytest.raises(ValueError, match="channels"):
        StyleBankAugment.poda(bank, generator=0)(features((2, 5, 9, 9)))


def test_gradient_reaches_x_through_the_layer():
    x = features().requires_grad_(True)
    for layer in (MixStyle(p=1.0, generator=0), PermutedAdaIN(p=1.0, generator=0), DistributionUncertainty(p=1.0)):
        x.grad = None
        layer(x).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_switches_and_repr():
    layer = MixStyle(p=0.5, alpha=0.2, mix="crossdomain", generator=3)
    assert repr(layer) == "MixStyle(p=0.5, alpha=0.2, eps=1e-06, mix='crossdomain', generator=seed=3)"
    assert layer.disable() is layer and not layer.enabled
    assert "enabled=False" in repr(layer)
    layer.enable()
    assert layer.enabled
    assert repr(PermutedAdaIN()) == "PermutedAdaIN(p=0.01, eps=1e-05, generator=global)"
    assert "eps_after_sqrt=True" in repr(PermutedAdaIN(eps_after_sqrt=True))
    assert repr(DistributionUncertainty(generator=torch.Generator())) == (
        "DistributionUncertainty(p=0.5, eps=1e-06, generator=torch.Generator(cpu))"
    )
    text = repr(StyleBankAugment.famix(make_bank()))
    assert "grid=(3, 3)" in text and "Beta(0.1" in text and "class_aware=True" in text and "StyleBank(8 styles" in text


def test_copies_draw_like_the_original():
    layer = MixStyle(p=1.0, generator=7)
    x = features()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._key != layer._key
        torch.testing.assert_close(clone(x), MixStyle(p=1.0, generator=7)(x))


@pytest.mark.parametrize(
    "build, error, name",
    [
        (lambda: MixStyle(p=-0.1), ValueError, "p"),
        (lambda: MixStyle(p=1.5), ValueError, "p"),
        (lambda: MixStyle(p=math.nan), ValueError, "p"),
        (lambda: MixStyle(p="0.5"), TypeError, "p"),
        (lambda: PermutedAdaIN(p=True), TypeError, "p"),
        (lambda: DistributionUncertainty(p=2), ValueError, "p"),
        (lambda: MixStyle(alpha=0), ValueError, "alpha"),
        (lambda: MixStyle(alpha=-1.0), ValueError, "alpha"),
        (lambda: MixStyle(alpha=math.inf), ValueError, "alpha"),
        (lambda: MixStyle(mix="domain"), ValueError, "mix"),
        (lambda: MixStyle(eps=-1e-6), ValueError, "eps"),
        (lambda: MixStyle(generator="seed"), TypeError, "generator"),
        (lambda: PermutedAdaIN(eps_after_sqrt="yes"), TypeError, "eps_after_sqrt"),
        (lambda: StyleBankAugment("bank"), TypeError, "bank"),
        (lambda: StyleBankAugment(make_bank(), mix="beta"), ValueError, "mix"),
        (lambda: StyleBankAugment(make_bank(), grid=0), ValueError, "grid"),
        (lambda: StyleBankAugment(make_bank(), grid=1.5), TypeError, "grid"),
        (lambda: StyleBankAugment(make_bank(), activation="gelu"), ValueError, "activation"),
        (lambda: StyleBankAugment(make_bank(), class_aware=1), TypeError, "class_aware"),
        (lambda: StyleBankAugment(make_bank(), p=-1), ValueError, "p"),
    ],
)
def test_bad_arguments_name_the_argument(build, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        build()


@pytest.mark.parametrize("name", list(LAYERS))
def test_features_must_be_4d(name):
    layer = LAYERS[name](p=1.0)
    with pytest.raises(ValueError, match=r"\bx\b"):
        layer(torch.randn(4, 6, 7))
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer(torch.zeros(4, 6, 7, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\bx\b"):  # checked in eval mode too
        layer.eval()(torch.randn(4, 6))
