"""Dominant class per patch and per-class statistics: every backend against the plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, assert_close, available_backends, backend_device, has_triton, random_labels
from hypothesis import given, settings
from hypothesis import strategies as st

import styleda_fast
from styleda_fast.ops.class_stats import class_mean_std, labels_to_size, patch_dominant_class
from styleda_fast.ops.class_stats import reference as ref

BACKENDS = available_backends()
NEEDS_CPP = pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")


def run_on(backend, fn, *tensors, **kwargs):
    device = backend_device(backend)
    with styleda_fast.use_backend(backend):
        out = fn(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors), **kwargs)
    return out


# ----------------------------------------------------------------------------- dominant class

DOMINANT_CASES = [
    # (shape, grid, num_classes, block)
    ((2, 17, 23), (3, 3), 4, 1),  # non-divisible, few classes: many ties
    ((1, 5, 7), (5, 7), 3, 1),  # single-pixel patches
    ((3, 30, 31), (3, 2), 19, 4),  # coherent
    ((1, 9, 4), (2, 4), 2, 1),  # one-column patches
    ((2, 6, 6), (1, 1), 5, 1),  # global
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count_ignore", [True, False])
@pytest.mark.parametrize("case", DOMINANT_CASES, ids=str)
def test_dominant_class_matches_torch_mode_loop(backend, count_ignore, case):
    shape, grid, K, block = case
    labels = random_labels(shape, K, ignore_frac=0.3, block=block, seed=hash(case) % 1000)
    expected = ref.patch_dominant_class_loop(labels, grid, 255, count_ignore)
    got = run_on(backend, patch_dominant_class, labels, grid=grid, num_classes=K, count_ignore=count_ignore)
    assert got.dtype == torch.int64 and got.shape == (shape[0], *grid)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_dominant_class_ties_go_to_smallest_value(backend, dtype):
    # 2x2 patches of a 2x6 map (grid (1, 3)): [1 1 2 2] -> 1, [255 255 0 0] -> 0, [3 3 255 255] -> 3
    labels = torch.tensor([[[1, 2, 255, 0, 3, 255], [1, 2, 255, 0, 3, 255]]], dtype=dtype)
    got = run_on(backend, patch_dominant_class, labels, grid=(1, 3), num_classes=4)
    assert got.tolist() == [[[1, 0, 3]]]
    assert torch.equal(got.cpu(), ref.patch_dominant_class_loop(labels, (1, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dominant_class_negative_ignore_index_wins_ties(backend):
    labels = torch.tensor([[[-1, -1, 3, 3]]])
    got = run_on(backend, patch_dominant_class, labels, grid=1, num_classes=4, ignore_index=-1)
    assert got.item() == -1 == ref.patch_dominant_class_loop(labels, (1, 1), ignore_index=-1).item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dominant_class_unlabelled_patch(backend):
    labels = torch.full((1, 4, 4), 255)
    labels[0, 0, 0] = 7
    assert run_on(backend, patch_dominant_class, labels, grid=2).flatten().tolist() == [255] * 4
    got = run_on(backend, patch_dominant_class, labels, grid=2, count_ignore=False)
    assert got.flatten().tolist() == [7, 255, 255, 255]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [19, -3, 254])
def test_dominant_class_rejects_out_of_range_labels(backend, bad):
    labels = random_labels((2, 9, 9))
    labels[1, 4, 5] = bad
    with pytest.raises(ValueError, match=r"labels .*num_classes = 19.*ignore_index = 255.*at \(1, 4, 5\)"):
        run_on(backend, patch_dominant_class, labels, grid=3)


@NEEDS_CPP
def test_dominant_class_cpp_operator_checks_labels_itself():
    """The operator called directly (no Python check) raises instead of writing out of bounds."""
    labels = torch.full((1, 8, 8), 1000)
    with pytest.raises(ValueError, match=r"train ids .* found 1000 at \(0, 0, 0\)"):
        torch.ops.styleda_fast.patch_dominant_class(labels, 2, 2, 19, 255, True)


def test_dominant_class_argument_errors():
    labels = random_labels((1, 6, 6))
    with pytest.raises(TypeError, match="labels"):
        patch_dominant_class(labels.float())
    with pytest.raises(TypeError, match="labels"):
        patch_dominant_class(labels.numpy())
    with pytest.raises(ValueError, match="labels"):
        patch_dominant_class(labels[0])
    with pytest.raises(ValueError, match="grid"):
        patch_dominant_class(labels, grid=7)
    with pytest.raises(TypeError, match="grid"):
        patch_dominant_class(labels, grid=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        patch_dominant_class(labels, num_classes=0)
    with pytest.raises(TypeError, match="count_ignore"):
        patch_dominant_class(labels, count_ignore=1)
    with pytest.raises(ValueError, match="ignore_index"):
        patch_dominant_class(labels, ignore_index=3)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3),
    H=st.integers(1, 40),
    W=st.integers(1, 40),
    gh=st.integers(1, 5),
    gw=st.integers(1, 5),
    K=st.integers(1, 25),
    block=st.integers(1, 6),
    count_ignore=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_dominant_class_property(B, H, W, gh, gw, K, block, count_ignore, seed):
    gh, gw = min(gh, H), min(gw, W)
    labels = random_labels((B, H, W), K, ignore_frac=0.25, block=block, seed=seed)
    expected = ref.patch_dominant_class_loop(labels, (gh, gw), 255, count_ignore)
    assert torch.equal(ref.patch_dominant_class_bincount(labels, (gh, gw), K, 255, count_ignore), expected)
    for backend in [b for b in BACKENDS if b != "triton"]:  # triton: see the parametrized tests (interpreter speed)
        got = run_on(backend, patch_dominant_class, labels, grid=(gh, gw), num_classes=K, count_ignore=count_ignore)
        assert torch.equal(got.cpu(), expected), backend


@pytest.mark.skipif(not has_triton(), reason="triton not installed")
def test_dominant_class_triton_writes_every_output(monkeypatch):
    """Outputs are poisoned (-1) before the Triton kernels run: every element must be written."""
    from styleda_fast.ops.class_stats import _triton as tk

    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(-1))
    labels = random_labels((2, 13, 11), 5, seed=3).to(backend_device("triton"))
    got = tk.patch_dominant_class(labels, 3, 2, 5, 255, True)
    assert torch.equal(got.cpu(), ref.patch_dominant_class_loop(labels.cpu(), (3, 2)))


# ----------------------------------------------------------------------------- labels at feature resolution


def test_labels_to_size_matches_nearest_interpolation():
    labels = random_labels((2, 768, 768), block=16)
    small = labels_to_size(labels, (192, 192))
    expected = F.interpolate(labels[:, None].float(), size=(192, 192), mode="nearest")[:, 0].long()
    assert torch.equal(small, expected)
    odd = labels_to_size(labels[:, :50, :37], (7, 5))
    rows, cols = [h * 50 // 7 for h in range(7)], [w * 37 // 5 for w in range(5)]
    assert torch.equal(odd, labels[:, rows][:, :, cols])
    assert labels_to_size(labels, (768, 768)) is labels
    with pytest.raises(ValueError, match="size"):
        labels_to_size(labels, (0, 4))


# ----------------------------------------------------------------------------- class statistics

STAT_CASES = [
    # (B, C, H, W, K)
    (2, 5, 17, 23, 7),
    (1, 3, 1, 1, 4),  # a single pixel
    (3, 4, 9, 5, 19),  # many absent classes
    (1, 2, 40, 3, 2),
]


def features(shape, seed=0, mean=100.0, std=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(dtype)


def expected_stats(x, labels, K, eps=1e-5):
    return ref.class_mean_std(x.double(), labels, K, 255, eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("case", STAT_CASES, ids=str)
def test_class_mean_std_matches_reference(backend, dtype, case):
    B, C, H, W, K = case
    x = features((B, C, H, W), seed=sum(case), dtype=dtype)
    labels = random_labels((B, H, W), K, ignore_frac=0.3, block=2, seed=sum(case))
    mean, std, count = run_on(backend, class_mean_std, x, labels, K)
    e_mean, e_std, e_count = expected_stats(x, labels, K)
    assert mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(count.cpu(), e_count)
    # large mean (100), unit std: the std must stay accurate, which E[x^2]-E[x]^2 in float32 would not be
    rtol = TOLERANCE[torch.float64] if dtype == torch.float64 else TOLERANCE[torch.float32]
    assert_close(mean, e_mean, rtol, "mean")
    assert_close(std, e_std, 100 * rtol, "std")


def test_class_mean_std_small_classes_documented_values():
    x = features((1, 3, 2, 3), seed=1)
    labels = torch.tensor([[[0, 0, 1], [255, 0, 255]]])  # class 0: 3 pixels, class 1: 1 pixel, class 2: none
    for backend in BACKENDS:
        mean, std, count = run_on(backend, class_mean_std, x, labels, 3, eps=1e-4)
        assert count.tolist() == [[3, 1, 0]]
        assert_close(mean[0, 1], x[0, :, 0, 2], 1e-6, f"{backend}: one-pixel mean")
        assert_close(std[0, 1], torch.full((3,), 1e-2), 1e-5, f"{backend}: one-pixel std = sqrt(eps)")
        assert mean[0, 2].abs().sum() == 0 and std[0, 2].abs().sum() == 0, backend


def test_class_mean_std_large_mean_float32_is_sound():
    """Mean 1e4, std 1e-1: a float32 E[x^2]-E[x]^2 loses everything; two-pass keeps the std."""
    x = features((2, 4, 64, 64), seed=2, mean=1e4, std=0.1)
    labels = random_labels((2, 64, 64), 3, block=8, seed=2)
    e_mean, e_std, _ = expected_stats(x, labels, 3)
    for backend in BACKENDS:
        mean, std, _ = run_on(backend, class_mean_std, x, labels, 3)
        assert ((std.cpu().double() - e_std).abs() <= 1e-3 * e_std.clamp_min(1e-3)).all(), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_mean_std_gradient(backend):
    x = features((2, 3, 5, 4), seed=4, mean=2.0, dtype=torch.float64).requires_grad_()
    labels = random_labels((2, 5, 4), 4, ignore_frac=0.2, seed=4)
    labels[0, 0, 0], labels[0, 1:, :] = 3, 0  # class 3 has one pixel in image 0

    def fn(t):
        mean, std, _ = run_on(backend, class_mean_std, t, labels, 5)
        return mean, std

    if backend != "triton":  # the backward is shared; under the interpreter one comparison below is enough
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    # and the same gradient as autograd through the reference
    gm, gs = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    mean, std = fn(x)
    (g,) = torch.autograd.grad((mean * gm).sum() + (std * gs).sum(), x)
    xr = x.detach().clone().requires_grad_()
    rm, rs, _ = ref.class_mean_std_loop(xr, labels, 5)
    (gr,) = torch.autograd.grad((rm * gm).sum() + (rs * gs).sum(), xr)
    assert_close(g, gr, 1e-9, "grad x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_mean_std_argument_errors(backend):
    x = features((2, 3, 6, 6))
    labels = random_labels((2, 6, 6), 4)
    with styleda_fast.use_backend(backend) if backend != "triton" else styleda_fast.use_backend("reference"):
        with pytest.raises(ValueError, match="labels must have shape"):
            class_mean_std(x, labels[:, :5], 4)
        with pytest.raises(TypeError, match="labels"):
            class_mean_std(x, labels.float(), 4)
        with pytest.raises(ValueError, match="eps"):
            class_mean_std(x, labels, 4, eps=-1.0)
        with pytest.raises(TypeError, match="x"):
            class_mean_std(x.long(), labels, 4)
    bad = labels.clone()
    bad[1, 2, 3] = 4
    with pytest.raises(ValueError, match=r"at \(1, 2, 3\)"):
        run_on(backend, class_mean_std, x, bad, 4)


def test_class_mean_std_resize_labels():
    x = features((2, 3, 12, 12))
    labels = random_labels((2, 48, 48), 5, block=4)
    got = class_mean_std(x, labels, 5, resize_labels=True)
    want = class_mean_std(x, labels_to_size(labels, (12, 12)), 5)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    C=st.integers(1, 6),
    H=st.integers(1, 24),
    W=st.integers(1, 24),
    K=st.integers(1, 21),
    block=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_class_mean_std_property(B, C, H, W, K, block, seed):
    x = features((B, C, H, W), seed=seed, mean=10.0, std=3.0)
    labels = random_labels((B, H, W), K, ignore_frac=0.2, block=block, seed=seed)
    e_mean, e_std, e_count = expected_stats(x, labels, K)
    for backend in [b for b in BACKENDS if b != "triton"]:
        mean, std, count = run_on(backend, class_mean_std, x, labels, K)
        assert torch.equal(count, e_count)
        assert_close(mean, e_mean, 1e-5, f"{backend} mean")
        assert_close(std, e_std, 1e-3, f"{backend} std")


@pytest.mark.skipif(not has_triton(), reason="triton not installed")
def test_class_mean_std_triton_writes_every_output(monkeypatch):
    from styleda_fast.ops.class_stats import _triton as tk

    real_empty = torch.empty

    def poisoned(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    monkeypatch.setattr(torch, "empty", poisoned)
    monkeypatch.setattr(torch, "empty_like", lambda t, **k: poisoned(t.shape, dtype=t.dtype, device=t.device))
    device = backend_device("triton")
    x, labels = features((2, 3, 7, 9), seed=5), random_labels((2, 7, 9), 6, seed=5)
    mean, std, count = tk.class_mean_std(x.to(device), labels.to(device), 6, 1e-5)
    e_mean, e_std, e_count = expected_stats(x, labels, 6)
    assert torch.equal(count.cpu(), e_count)
    assert_close(mean, e_mean, 1e-5, "mean")
    assert_close(std, e_std, 1e-3, "std")


# ----------------------------------------------------------------------------- torch.library


@NEEDS_CPP
def test_opcheck():
    labels = random_labels((2, 11, 13), 5, seed=6)
    torch.library.opcheck(torch.ops.styleda_fast.patch_dominant_class, (labels, 3, 2, 5, 255, True))
    torch.library.opcheck(torch.ops.styleda_fast.patch_dominant_class, (labels.to(torch.uint8), 2, 3, 5, 255, False))
    x = features((2, 3, 11, 13), seed=6, dtype=torch.float64).requires_grad_()
    lab = labels.masked_fill(labels == 255, -1)
    torch.library.opcheck(torch.ops.styleda_fast.class_mean_std, (x, lab, 5, 1e-5))
    torch.library.opcheck(torch.ops.styleda_fast.class_mean_std, (x.detach().float(), labels, 5, 1e-5))


@NEEDS_CPP
def test_class_mean_std_compiles_fullgraph():
    x = features((2, 4, 10, 9), seed=7).requires_grad_()
    labels = random_labels((2, 10, 9), 6, seed=7)

    def step(x, labels):
        mean, std, count = torch.ops.styleda_fast.class_mean_std(x, labels, 6, 1e-5)
        return (mean * 2).sum() + std.sum(), count

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, count = compiled(x, labels)
    (g,) = torch.autograd.grad(loss, x)
    loss_e, count_e = step(x, labels)
    (g_e,) = torch.autograd.grad(loss_e, x)
    assert torch.equal(count, count_e)
    assert_close(loss, loss_e, 1e-6, "loss")
    assert_close(g, g_e, 1e-6, "grad")
