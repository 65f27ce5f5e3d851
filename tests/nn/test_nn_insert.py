"""Inserting augmentation layers into torchvision, open_clip and timm CNNs, removing them, switching them off."""

import copy

import pytest
import torch
from torch import nn

import styleda_fast.nn as snn


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def check_round_trip(model: nn.Module, layer_names: list[str], x: torch.Tensor) -> None:
    """Insert layers, check train/eval behaviour against an untouched copy, remove them, check restoration."""
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    hooks = hook_count(model)
    handles = [snn.insert(model, name, layer) for name, layer in layer_names]
    assert list(model.state_dict()) == keys  # nothing wrapped or registered
    with torch.no_grad():
        model.eval(), plain.eval()
        assert torch.equal(model(x), plain(x))  # eval: the hooks leave the outputs alone
        buffers = copy.deepcopy(model.state_dict())
        model.train(), plain.train()
        y_aug, y_plain = model(x), plain(x)
        assert not torch.allclose(y_aug, y_plain)
        with snn.disabled(model):
            assert torch.equal(model(x), y_plain)
        for h in handles:
            h.remove()
        assert hook_count(model) == hooks
        assert list(model.state_dict()) == keys
        assert torch.equal(model(x), plain(x))
        model.load_state_dict(buffers)  # running statistics from before the training-mode passes
        plain.load_state_dict(buffers)
        model.eval(), plain.eval()
        assert torch.equal(model(x), plain(x))


def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 64, 64)
    check_round_trip(
        model,
        [
            ("layer1", snn.MixStyle(p=1.0, generator=0)),
            ("layer2", snn.DistributionUncertainty(p=1.0, generator=1)),
            ("layer2", snn.PermutedAdaIN(p=1.0, generator=2)),
        ],
        x,
    )


def test_open_clip_rn50_visual():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    visual = open_clip.create_model("RN50", pretrained=None, force_image_size=64).visual  # random weights
    x = torch.randn(2, 3, 64, 64)
    check_round_trip(visual, [("layer1", snn.MixStyle(p=1.0, mix="crossdomain", generator=0))], x)


def test_timm_cnn():
    timm = pytest.importorskip("timm")  # installed with open_clip
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    check_round_trip(
        model,
        [("layer1", snn.MixStyle(p=1.0, generator=0)), ("layer2", snn.DistributionUncertainty(p=1.0, generator=1))],
        x,
    )


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
        snn.MixStyle(p=1.0, generator=5),  # built in, found by disabled() too
        nn.Conv2d(8, 4, 3),
    )


def test_insert_after_nested_submodule_and_remove_by_name_module_handle():
    model = small_model()
    a, b, c = snn.MixStyle(p=1.0), snn.DistributionUncertainty(p=1.0), snn.PermutedAdaIN(p=1.0)
    ha = snn.insert(model, "1.0", a)
    snn.insert(model, "1.0", b)
    snn.insert(model, "0", c)
    assert [(w, type(m).__name__) for w, m in snn.augmentations(model)] == [
        ("0", "PermutedAdaIN"),
        ("1.0", "MixStyle"),
        ("1.0", "DistributionUncertainty"),
        ("2", "MixStyle"),
    ]
    assert "active" in repr(ha) and "Sequential.1.0" in repr(ha)
    assert snn.remove(model, b) == 1
    assert snn.remove(model, ha) == 1
    assert ha.removed and "removed" in repr(ha)
    ha.remove()  # idempotent
    assert snn.remove(model, "1.0") == 0
    assert snn.remove(model) == 1
    assert hook_count(model) == 0
    with snn.insert(model, "3", snn.MixStyle(p=1.0)):
        assert hook_count(model) == 1
    assert hook_count(model) == 0


def test_hooked_layer_follows_the_host_training_mode():
    model = small_model()
    layer = snn.DistributionUncertainty(p=1.0, generator=0)
    seen = []
    snn.insert(model, "0", layer)
    model[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 9, 9)
    model.eval()
    assert layer.training  # the layer is not a submodule: only the host's mode decides
    with torch.no_grad():
        model(x)
        assert torch.equal(seen[-1], model[0].forward(x))  # forward(): no hooks
        model.train()
        model(x)
        assert not torch.allclose(seen[-1], model[0].forward(x))


def test_disabled_restores_states_after_an_exception():
    model = small_model()
    inserted = snn.MixStyle(p=1.0)
    off = snn.DistributionUncertainty(p=1.0).disable()
    snn.insert(model, "0", inserted)
    snn.insert(model, "3", off)
    built_in = model[2]
    x = torch.randn(2, 3, 9, 9)
    with pytest.raises(RuntimeError, match="boom"):
        with snn.disabled(model):
            assert not inserted.enabled and not built_in.enabled and not off.enabled
            with snn.disabled(model):  # nesting keeps the outer state
                pass
            assert not inserted.enabled
            model.train()
            y = model(x)
            plain = copy.deepcopy(model)
            snn.remove(plain)
            plain[2] = nn.Identity()
            assert torch.equal(y, plain(x))
            raise RuntimeError("boom")
    assert inserted.enabled and built_in.enabled and not off.enabled


def test_insert_errors_name_the_argument():
    model = small_model()
    with pytest.raises(ValueError, match=r"name 'layer9'"):
        snn.insert(model, "layer9", snn.MixStyle())
    with pytest.raises(ValueError, match=r"name '1.5'"):
        snn.insert(model, "1.5", snn.MixStyle())
    with pytest.raises(TypeError, match=r"\bname\b"):
        snn.insert(model, 1, snn.MixStyle())
    with pytest.raises(TypeError, match=r"\bmodel\b"):
        snn.insert("resnet", "layer1", snn.MixStyle())
    with pytest.raises(TypeError, match=r"\bmodule\b"):
        snn.insert(model, "0", lambda x: x)
    with pytest.raises(ValueError, match=r"name 'nope'"):
        snn.remove(model, "nope")
    with pytest.raises(TypeError, match=r"\bwhat\b"):
        snn.remove(model, 3)
    with pytest.raises(TypeError, match=r"\bmodel\b"):
        with snn.disabled(None):
            pass


def test_features_that_are_not_a_tensor_or_not_4d():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(Pair())
    snn.insert(model, "0", snn.MixStyle(p=1.0))
    with pytest.raises(TypeError, match="output of '0'"):
        model(torch.randn(2, 3, 4, 4))
    flat = nn.Sequential(nn.Flatten())
    snn.insert(flat, "0", snn.MixStyle(p=1.0))
    with pytest.raises(ValueError, match=r"\bx\b.*\(B, C, H, W\)"):
        flat(torch.randn(2, 3, 4, 4))
