"""styleda_fast.compat against plain-PyTorch transcriptions of the public PODA/FAMix behaviour."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import assert_close

from styleda_fast import reference_public as public
from styleda_fast.compat import famix, poda

NAMES = famix.CITYSCAPES_NAMES


def _features(B=2, C=8, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, size, size, generator=gen, dtype=torch.float64) * 2 + 1


def _bank(C=8, seed=0, classes=(0, 1, 13)):
    """A FAMix dict-of-lists bank with a few non-empty classes, the rest empty (they fall back to '255')."""
    gen = torch.Generator().manual_seed(seed)
    bank = {f"{n}_{k}": [] for n in NAMES for k in ("mu", "std")}
    for key in [NAMES[c] for c in classes] + ["255"]:
        count = int(torch.randint(1, 5, (), generator=gen))
        bank[key + "_mu"] = [torch.randn(C, 1, 1, generator=gen, dtype=torch.float64) for _ in range(count)]
        bank[key + "_std"] = [torch.rand(C, 1, 1, generator=gen, dtype=torch.float64) + 0.5 for _ in range(count)]
    return bank


def test_calc_mean_std():
    x = _features()
    for ours, ref in zip(poda.calc_mean_std(x), public.calc_mean_std(x)):
        assert ours.shape == ref.shape == (2, 8, 1, 1)
        assert_close(ours, ref, 1e-12)


def test_pin_forward_and_parameter_gradients():
    x = _features()
    pin = poda.PIN([2, 8, 1, 1], x)
    with torch.no_grad():
        pin.style_mean.add_(torch.randn_like(pin.style_mean))
        pin.style_std.mul_(1.5)
        pin.style_std[0, 0] = -1.0  # clamped to 0 by forward(), as PODA does
    grad = torch.randn_like(x)
    pin().backward(grad)
    assert pin.style_std[0, 0].item() == 0.0
    mean = pin.style_mean.detach().clone().requires_grad_()
    std = pin.style_std.detach().clone().requires_grad_()
    public.pin_forward(x, mean, std).backward(grad)
    assert_close(pin.style_mean.grad, mean.grad, 1e-10, "d style_mean")
    assert_close(pin.style_std.grad, std.grad, 1e-10, "d style_std")


@pytest.mark.parametrize("mix", [False, True])
def test_poda_transfer(mix):
    x = _features()
    mu_t, std_t = torch.randn(2, 8, 1, 1, dtype=torch.float64), torch.rand(2, 8, 1, 1, dtype=torch.float64) + 0.5
    gen = torch.Generator().manual_seed(4)
    ours = poda.transfer(x, mu_t, std_t, mix=mix, generator=gen)
    s = torch.rand((2, 8), generator=torch.Generator().manual_seed(4)).double() if mix else None
    assert_close(ours, public.poda_transfer(x, mu_t, std_t, s), 1e-10)


def test_ppin_matches_public_patch_loop():
    x = _features(B=2, size=12)
    ind = [0, 3, 5, 17]  # patch-major, then image: k = p * B + b
    ppin = famix.PPIN(x, div=3, ind=ind)
    assert ppin.style_mean.shape == (4, 8, 1, 1)
    corners = [(k % 2, (k // 2) // 3 * 4, (k // 2) % 3 * 4) for k in ind]  # (image, top, left)
    patches = torch.stack([x[b, :, top : top + 4, left : left + 4] for b, top, left in corners])
    mean, std = public.calc_mean_std(patches)
    assert_close(ppin.style_mean, mean, 1e-12)
    with torch.no_grad():
        ppin.style_std.mul_(0.7)
    grad = torch.randn(4, 8, 4, 4, dtype=torch.float64)
    ppin().backward(grad)
    sm, ss = ppin.style_mean.detach().clone().requires_grad_(), ppin.style_std.detach().clone().requires_grad_()
    expected = public.pin_forward(patches, sm, ss)
    expected.backward(grad)
    assert_close(ppin(), expected, 1e-10)
    assert_close(ppin.style_mean.grad, sm.grad, 1e-10)
    assert_close(ppin.style_std.grad, ss.grad, 1e-10)


@pytest.mark.parametrize("mixing", [True, False])
def test_famix_transfer_with_public_structures(mixing):
    x = _features(B=3, size=12)
    labels = torch.randint(0, 19, (3, 24, 24), generator=torch.Generator().manual_seed(1))
    labels[0, :8, :8] = 255  # a mostly unlabelled patch: styled with the '255' styles
    labels[1, 8:16, :8] = 13
    most_list = public.dominant_classes_public(labels, 3, NAMES)
    bank = _bank()
    s = torch.distributions.Beta(0.1, 0.1).sample((3, 8, 1, 1)).double() if mixing else None
    random.seed(7)
    expected = public.famix_transfer(x, most_list, bank, s)
    random.seed(7)
    ours = famix.transfer(x, most_list, bank, s)
    assert_close(ours, expected, 1e-10)


def test_famix_transfer_errors():
    x = _features(B=2, size=12)
    with pytest.raises(ValueError, match="most_list"):
        famix.transfer(x, [["road", "road"]] * 8, _bank(), None)
    with pytest.raises(ValueError, match="div"):
        famix.transfer(_features(B=2, size=13), [["road", "road"]] * 9, _bank(), None)
    empty = {k: [] for k in _bank()}
    with pytest.raises(ValueError, match="255"):
        famix.transfer(x, [["road", "road"]] * 9, empty, None)


def test_public_pickles_load_safely(tmp_path):
    import os
    import pickle

    from styleda_fast.bank.style_bank import UnsafePickleError

    bank = _bank(C=4)
    with open(tmp_path / "saved_params.pkl", "wb") as f:
        pickle.dump(bank, f)
    loaded = famix.load_saved_params(tmp_path / "saved_params.pkl")
    assert set(loaded) == set(bank) and torch.equal(loaded["road_mu"][0], bank["road_mu"][0])
    with open(tmp_path / "img.pkl", "wb") as f:
        pickle.dump({"mu_f1": torch.randn(4, 1, 1), "std_f1": torch.rand(4, 1, 1)}, f)
    assert poda.load_stats(tmp_path / "img.pkl")["mu_f1"].shape == (4, 1, 1)

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"mu_f1": Payload(), "std_f1": torch.zeros(1)}, f)
    with pytest.raises(UnsafePickleError):
        poda.load_stats(tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError):
        famix.load_saved_params(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_famix_transfer_rejects_styles_of_another_layer():
    x = _features(B=2, size=12)  # C = 8
    with pytest.raises(ValueError, match=r"saved_params\[.*\]\[\d+\] has 4 values but features has C = 8"):
        famix.transfer(x, [["road", "road"]] * 9, _bank(C=4), None)
    with pytest.raises(TypeError, match="saved_params"):
        famix.transfer(x, [["road", "road"]] * 9, [("road", torch.zeros(8))], None)
    with pytest.raises(TypeError, match="features"):
        famix.transfer(x.numpy(), [["road", "road"]] * 9, _bank(), None)
    with pytest.raises(TypeError, match="most_list"):
        famix.transfer(x, "road" * 9, _bank(), None)


def test_most_list_from_dominant_matches_famix():
    """The documented bridge from patch_dominant_class to FAMix's most_list: the same lists FAMix builds."""
    from styleda_fast import patch_dominant_class

    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 19, (3, 24, 24), generator=gen)
    labels[0, :8, :8] = 255  # an unlabelled patch
    labels[1, 8:16, 16:] = 18  # the last class
    labels[2, 16:, :8] = 0
    labels[2, :5, 8:16] = 7  # a patch with a clear majority
    dominant = patch_dominant_class(labels, grid=3)
    ours = famix.most_list_from_dominant(dominant)
    assert ours == public.dominant_classes_public(labels, 3, NAMES)
    assert ours[0][0] == 255 and ours[5][1] == "bicycle" and ours[6][2] == "road"
    ids = famix.most_list_from_dominant(dominant, class_names=[str(k) for k in range(19)], ignore_index=255)
    assert ids[1][2] == "7"
    # it feeds transfer, which then matches the public transfer branch
    x, bank = _features(B=3, size=12), _bank()
    random.seed(1)
    expected = public.famix_transfer(x, public.dominant_classes_public(labels, 3, NAMES), bank, None)
    random.seed(1)
    assert_close(famix.transfer(x, ours, bank, None), expected, 1e-10)


