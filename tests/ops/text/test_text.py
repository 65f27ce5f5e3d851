"""Text family: noisy_text_projection, clip_cosine_loss, noisy_style_features on every backend against the float64
plain-PyTorch references; noise statistics; encode_prompts against the manual recipe on a random-weight RN50."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, assert_close, available_backends, backend_device

import styleda_fast
from styleda_fast import (
    FAMIX_STYLES,
    IMAGENET_TEMPLATES,
    clip_cosine_loss,
    encode_prompts,
    famix_descriptions,
    noisy_style_features,
    noisy_text_projection,
    use_backend,
)
from styleda_fast.core.library import triton_launchers
from styleda_fast.ops.feature_noise import reference as reference_features
from styleda_fast.ops.philox import philox4x32
from styleda_fast.ops.text import reference as reference_text

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]
NOISE_TOL = 2e-5  # the kernels draw normals in float32 (log/cos/sin rounding); the reference in float64


def _dtypes(backend):
    dtypes = [torch.float32, torch.float64, torch.float16]
    if backend == "cpp":
        dtypes.append(torch.bfloat16)  # the Triton interpreter has no bfloat16
    return dtypes


def _kernels(backend):
    """The raw kernels of a backend (operators, or the Triton launchers for CPU tensors under the interpreter)."""
    if backend == "triton" and backend_device(backend).type == "cpu":
        return triton_launchers("text")
    return torch.ops.styleda_fast


def _randn(*shape, seed=0, dtype=torch.float64, device="cpu", scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)


# Fresh tensors from torch.empty come filled with NaN, so an element a kernel forgot to write fails.
pytestmark = pytest.mark.usefixtures("poison_fresh_memory")


# ================================================= the noise reference


def test_reference_philox_known_answers():
    """Philox4x32-10 known-answer vectors of Random123 (kat_vectors): the reference really is Philox."""
    cases = [
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0x299F31D0 << 32) | 0xA4093822,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        got = philox4x32(key, *counter)
        assert tuple(int(g) for g in got) == expected


def test_reference_noise_is_standard_normal():
    eps = reference_features.feature_noise(1 << 16, seed=3)
    assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    assert not torch.equal(eps, reference_features.feature_noise(1 << 16, seed=4))


# ================================================= noisy_text_projection

TEXT_SHAPES = [(1, 1, 1), (3, 2, 7), (2, 3, 1000), (1, 2, 4099)]  # 4099: rows longer than one Triton tile


@pytest.mark.parametrize("backend", BACKENDS)
def test_noisy_text_projection_matches_reference(backend):
    device = backend_device(backend)
    for dtype in _dtypes(backend):
        for K, S, D in TEXT_SHAPES:
            if backend == "reference" and D > 1000:
                continue
            text = _randn(K, D, seed=K + D, dtype=dtype, device=device, scale=2.0, shift=0.5)
            with use_backend(backend):
                out = noisy_text_projection(text, 0.05, samples=S, seed=2**40 + 7, offset=3)
                clean = noisy_text_projection(text, 0.0, samples=S, seed=1)
            assert out.shape == (K, S, D) and out.dtype == dtype
            text64 = text.double().cpu()
            eps = reference_text.text_noise(K, S, D, 2**40 + 7, offset=3)
            tol = max(TOLERANCE[dtype], NOISE_TOL)
            assert_close(
                out, reference_text.noisy_text_projection(text64, 0.05, eps), tol, f"{backend} {dtype} {K, S, D}"
            )
            expected_clean = F.normalize(text64, dim=-1)[:, None].expand(K, S, D)
            assert_close(clean, expected_clean, TOLERANCE[dtype], f"{backend} {dtype} sigma=0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noisy_text_projection_seeds(backend):
    device = backend_device(backend)
    text = _randn(4, 33, device=device, dtype=torch.float32)
    with use_backend(backend):
        a = noisy_text_projection(text, 0.1, samples=6, seed=11)
        b = noisy_text_projection(text, 0.1, samples=6, seed=11)
        c = noisy_text_projection(text, 0.1, samples=6, seed=12)
        first = noisy_text_projection(text, 0.1, samples=2, seed=11)
        rest = noisy_text_projection(text, 0.1, samples=4, seed=11, offset=2)
        torch.manual_seed(5)
        d = noisy_text_projection(text, 0.1, samples=6)
        e = noisy_text_projection(text, 0.1, samples=6)
        torch.manual_seed(5)
        f = noisy_text_projection(text, 0.1, samples=6)
        gen = torch.Generator().manual_seed(5)
        g = noisy_text_projection(text, 0.1, samples=6, generator=gen)
    assert torch.equal(a, b), "same seed, same output"
    assert (a - c).abs().amax(dim=-1).min() > 1e-3, "different seeds, different noise in every row and sample"
    assert (a[:, 1:] - a[:, :-1]).abs().amax(dim=-1).min() > 1e-3, "samples differ"
    assert torch.equal(torch.cat([first, rest], dim=1), a), "offset continues the sample streams"
    assert torch.equal(d, f) and torch.equal(d, g) and not torch.equal(d, e), "seed=None draws from the generator"
    assert_close(a.norm(dim=-1), torch.ones(4, 6), 1e-6, "unit norm")


def test_noisy_text_projection_cpu_does_not_depend_on_threads():
    text = _randn(37, 300, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = noisy_text_projection(text, 0.1, samples=5, seed=9)
        torch.set_num_threads(max(2, threads))
        many = noisy_text_projection(text, 0.1, samples=5, seed=9)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_noisy_text_projection_noise_is_gaussian_with_sigma(backend):
    """Pre-normalization vectors (out * norm, the operator's debug output) minus the clean target, over sigma."""
    device = backend_device(backend)
    K, S, D, sigma = 4, 64 if backend == "triton" else 256, 1024, 0.03
    text = _randn(K, D, device=device, seed=1)
    out, norm = _kernels(backend).noisy_text_projection(text, sigma, S, 1234, 0)
    v = (out * norm[..., None]).cpu()
    eps = (v - F.normalize(text.cpu(), dim=-1)[:, None]) / sigma
    assert_close(eps, reference_text.text_noise(K, S, D, 1234), 1e-5, "the specified stream")
    flat = eps.flatten()
    n = flat.numel()
    assert abs(flat.mean().item()) < 5 / math.sqrt(n)
    assert abs(flat.std().item() - 1) < 5 * math.sqrt(2 / n), "standard deviation sigma"
    z = (flat - flat.mean()) / flat.std()
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15 / n), "skewness 0"
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n), "kurtosis 3"
    for a, b in ((eps[..., 1:], eps[..., :-1]), (eps[:, 1:], eps[:, :-1]), (eps[1:], eps[:-1])):
        corr = (a * b).mean().item()  # neighbouring coordinates, samples, rows
        assert abs(corr) < 5 / math.sqrt(a.numel()), "independent"
    quantiles = torch.tensor([0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    assert_close(torch.quantile(flat[: 1 << 24], quantiles), normal, 0.02, "quantiles")


@pytest.mark.parametrize(
    "backend, sigma", [(b, s) for b in KERNEL_BACKENDS for s in ((0.01, 0.03, 0.1) if b == "cpp" else (0.03,))]
)
def test_noisy_text_projection_mean_cosine(backend, sigma):
    """E[cos(noisy, clean)] ~= 1/sqrt(1 + D sigma^2) (bias < 1e-4 at D = 1024, checked against float64 sampling)."""
    device = backend_device(backend)
    K, S, D = 4, 64 if backend == "triton" else 2048, 1024
    text = _randn(K, D, device=device, dtype=torch.float32, seed=2)
    with use_backend(backend):
        out = noisy_text_projection(text, sigma, samples=S, seed=77)
    cos = (out * F.normalize(text, dim=-1)[:, None]).sum(-1).double().cpu()
    expected = 1 / math.sqrt(1 + D * sigma**2)
    standard_error = cos.std().item() / math.sqrt(cos.numel())
    assert abs(cos.mean().item() - expected) < 5 * standard_error + 1e-4, (cos.mean().item(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noisy_text_projection_gradients(backend):
    device = backend_device(backend)
    text = _randn(3, 1000, device=device, seed=4, scale=2).requires_grad_()
    weight = _randn(3, 2, 1000, seed=5, device=device)
    with use_backend(backend):
        (noisy_text_projection(text, 0.05, samples=2, seed=8) * weight).sum().backward()
    t64 = text.detach().double().cpu().requires_grad_()
    eps = reference_text.text_noise(3, 2, 1000, 8)
    (reference_text.noisy_text_projection(t64, 0.05, eps) * weight.cpu()).sum().backward()
    assert_close(text.grad, t64.grad, NOISE_TOL, f"{backend} grad text")
    small = _randn(2, 5, device=device, seed=6).requires_grad_()
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: noisy_text_projection(t, 0.3, samples=3, seed=2), (small,))


# ================================================= clip_cosine_loss

LOSS_SHAPES = [(1, 1), (1, 7), (5, 1000), (3, 1024), (700, 1000)]  # 700 x 1000: the two-stage Triton reduction


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detach_norm", [False, True])
def test_clip_cosine_loss_matches_reference(backend, detach_norm):
    device = backend_device(backend)
    for dtype in _dtypes(backend):
        for B, D in LOSS_SHAPES:
            if backend == "triton" and B * D > 10**5 and dtype != torch.float32:
                continue  # the interpreter is slow; one dtype covers the two-stage path
            image = _randn(B, D, seed=B, dtype=dtype, device=device, scale=3, shift=0.2)
            for text_shape in ((B, D), (1, D), (D,)):
                text = _randn(*text_shape, seed=D, dtype=dtype, device=device)
                with use_backend(backend):
                    loss = clip_cosine_loss(image, text, detach_norm=detach_norm)
                expected = reference_text.clip_cosine_loss(image.double().cpu(), text.double().cpu(), detach_norm)
                assert loss.shape == () and loss.dtype == dtype
                tol = TOLERANCE[dtype]  # absolute: the loss is in [0, 2] and may be 0 (then no relative scale)
                assert abs(loss.item() - expected.item()) <= tol, (backend, dtype, (B, D), text_shape, loss, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detach_norm", [False, True])
def test_clip_cosine_loss_gradients(backend, detach_norm):
    """Gradients against float64 autograd of the public recipe (detach_norm=True: z / |z|.detach() first)."""
    device = backend_device(backend)
    for B, D in ((1, 7), (6, 1000)):
        image = _randn(B, D, seed=1, device=device, scale=2, shift=0.3).requires_grad_()
        text = _randn(B, D, seed=2, device=device).requires_grad_()
        with use_backend(backend):
            (3.0 * clip_cosine_loss(image, text, detach_norm=detach_norm)).backward()
        i64, t64 = (t.detach().cpu().requires_grad_() for t in (image, text))
        (3.0 * reference_text.clip_cosine_loss(i64, t64, detach_norm)).backward()
        assert_close(image.grad, i64.grad, 1e-9, f"{backend} grad image")
        assert_close(text.grad, t64.grad, 1e-9, f"{backend} grad text")
    image = _randn(3, 5, seed=3, device=device).requires_grad_()
    text = _randn(1, 5, seed=4, device=device).requires_grad_()
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda i, t: clip_cosine_loss(i, t, detach_norm=detach_norm), (image, text))


def test_public_recipe_gradient_equals_plain_cosine_gradient():
    """Dividing z by its detached norm before the cosine changes neither value nor gradient (the cosine is scale
    invariant and its gradient is orthogonal to z), which is why one kernel serves both detach_norm values."""
    z = _randn(4, 64, seed=7, scale=5).requires_grad_()
    t = F.normalize(_randn(4, 64, seed=8), dim=-1)
    grads = []
    for detach in (False, True):
        (g,) = torch.autograd.grad(reference_text.clip_cosine_loss(z, t, detach), z)
        grads.append(g)
    assert_close(grads[0], grads[1], 1e-12)


def test_clip_cosine_loss_compiles_fullgraph():
    image = _randn(8, 1024, dtype=torch.float32, seed=1).requires_grad_()
    text = _randn(1024, dtype=torch.float32, seed=2)
    compiled = torch.compile(lambda i, t: clip_cosine_loss(i, t, detach_norm=True), fullgraph=True)
    loss = compiled(image, text)
    loss.backward()
    i2 = image.detach().clone().requires_grad_()
    eager = clip_cosine_loss(i2, text, detach_norm=True)
    eager.backward()
    assert_close(loss, eager, 1e-6)
    assert_close(image.grad, i2.grad, 1e-6, "grad")


# ================================================= noisy_style_features

STYLE_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (2, 4, 33, 17)]  # the last spans chunks and crosses planes inside them


def _style_params(shape, kind, device, seed=1):
    B, C = shape[:2]
    full = {"channel": (C,), "item": (B, C), "item4": (B, C, 1, 1)}[kind]
    mean = _randn(*full, seed=seed, device=device)
    std = (_randn(*full, seed=seed + 1, device=device).abs() + 0.2).to(device)
    return mean, std


def _as_bc(p, shape):
    p = p.double().cpu()
    return p.reshape(p.shape[0], p.shape[1]) if p.dim() == 4 else p.expand(shape[0], shape[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["channel", "item", "item4"])
def test_noisy_style_features_matches_reference(backend, kind):
    device = backend_device(backend)
    for dtype in _dtypes(backend):
        for shape in STYLE_SHAPES:
            xn = _randn(*shape, seed=3, dtype=dtype, device=device)
            mean, std = _style_params(shape, kind, device)
            with use_backend(backend):
                out = noisy_style_features(xn, mean, std, 0.3, seed=2**62 + 5, offset=9)
                plain = noisy_style_features(xn, mean, std, 0.0, seed=1)
            assert out.shape == shape and out.dtype == dtype
            x64, m64, s64 = xn.double().cpu(), _as_bc(mean, shape), _as_bc(std, shape)
            eps = reference_features.feature_noise(xn.numel(), 2**62 + 5, 9).view(shape)
            tol = max(TOLERANCE[dtype], NOISE_TOL)
            expected = reference_features.noisy_style_features(x64, m64, s64, 0.3, eps)
            assert_close(out, expected, tol, f"{backend} {dtype} {shape}")
            expected_plain = reference_features.noisy_style_features(x64, m64, s64, 0.0, eps)
            assert_close(plain, expected_plain, TOLERANCE[dtype], f"{backend} {dtype} {shape} no noise")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["channel", "item4"])
def test_noisy_style_features_gradients(backend, kind):
    device = backend_device(backend)
    shape = (2, 4, 33, 17)
    xn = _randn(*shape, seed=3, device=device).requires_grad_()
    mean, std = (p.requires_grad_() for p in _style_params(shape, kind, device))
    weight = _randn(*shape, seed=4, device=device)
    with use_backend(backend):
        (noisy_style_features(xn, mean, std, 0.5, seed=3) * weight).sum().backward()
    refs = [t.detach().double().cpu().requires_grad_() for t in (xn, mean, std)]
    x64, m64, s64 = refs
    if kind == "channel":
        m_bc, s_bc = m64.expand(2, 4), s64.expand(2, 4)
    else:
        m_bc, s_bc = m64.reshape(2, 4), s64.reshape(2, 4)
    (reference_features.noisy_style_features(x64, m_bc, s_bc, 0.0, torch.zeros(shape)) * weight.cpu()).sum().backward()
    for got, ref, name in zip((xn, mean, std), refs, ("xn", "mean", "std"), strict=True):
        assert got.grad.shape == got.shape
        assert_close(got.grad, ref.grad, 1e-9, f"{backend} {kind} grad {name}")
    small = [_randn(1, 2, 2, 3, seed=5, device=device), *_style_params((1, 2), "item", device)]
    small = [t.requires_grad_() for t in small]
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda x, m, s: noisy_style_features(x, m, s, 0.2, seed=4), small)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_noisy_style_features_noise(backend):
    device = backend_device(backend)
    shape = (2, 8, 64, 64)
    xn = _randn(*shape, seed=3, device=device, dtype=torch.float32)
    mean, std = _style_params(shape, "item", device)
    with use_backend(backend):
        a = noisy_style_features(xn, mean, std, 0.25, seed=5)
        b = noisy_style_features(xn, mean, std, 0.25, seed=5)
        c = noisy_style_features(xn, mean, std, 0.25, seed=5, offset=1)
        d = noisy_style_features(xn, mean, std, 0.25)  # a fresh seed each call
        e = noisy_style_features(xn, mean, std, 0.25)
        base = noisy_style_features(xn, mean, std, 0.0)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(d, e)
    eps = ((a - base) / 0.25).double().flatten().cpu()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n) and abs(eps.std().item() - 1) < 5 * math.sqrt(2 / n)


