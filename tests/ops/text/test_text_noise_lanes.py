"""The vector noise kernels (core/csrc/noise_lanes.inc: AVX2, AVX-512) against the portable ones: bit-identical
outputs and gradients of the CPU noise operators on odd shapes, with each ISA path in its own process (the ISA is
chosen once per process by STYLEDA_FAST_CPU_ISA), streaming output stores on and off; the default path against the
float64 reference; every output element written (outputs reused from the output cache poisoned with NaN); float64
gradients by gradcheck."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_text_noise_pinned import _digest, _pattern  # the pinned test's inputs and digests

import styleda_fast  # noqa: F401  (loads the kernels)
from styleda_fast.ops.feature_noise.reference import feature_noise
from styleda_fast.ops.text import reference

ops = torch.ops.styleda_fast

# (K, D, samples): row lengths that are not multiples of 4, 8, 16 or 64 lanes
TEXT_SHAPES = [(3, 1, 1), (2, 3, 3), (3, 17, 1), (2, 1023, 3), (1, 130, 2), (2, 1029, 1)]
# (B, C, H, W) with H*W odd, planes shorter and longer than a chunk of 1024 elements, and one plane of whole chunks
FEATURE_SHAPES = [(2, 3, 7, 9), (1, 2, 33, 31), (2, 3, 45, 47), (1, 2, 32, 64)]


def _style(B, C):
    return _pattern(B, C, mul=31, mod=17), _pattern(B, C, mul=13, mod=11).abs() + 0.5


def lane_digests() -> dict[str, str]:
    """Digests of outputs and gradients of both operators on every shape above (float32, and float64 text)."""
    digests = {}
    for K, D, S in TEXT_SHAPES:
        text = _pattern(K, D)
        out, norm = ops.noisy_text_projection(text, 0.07, S, 2**40 + 3, 11)
        grad = ops.noisy_text_projection_backward(_pattern(K, S, D, mul=37), text, out, norm)
        out64, norm64 = ops.noisy_text_projection(text.double(), 0.07, S, 2**40 + 3, 11)
        for name, t in (("out", out), ("norm", norm), ("grad", grad), ("out64", out64), ("norm64", norm64)):
            digests[f"text {K}x{D}x{S} {name}"] = _digest(t)
    for shape in FEATURE_SHAPES:
        xn = _pattern(*shape, mul=104729)
        mean, std = _style(*shape[:2])
        for fn in (0.3, 0.0):
            digests[f"features {shape} {fn}"] = _digest(ops.noisy_style_features(xn, mean, std, fn, 2**62 + 5, 9))
        grads = ops.noisy_style_features_backward(_pattern(*shape, mul=37), xn, mean, std, True)
        for name, t in zip(("grad_xn", "grad_mean", "grad_std"), grads):
            digests[f"features {shape} {name}"] = _digest(t)
    return digests


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))


@pytest.fixture(scope="module")
def digests_by_isa() -> dict[str, dict[str, str]]:
    """lane_digests() in one process per ISA setting ("" is the default: AVX-512 where the CPU has it), in parallel;
    "+stream": with streaming output stores forced on (they are otherwise used from 32 MB of output only)."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import json, test_text_noise_lanes as t; print(json.dumps(t.lane_digests()))"
    procs = {}
    for isa in ("generic", "avx2", "", "avx2+stream", "+stream"):
        env = dict(os.environ, STYLEDA_FAST_CPU_ISA=isa.removesuffix("+stream"))
        env["STYLEDA_FAST_STREAMING_STORES"] = "1" if isa.endswith("+stream") else "0"
        env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
        procs[isa] = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    result = {}
    for isa, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        result[isa] = json.loads(out.strip().splitlines()[-1])
    return result


def test_avx2_lanes_give_the_portable_bits(digests_by_isa):
    assert digests_by_isa["avx2"] == digests_by_isa["generic"]


@pytest.mark.skipif(not _has_avx512(), reason="the CPU has no AVX-512 (F, BW, DQ, VL): the default path is AVX2")
def test_avx512_lanes_give_the_portable_bits(digests_by_isa):
    assert digests_by_isa[""] == digests_by_isa["generic"]


@pytest.mark.parametrize("isa", ["avx2", ""], ids=["avx2", "default"])
def test_streaming_stores_give_the_same_bits(digests_by_isa, isa):
    assert digests_by_isa[isa + "+stream"] == digests_by_isa["generic"]


def test_this_process_gives_the_same_bits(digests_by_isa):
    assert lane_digests() == digests_by_isa[os.environ.get("STYLEDA_FAST_CPU_ISA", "")]


@pytest.mark.parametrize(("K", "D", "S"), TEXT_SHAPES)
def test_text_matches_the_float64_reference(K, D, S):
    text = _pattern(K, D)
    out, norm = ops.noisy_text_projection(text, 0.07, S, 2**40 + 3, 11)
    eps = reference.text_noise(K, S, D, 2**40 + 3, 11)
    expected = reference.noisy_text_projection(text.double(), 0.07, eps)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    u = torch.nn.functional.normalize(text.double(), dim=-1)[:, None, :] + 0.07 * eps
    torch.testing.assert_close(norm.double(), u.norm(dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", FEATURE_SHAPES)
def test_features_match_the_float64_reference(shape):
    xn = _pattern(*shape, mul=104729)
    mean, std = _style(*shape[:2])
    out = ops.noisy_style_features(xn, mean, std, 0.3, 2**62 + 5, 9)
    eps = feature_noise(xn.numel(), 2**62 + 5, 9).view(shape)
    expected = reference.noisy_style_features(xn.double(), mean.double(), std.double(), 0.3, eps)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_cached_outputs_poisoned_with_nan_are_overwritten():
    # outputs of 8 MB and more come from the output cache: a NaN-filled freed one must come back fully written
    text = _pattern(2049, 1023)
    first, _ = ops.noisy_text_projection(text, 0.05, 1, 5, 0)
    expected = first.clone()
    first.fill_(float("nan"))
    del first
    again, _ = ops.noisy_text_projection(text, 0.05, 1, 5, 0)
    assert torch.equal(again, expected)

    xn = _pattern(1, 3, 1025, 1023, mul=104729)
    mean, std = _style(1, 3)
    first = ops.noisy_style_features(xn, mean, std, 0.3, 5, 0)
    expected = first.clone()
    first.fill_(float("nan"))
    del first
    again = ops.noisy_style_features(xn, mean, std, 0.3, 5, 0)
    assert torch.equal(again, expected)


def test_float64_gradients_by_gradcheck():
    text = torch.randn(3, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: styleda_fast.noisy_text_projection(t, 0.1, samples=3, seed=4), (text,))
    xn = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    std = (torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, m, s: styleda_fast.noisy_style_features(x, m, s, 0.2, seed=4), (xn, mean, std)
    )