@pytest.mark.parametrize(
    ("dominant", "kwargs", "error", "match"),
    [
        (torch.full((1, 3, 3), 40), {}, ValueError, "got 40"),  # IndexError before
        (torch.full((1, 3, 3), -1), {}, ValueError, "got -1"),  # silently 'bicycle' before
        (torch.full((1, 3, 3), 254), {}, ValueError, "got 254"),
        (torch.zeros(9, dtype=torch.int64), {}, ValueError, "dominant must have shape"),
        (torch.zeros(1, 3, 3), {}, TypeError, "dominant"),  # float
        (torch.zeros(1, 3, 3, dtype=torch.bool), {}, TypeError, "dominant"),
        ([[[0]]], {}, TypeError, "dominant"),
        (torch.zeros(1, 3, 3, dtype=torch.int64), {"ignore_index": 3}, ValueError, "ignore_index"),
        (torch.zeros(1, 3, 3, dtype=torch.int64), {"ignore_index": "255"}, TypeError, "ignore_index"),
        (torch.zeros(1, 3, 3, dtype=torch.int64), {"class_names": "road"}, TypeError, "class_names"),
    ],
)
def test_most_list_from_dominant_rejects_bad_input(dominant, kwargs, error, match):
    with pytest.raises(error, match=match):
        famix.most_list_from_dominant(dominant, **kwargs)


def test_compat_loaders_check_what_they_return(tmp_path):
    import pickle

    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump({"mu_f1": [1.0, 2.0], "std_f1": torch.ones(2)}, f)
    with pytest.raises(ValueError, match=r"a\.pkl.*mu_f1 must be a float tensor"):
        poda.load_stats(tmp_path / "a.pkl")
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump({"road_mu": [torch.zeros(2), "x"], "road_std": []}, f)
    with pytest.raises(ValueError, match=r"b\.pkl.*road_mu\[1\] must be a float tensor"):
        famix.load_saved_params(tmp_path / "b.pkl")
