"""Augmentation layers on ViT tokens: ``PatchTokens(layer)`` on ``(B, prefix + h*w, C)`` tokens equals ``layer`` on
the patch tokens laid out as an NCHW tensor (same seed, same draws), passes the prefix tokens through, returns the
tokens themselves where the layer does not act, and inserts into an open_clip ViT."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, assert_close

import styleda_fast.nn as snn
from styleda_fast import StyleBank


def _bank(channels: int) -> StyleBank:
    g = torch.Generator().manual_seed(1)
    bank = StyleBank(channels, num_classes=3, class_names=("a", "b", "c"))
    bank.add(torch.randn((5, channels), generator=g) + 1, torch.rand((5, channels), generator=g) + 0.5, [0, 1, 2, 0, 1])
    return bank


LAYERS = {
    "mixstyle": lambda C, seed: snn.MixStyle(p=1.0, generator=seed),
    "permuted_adain": lambda C, seed: snn.PermutedAdaIN(p=1.0, generator=seed),
    "dsu": lambda C, seed: snn.DistributionUncertainty(p=1.0, generator=seed),
    "poda_bank": lambda C, seed: snn.StyleBankAugment.poda(_bank(C), p=1.0, activation=None, generator=seed),
}


def _tokens(B, prefix, h, w, C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, prefix + h * w, C, generator=gen, dtype=torch.float64) * 2 + 1


def _patches_nchw(tokens, prefix, h, w):
    B, _, C = tokens.shape
    return tokens[:, prefix:].transpose(1, 2).reshape(B, C, h, w).contiguous()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(("B", "prefix", "h", "w", "C"), [(3, 1, 5, 5, 7), (2, 4, 3, 6, 5), (1, 0, 4, 4, 6)])
@pytest.mark.usefixtures("poison_fresh_memory")
def test_patch_tokens_equals_the_layer_on_an_nchw_copy(name, B, prefix, h, w, C):
    base = _tokens(B, prefix, h, w, C)
    upstream = torch.randn(base.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tokens = base.clone().requires_grad_()
    grid = None if h == w else (h, w)
    out = snn.PatchTokens(LAYERS[name](C, 5), prefix=prefix, grid=grid).train()(tokens)
    (out * upstream).sum().backward()
    nchw = _patches_nchw(base, prefix, h, w).requires_grad_()
    expected = LAYERS[name](C, 5).train()(nchw)
    (expected * _patches_nchw(upstream, prefix, h, w)).sum().backward()
    assert out.shape == base.shape
    assert torch.equal(out[:, :prefix], base[:, :prefix]), "prefix tokens changed"
    assert_close(out[:, prefix:], expected.flatten(2).transpose(1, 2), TOLERANCE[torch.float64])
    assert torch.equal(tokens.grad[:, :prefix], upstream[:, :prefix])
    assert_close(tokens.grad[:, prefix:], nchw.grad.flatten(2).transpose(1, 2), GRAD_TOLERANCE[torch.float64])


def test_sequence_first_tokens_give_the_same_numbers():
    base = _tokens(3, 1, 4, 4, 6, seed=3)
    batch_first = snn.PatchTokens(snn.MixStyle(p=1.0, generator=7)).train()(base)
    seq_first = snn.PatchTokens(snn.MixStyle(p=1.0, generator=7), batch_first=False).train()(base.transpose(0, 1))
    assert_close(seq_first.transpose(0, 1), batch_first, TOLERANCE[torch.float64])


def test_the_tokens_themselves_where_the_layer_does_not_act():
    tokens = _tokens(2, 1, 3, 3, 4, seed=4)
    layer = snn.PatchTokens(snn.DistributionUncertainty(p=1.0, generator=0))
    assert layer.eval()(tokens) is tokens
    assert snn.PatchTokens(snn.MixStyle(p=0.0)).train()(tokens) is tokens
    layer.train()
    with snn.disabled(torch.nn.Sequential(layer)):
        assert layer(tokens) is tokens and not layer.layer.enabled
    assert layer.layer.enabled and layer(tokens) is not tokens


def test_inserted_into_an_open_clip_vit():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=64).visual  # 4x4 patches
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        plain = model(images)
    handle = snn.insert(model, "transformer.resblocks.3", snn.PatchTokens(snn.MixStyle(p=1.0, generator=0)))
    with torch.no_grad():
        assert torch.equal(model(images), plain)  # eval: the layer does not act
        model.train()
        augmented = model(images)
        model.eval()
    assert not torch.allclose(augmented, plain)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(images), plain)


def test_compiles_without_graph_breaks():
    """fullgraph, and again on other token counts: the recompilation then treats the sizes as symbolic (automatic
    dynamic shapes), which the square-grid arithmetic must survive."""
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), snn.PatchTokens(snn.MixStyle(p=1.0, generator=3)))
    model.train()
    compiled = torch.compile(model, fullgraph=True)
    for side, seed in ((4, 6), (5, 7), (6, 8)):
        tokens = _tokens(2, 1, side, side, 8, seed=seed).float()
        model[1].layer.generator.manual_seed(3)
        eager = model(tokens)
        model[1].layer.generator.manual_seed(3)
        assert_close(compiled(tokens), eager, TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    ("make", "call", "error", "argument"),
    [
        (lambda: snn.PatchTokens("mixstyle"), None, TypeError, "layer"),
        (lambda: snn.PatchTokens(snn.MixStyle(), prefix=-1), None, ValueError, "prefix"),
        (lambda: snn.PatchTokens(snn.MixStyle(), grid=(3,)), None, ValueError, "grid"),
        (lambda: snn.PatchTokens(snn.MixStyle(), batch_first=1), None, TypeError, "batch_first"),
        (lambda: snn.PatchTokens(snn.MixStyle(p=1.0)), torch.randn(2, 11, 4), ValueError, "square"),
        (lambda: snn.PatchTokens(snn.MixStyle(p=1.0), grid=(3, 4)), torch.randn(2, 11, 4), ValueError, "grid"),
        (lambda: snn.PatchTokens(snn.MixStyle(p=1.0)), torch.randn(2, 4, 3, 3), ValueError, "tokens"),
    ],
)
def test_bad_arguments_name_the_argument(make, call, error, argument):
    with pytest.raises(error, match=argument):
        layer = make()
        layer.train()(call)
