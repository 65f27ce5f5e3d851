"""torch.compile(fullgraph=True) of a model with every augmentation layer inserted: no graph break, no recompilation
when the coins change, and the same draws, outputs and gradients as the eager model from the same seeds."""

import torch
from torch import nn

import styleda_fast.nn as snn
from styleda_fast import StyleBank


def build(seed: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3))
    g = torch.Generator().manual_seed(1)
    bank = StyleBank(8, num_classes=3, class_names=("a", "b", "c"))
    bank.add(torch.randn((6, 8), generator=g) + 1, torch.rand((6, 8), generator=g) + 0.5, [0, 1, 2, 255, 0, 1])
    layers = [
        ("0", snn.MixStyle(p=0.5, mix="crossdomain", generator=seed)),
        ("1", snn.PermutedAdaIN(p=0.7, generator=seed + 1)),
        ("2", snn.DistributionUncertainty(p=0.6, generator=seed + 2)),
        ("2", snn.StyleBankAugment.famix(bank, p=0.8, generator=seed + 3)),
        ("3", snn.MixStyle(p=1.0, generator=seed + 4)),
    ]
    for name, layer in layers:
        snn.insert(model, name, layer)
    return model, layers[3][1]


def steps(model, famix, x, labels, indices, first_conv=None):
    out = []
    for i in indices:
        famix.set_labels(labels[i % 2])
        y = model(x)
        y.square().sum().backward()
        conv = first_conv if first_conv is not None else model[0]
        out.append((y.detach(), conv.weight.grad.clone()))
        model.zero_grad()
    return out


def test_compiled_model_matches_eager_without_graph_breaks():
    torch._dynamo.reset()
    x = torch.randn(4, 3, 13, 11) + 1
    labels = torch.randint(0, 3, (2, 4, 26, 22), generator=torch.Generator().manual_seed(0))
    eager, famix = build(seed=10)
    expected = steps(eager, famix, x, labels, range(6))
    model, famix = build(seed=10)
    compiled = torch.compile(model, fullgraph=True)  # a graph break raises
    got = steps(compiled, famix, x, labels, range(1), model[0])
    with torch._dynamo.config.patch(error_on_recompile=True):  # coins and labels change, the graph does not
        got += steps(compiled, famix, x, labels, range(1, 6), model[0])
    for (y, g), (y_ref, g_ref) in zip(got, expected, strict=True):
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-3)
    assert len({round(float(y.sum()), 3) for y, _ in got}) == len(got)  # fresh draws every step
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
