"""The CPU noise operators give the same bits for the same seed on every ISA path and in every build: their outputs
on fixed inputs are pinned by hash (recorded from the kernels of commit 22362b8, before the generator was rewritten
with AVX2 intrinsics), in this process and in one that forces the portable kernels (STYLEDA_FAST_CPU_ISA=generic).
The inputs are exact rationals (no random generator, no transcendental), so they are the same on every machine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch

import styleda_fast  # noqa: F401  (loads the kernels)

ops = torch.ops.styleda_fast

# sha256 prefixes of the outputs' bytes: noisy_text_projection out/norm (float32), noisy_style_features (float32),
# noisy_text_projection out (float64).
PINNED = {"text": "cda90cce46b0cfdc", "norm": "275dd34d474f94e6", "features": "4127ed01b6a59da2",
          "text64": "0b806fd35d7a9295"}  # fmt: skip


def _pattern(*shape, mul=7919, mod=1000):
    n = 1
    for s in shape:
        n *= s
    a = torch.arange(n, dtype=torch.int64)
    return (((a * mul) % mod - mod // 2).to(torch.float32) / 250).reshape(shape)


def _digest(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def noise_digests() -> dict[str, str]:
    """Digests of the noise operators on the fixed inputs (odd sizes: D = 1029 is not a multiple of the 4 outputs
    of a counter; 37*41 pixels per plane do not fill whole chunks)."""
    text = _pattern(37, 1029)
    out, norm = ops.noisy_text_projection(text, 0.05, 3, 2**40 + 7, 5)
    xn = _pattern(3, 5, 37, 41, mul=104729)
    mean = _pattern(3, 5, mul=31, mod=17)
    std = _pattern(3, 5, mul=13, mod=11).abs() + 0.5
    features = ops.noisy_style_features(xn, mean, std, 0.3, 2**62 + 5, 9)
    out64, _ = ops.noisy_text_projection(text.double(), 0.05, 3, 2**40 + 7, 5)
    return {"text": _digest(out), "norm": _digest(norm), "features": _digest(features), "text64": _digest(out64)}


def test_noise_bits_are_pinned():
    assert noise_digests() == PINNED


def test_noise_bits_are_pinned_on_the_portable_path():
    env = dict(os.environ, STYLEDA_FAST_CPU_ISA="generic")
    code = "import json, test_text_noise_pinned as t; print(json.dumps(t.noise_digests()))"
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == PINNED