# ================================================= operators: opcheck, errors


def _opcheck_samples():
    text = _randn(3, 10, dtype=torch.float32)
    image = _randn(4, 10, dtype=torch.float32, seed=1)
    xn = _randn(2, 3, 4, 5, dtype=torch.float32)
    mean, std = _randn(2, 3, dtype=torch.float32, seed=2), _randn(2, 3, dtype=torch.float32, seed=3).abs()
    out, norm = torch.ops.styleda_fast.noisy_text_projection(text, 0.2, 2, 5, 0)
    ops = torch.ops.styleda_fast
    return [
        (ops.noisy_text_projection.default, (text.clone().requires_grad_(), 0.2, 2, 5, 0)),
        (ops.noisy_text_projection_backward.default, (torch.randn_like(out), text, out, norm)),
        (ops.clip_cosine_loss.default, (image.clone().requires_grad_(), image.flip(0).clone().requires_grad_())),
        (ops.clip_cosine_loss_backward.default, (torch.tensor(1.5), image, image.flip(0).contiguous(), True)),
        (
            ops.noisy_style_features.default,
            (xn.clone().requires_grad_(), mean.clone().requires_grad_(), std.clone().requires_grad_(), 0.1, 3, 0),
        ),
        (ops.noisy_style_features_backward.default, (torch.randn_like(xn), xn, mean, std, True)),
    ]


@pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the compiled operators")
@pytest.mark.parametrize("index", range(6))
def test_opcheck(index):
    op, args = _opcheck_samples()[index]
    torch.library.opcheck(op, args)


def test_errors_name_the_argument():
    text = torch.randn(3, 8)
    cases = [
        (TypeError, "text", lambda: noisy_text_projection([1.0], 0.1)),
        (TypeError, "text", lambda: noisy_text_projection(torch.ones(3, 8, dtype=torch.int64), 0.1)),
        (ValueError, "text", lambda: noisy_text_projection(torch.randn(2, 3, 4), 0.1)),
        (ValueError, "sigma", lambda: noisy_text_projection(text, -0.1)),
        (ValueError, "sigma", lambda: noisy_text_projection(text, float("nan"))),
        (ValueError, "samples", lambda: noisy_text_projection(text, 0.1, samples=0)),
        (TypeError, "seed", lambda: noisy_text_projection(text, 0.1, seed=1.5)),
        (ValueError, "seed", lambda: noisy_text_projection(text, 0.1, seed=-1)),
        (
            ValueError,
            "seed or generator",
            lambda: noisy_text_projection(text, 0.1, seed=1, generator=torch.Generator()),
        ),
        (ValueError, "offset", lambda: noisy_text_projection(text, 0.1, samples=2, offset=2**32 - 1)),
        (ValueError, "image_features", lambda: clip_cosine_loss(torch.randn(0, 8), text)),
        (ValueError, "text_targets", lambda: clip_cosine_loss(text, torch.randn(2, 8))),
        (ValueError, "text_targets", lambda: clip_cosine_loss(text, torch.randn(3, 7))),
        (TypeError, "detach_norm", lambda: clip_cosine_loss(text, text, detach_norm=1)),
        (ValueError, "xn", lambda: noisy_style_features(torch.randn(2, 3, 4), torch.zeros(3), torch.ones(3), 0.1)),
        (ValueError, "mean", lambda: noisy_style_features(torch.randn(2, 3, 4, 4), torch.zeros(4), torch.ones(3), 0.1)),
        (TypeError, "std", lambda: noisy_style_features(torch.randn(2, 3, 4, 4), torch.zeros(3), 1.0, 0.1)),
        (
            ValueError,
            "feature_noise",
            lambda: noisy_style_features(torch.randn(1, 3, 2, 2), torch.zeros(3), torch.ones(3), -1),
        ),
        (ValueError, "descriptions", lambda: encode_prompts(object(), None, [])),
        (ValueError, "templates", lambda: encode_prompts(object(), None, ["x"], ["no placeholder"])),
        (ValueError, "batch_size", lambda: encode_prompts(object(), None, ["x"], batch_size=0)),
        (TypeError, "model", lambda: encode_prompts(object(), None, ["x"])),
        (ValueError, "classes", lambda: famix_descriptions([19])),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


# ================================================= prompts and encode_prompts


def test_prompt_data():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert sorted(IMAGENET_TEMPLATES) == sorted(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert len(FAMIX_STYLES) == 20 == len(set(FAMIX_STYLES)) and "Cyberpunk Cityscape style" in FAMIX_STYLES
    assert len(styleda_fast.CITYSCAPES_CLASSES) == 19 and styleda_fast.CITYSCAPES_CLASSES[6] == "traffic light"
    descriptions = famix_descriptions(generator=torch.Generator().manual_seed(0))
    assert len(descriptions) == 20 and descriptions[-1] == "photo"
    for name, description in zip(styleda_fast.CITYSCAPES_CLASSES, descriptions[:-1], strict=True):
        style = description[: -len(name) - 1]
        assert description.endswith(" " + name) and style in FAMIX_STYLES
    again = famix_descriptions(generator=torch.Generator().manual_seed(0))
    assert descriptions == again
    assert famix_descriptions([255, 13], styles=["Urban Grit style"]) == ["photo", "Urban Grit style car"]


@pytest.fixture(scope="module")
def rn50():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model("RN50", pretrained=None).eval()
    return model, open_clip.get_tokenizer("RN50")


def test_encode_prompts_equals_manual_recipe(rn50):
    model, tokenizer = rn50
    descriptions = famix_descriptions([13, 255], generator=torch.Generator().manual_seed(1))
    templates = IMAGENET_TEMPLATES[:3]
    expected = reference_text.encode_prompts_manual(model, tokenizer, descriptions, templates)
    for batch_size in (2, 1000):  # 2: batches cut through descriptions
        got = encode_prompts(model, tokenizer, descriptions, templates, batch_size=batch_size)
        assert got.shape == (2, 1024) and got.dtype == torch.float32 and not got.requires_grad
        assert_close(got, expected, 1e-5, f"batch_size {batch_size}")
    assert_close(got.norm(dim=-1), torch.ones(2), 1e-6, "unit rows")
    per_template = encode_prompts(model, tokenizer, descriptions, templates, normalize_templates=True)
    expected = reference_text.encode_prompts_manual(model, tokenizer, descriptions, templates, normalize_templates=True)
    assert_close(per_template, expected, 1e-5, "normalize_templates")
    single = encode_prompts(model, tokenizer, "driving at night", templates[:1])
    assert single.shape == (1, 1024)


def test_noisy_ops_compile_fullgraph_with_a_seed():
    """With an explicit seed (no seed draw, which would read a value on the host) both noisy ops trace whole."""
    text = _randn(5, 64, dtype=torch.float32).requires_grad_()
    noisy = torch.compile(lambda t: noisy_text_projection(t, 0.1, samples=3, seed=7), fullgraph=True)
    assert torch.equal(noisy(text), noisy_text_projection(text, 0.1, samples=3, seed=7))
    xn = _randn(2, 3, 4, 5, dtype=torch.float32)
    mean = torch.zeros(3, requires_grad=True)
    std = torch.ones(3, requires_grad=True)
    features = torch.compile(lambda x, m, s: noisy_style_features(x, m, s, 0.1, seed=3), fullgraph=True)
    out = features(xn, mean, std)
    out.sum().backward()
    assert torch.equal(out, noisy_style_features(xn, mean, std, 0.1, seed=3))
    assert_close(mean.grad, (xn > 0).sum(dim=(0, 2, 3)).float(), 1e-6, "grad mean")
