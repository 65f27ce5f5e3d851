"""styleda_fast.nn.functional against the plain-PyTorch statements of the public layers (styleda_fast.nn.reference):
same draws, forward and gradient with respect to x, float64 (tight) and float32, NCHW and channels_last."""

import math

import pytest
import torch

from styleda_fast.nn import functional as F
from styleda_fast.nn import reference as R

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def features(shape, dtype=torch.float64, channels_last=False, seed=0):
    """Fresh features with channel means far from zero and unequal scales (odd sizes by default)."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    scale = torch.rand((B, C, 1, 1), generator=g, dtype=torch.float64) * 2 + 0.5
    offset = torch.rand((B, C, 1, 1), generator=g, dtype=torch.float64) * 6 - 2
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def draws(B, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "perm": torch.randperm(B, generator=g),
        "lam": F.beta_weights(0.3, 0.3, (B,), g),
        "noise_mean": torch.randn((B, C), generator=g),
        "noise_std": torch.randn((B, C), generator=g),
    }


LAYERS = {
    "mixstyle": (lambda x, d: F.mix_style(x, d["perm"], d["lam"]), lambda x, d: R.mixstyle(x, d["perm"], d["lam"])),
    "permuted_adain": (
        lambda x, d: F.permuted_adain(x, d["perm"]),
        lambda x, d: R.permuted_adain(x, d["perm"], eps_after_sqrt=False),
    ),
    "permuted_adain_public_eps": (
        lambda x, d: F.permuted_adain(x, d["perm"], eps_after_sqrt=True),
        lambda x, d: R.permuted_adain(x, d["perm"], eps_after_sqrt=True),
    ),
    "dsu": (
        lambda x, d: F.dsu(x, d["noise_mean"], d["noise_std"]),
        lambda x, d: R.dsu(x, d["noise_mean"], d["noise_std"]),
    ),
}


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("B", [1, 2, 5])
def test_matches_public_behaviour(layer, dtype, channels_last, B):
    ours, public = LAYERS[layer]
    C, H, W = 3, 7, 5
    x = features((B, C, H, W), dtype, channels_last, seed=B)
    d = draws(B, C, seed=B + 10)
    x64 = x.detach().double().requires_grad_(True)  # the specification runs in float64
    grad_out = torch.randn((B, C, H, W), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = ours(x, d)
    y_ref = public(x64, d)
    (grad,) = torch.autograd.grad(y, x, grad_out.to(dtype))
    (grad_ref,) = torch.autograd.grad(y_ref, x64, grad_out)
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), y_ref, **TOL[dtype])
    torch.testing.assert_close(grad.double(), grad_ref, **TOL[dtype])


def test_mixstyle_gradient_is_one_scale_per_channel():
    x = features((4, 3, 5, 7))
    d = draws(4, 3)
    perm, lam = d["perm"], d["lam"].double()
    std = (x.detach().var((2, 3), keepdim=True) + 1e-6).sqrt()
    w = lam[:, None, None, None]
    scale = (w * std + (1 - w) * std[perm]) / std
    grad_out = torch.randn_like(x)
    (grad,) = torch.autograd.grad(F.mix_style(x, perm, d["lam"]), x, grad_out)
    torch.testing.assert_close(grad, grad_out * scale, rtol=1e-12, atol=1e-12)


def test_mixstyle_saves_only_the_scale():
    from styleda_fast.nn.bench_cases import saved_bytes

    x = features((4, 6, 9, 7), torch.float32)
    d = draws(4, 6)
    assert saved_bytes(lambda: F.mix_style(x, d["perm"], d["lam"])) == 4 * 6 * 4  # (B, C) float32
    assert saved_bytes(lambda: R.mixstyle(x, d["perm"], d["lam"])) >= x.numel() * 4


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 7, 8])
def test_crossdomain_permutation_follows_the_public_construction(B):
    g = torch.Generator().manual_seed(B)
    perm = F.crossdomain_permutation(B, g)
    g = torch.Generator().manual_seed(B)
    half = (B + 1) // 2
    first, second = torch.randperm(half, generator=g), torch.randperm(B - half, generator=g)
    assert torch.equal(perm, R.crossdomain_permutation(first, second))
    assert sorted(perm.tolist()) == list(range(B))
    if B % 2 == 0:  # partners come from the other domain
        assert all(p >= B // 2 for p in perm[: B // 2].tolist())
        assert all(p < B // 2 for p in perm[B // 2 :].tolist())


def test_beta_weights_are_torch_distributions_draws():
    torch.manual_seed(3)
    public = torch.distributions.Beta(0.1, 0.1).sample((6, 1, 1, 1)).flatten()
    ours = F.beta_weights(0.1, 0.1, (6,), torch.Generator().manual_seed(3))
    assert torch.equal(ours, public)
    many = F.beta_weights(0.1, 0.1, (20000,), torch.Generator().manual_seed(0))
    assert torch.isfinite(many).all() and 0 <= many.min() and many.max() <= 1


def test_dsu_batch_of_one_is_defined():
    """The public code's batch variance of one image is NaN (so is its output); ours is 0: statistics move by
    sqrt(eps) times the noise."""
    x = features((1, 3, 5, 7))
    nm, ns = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert torch.isnan(x.detach().mean((2, 3)).var(dim=0)).all()  # what the public code computes
    y = F.dsu(x, nm, ns, eps=1e-6)
    assert torch.isfinite(y).all()
    mean = x.detach().mean((2, 3), keepdim=True)
    std = (x.detach().var((2, 3), keepdim=True) + 1e-6).sqrt()
    gamma = std + ns[:, :, None, None] * 1e-3
    beta = mean + nm[:, :, None, None] * 1e-3
    torch.testing.assert_close(y, (x - mean) / std * gamma + beta, rtol=1e-10, atol=1e-10)


def test_one_pixel_features():
    x = features((3, 4, 1, 1))
    d = draws(3, 4)
    assert F.permuted_adain(x, d["perm"]) is x  # the public code returns its input for 1x1 features
    y = F.mix_style(x, d["perm"], d["lam"])  # variance 0: sig = sqrt(eps), the mixed mean is taken
    w = d["lam"].double()[:, None, None, None]
    mean = x.detach()
    torch.testing.assert_close(y, w * mean + (1 - w) * mean[d["perm"]])
    assert torch.isfinite(F.dsu(x, d["noise_mean"], d["noise_std"])).all()


def test_mixstyle_identity_draws_keep_x():
    x = features((3, 4, 5, 7), torch.float32)
    y = F.mix_style(x, torch.arange(3), torch.ones(3))
    torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_close_to_float64(dtype):
    x = features((2, 3, 9, 7), dtype)
    d = draws(2, 3)
    y = F.mix_style(x, d["perm"], d["lam"])
    y.float().sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype
    ref = R.mixstyle(x.detach().double(), d["perm"], d["lam"])
    torch.testing.assert_close(y.double(), ref, rtol=3e-2, atol=3e-2)


def test_bad_arguments_name_the_argument():
    x = features((2, 3, 5, 5))
    perm, lam = torch.tensor([1, 0]), torch.rand(2)
    with pytest.raises(ValueError, match="x"):
        F.mix_style(x[0], perm, lam)
    with pytest.raises(TypeError, match="x"):
        F.mix_style(x.detach().numpy(), perm, lam)
    with pytest.raises(TypeError, match="x"):
        F.dsu(x.detach().int(), torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="perm"):
        F.mix_style(x, torch.tensor([0, 1, 2]), lam)
    with pytest.raises(TypeError, match="perm"):
        F.permuted_adain(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="lam"):
        F.mix_style(x, perm, torch.rand(2, 1))
    with pytest.raises(TypeError, match="lam"):
        F.mix_style(x, perm, [0.5, 0.5])
    with pytest.raises(ValueError, match="noise_std"):
        F.dsu(x, torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="eps"):
        F.mix_style(x, perm, lam, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        F.dsu(x, torch.randn(2, 3), torch.randn(2, 3), eps=math.nan)
    with pytest.raises(TypeError, match="eps_after_sqrt"):
        F.permuted_adain(x, perm, eps_after_sqrt=1)
