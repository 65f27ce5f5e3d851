"""The style-mix CPU kernels with streaming (non-temporal) output stores, which they use for outputs of 32 MB and
more: forced on small odd shapes by STYLEDA_FAST_STREAMING_STORES=1 (read once per process, so each setting runs
in its own process). Outputs and gradients must be bit-identical to those of regular stores (=0), on rows that
start and end inside cache lines, in both layouts, with a batch stride, in every dtype; every element written
(outputs poisoned with NaN before the kernels write them); and close to the float64 reference."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch

import styleda_fast  # noqa: F401  (loads the kernels)
from styleda_fast.ops.style_mix import reference

ops = torch.ops.styleda_fast

# (B, C, H, W, grid, layout): widths that are not multiples of 16 floats, grids that split them unevenly; the rows
# of the second, third and last cases (320 and 101 lanes, 97 channels) are long enough for the AVX-512 kernels
CASES = [
    (2, 3, 37, 53, (3, 4), "nchw"),
    (1, 2, 64, 80, (1, 1), "nchw"),
    (1, 3, 41, 101, (2, 3), "nchw"),
    (2, 5, 19, 23, (2, 3), "channels_last"),
    (4, 97, 5, 7, (2, 2), "channels_last"),
    (3, 4, 11, 13, (2, 2), "batch_strided"),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _input(B, C, H, W, layout, dtype, gen):
    if layout == "batch_strided":  # NCHW images 7 elements further apart than C*H*W
        flat = torch.randn(B, C * H * W + 7, generator=gen, dtype=torch.float64)
        return flat.to(dtype)[:, 7:].unflatten(1, (C, H, W))
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def run_cases() -> dict:
    """Digests of every output and gradient, and the largest error of the float32 forward against float64."""
    gen = torch.Generator().manual_seed(7)
    digests, errors = {}, {}
    for B, C, H, W, grid, layout in CASES:
        for dtype in DTYPES:
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            x = _input(B, C, H, W, layout, dtype, gen)
            tm = torch.randn(B, C, *grid, generator=gen, dtype=torch.float64).to(acc)
            ts = (torch.rand(B, C, *grid, generator=gen, dtype=torch.float64) + 0.5).to(acc)
            mix = torch.rand(B, C, *grid, generator=gen, dtype=torch.float64).to(acc)
            key = f"{(B, C, H, W)} {grid} {layout} {dtype}"
            out = torch.full_like(x, float("nan"))
            ops.local_style_mix_into(x, tm, ts, mix, grid[0], grid[1], True, 1e-5, out)
            assert not out.isnan().any(), key
            y, mean, std = ops.local_style_mix(x, tm, ts, mix, grid[0], grid[1], False, 1e-5)
            assert not y.isnan().any(), key
            dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
            gx, gmm, gms = ops.local_style_mix_backward(dy, x, mean, std, tm, ts, mix, True, True)
            gx_only = ops.local_style_mix_grad_x(dy, x, mean, std, tm, ts, mix, gmm, gms, gmm * 0.3, gms * 0.2, True)
            gstats = ops.patch_mean_std_backward(mean * 0.1 + 1, std * 0.2 - 1, x, mean, std)
            for name, t in (("into", out), ("out", y), ("grad_x", gx), ("grad_x_only", gx_only), ("stats", gstats)):
                assert not t.isnan().any(), f"{key} {name}"
                digests[f"{key} {name}"] = _digest(t)
            if dtype == torch.float32:
                expected = reference.local_style_mix(x.double(), tm.double(), ts.double(), grid, mix.double(), None)
                errors[key] = (y.double() - expected).abs().max().item()
    return {"digests": digests, "errors": errors}


def _in_process(streaming: str) -> dict:
    env = {**os.environ, "STYLEDA_FAST_STREAMING_STORES": streaming}
    code = "import json, test_style_mix_streaming_stores as t; print(json.dumps(t.run_cases()))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=os.path.dirname(__file__),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_streaming_stores_write_the_same_bits_as_regular_stores():
    regular, streamed = _in_process("0"), _in_process("1")
    assert streamed["digests"] == regular["digests"]
    assert len(streamed["digests"]) == len(CASES) * len(DTYPES) * 5
    for key, error in streamed["errors"].items():
        assert error < 1e-4, (key, error)
