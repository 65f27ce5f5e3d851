"""What the tests, the GPU check scripts and the benchmarks share: sample inputs, tolerances per dtype, and one
comparison that explains its failures. Use it to test your own changes the way the package is tested::

    from styleda_fast.devtools.testing import STYLE_MIX_CASES, assert_close, style_mix_inputs

Inputs are fresh random numbers with large means (real features have them, and they catch ``E[x^2] - E[x]^2``),
never zeros; the shapes include grids that do not divide the size, 1-pixel patches, a grid equal to the size and
many channels on tiny planes.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from torch import Tensor

from styleda_fast.core.backend import backends
from styleda_fast.core.checks import acc_dtype

# Largest error allowed, relative to the largest magnitude of the float64 reference, per dtype of the kernel.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# Gradients go through one more reduction (and, in float32, the cancellation of the std term).
GRAD_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 5e-2}

# (shape, grid): grids that do not divide H/W, 1-pixel patches, one channel, a single row of patches, global,
# a grid equal to the size, many channels on tiny planes (several channel blocks in channels_last).
STYLE_MIX_CASES = [
    ((2, 3, 13, 17), (3, 3)),
    ((1, 4, 7, 9), (2, 3)),
    ((2, 2, 8, 8), (1, 1)),
    ((1, 2, 3, 3), (3, 3)),
    ((3, 1, 6, 5), (3, 1)),
    ((1, 5, 4, 11), (1, 4)),
    ((1, 40, 4, 5), (2, 2)),
]


def case_id(shape, grid) -> str:
    return f"{'x'.join(map(str, shape))}-g{grid[0]}x{grid[1]}"


def available_backends() -> list[str]:
    """Backends that can run on this machine (``reference``, ``cpp``, ``triton``)."""
    return [name for name, status in backends().items() if status.available]


def backend_device(backend: str) -> torch.device:
    """Where a backend's tensors live: CUDA for Triton on a GPU machine, else the CPU."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def kernel_dtypes(backend: str) -> list[torch.dtype]:
    """Dtypes a backend is tested in (the Triton interpreter has no bfloat16)."""
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    if backend == "triton" and backend_device(backend).type == "cpu":
        dtypes.remove(torch.bfloat16)
    return dtypes


def features(shape, dtype=torch.float32, device="cpu", channels_last=False, seed=0) -> Tensor:
    """``(B, C, H, W)`` features ``N(5, 3^2)``, drawn in float64 and rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclasses.dataclass
class StyleMixInputs:
    """One sample of the style-mix operators; per-patch tensors are ``(B, C, gh, gw)`` in the accumulation dtype."""

    x: Tensor
    grid: tuple[int, int]
    target_mean: Tensor
    target_std: Tensor
    mix: Tensor


def style_mix_inputs(shape, grid, dtype=torch.float32, device="cpu", channels_last=False, seed=0) -> StyleMixInputs:
    """x (see :func:`features`), target means ``N(1, 2^2)``, target stds in ``[0.5, 1.5)``, mix in ``[0, 1)``."""
    gen = torch.Generator().manual_seed(seed + 1)
    params = (shape[0], shape[1], *grid)
    acc = acc_dtype(dtype)

    def draw(scale, shift, normal=True):
        t = torch.randn(params, generator=gen, dtype=torch.float64) if normal else torch.rand(params, generator=gen)
        return (t.double() * scale + shift).to(device=device, dtype=acc)

    return StyleMixInputs(
        features(shape, dtype, device, channels_last, seed),
        tuple(grid),
        draw(2, 1),
        draw(1, 0.5, normal=False),
        draw(1, 0, normal=False),
    )


def random_labels(shape, num_classes=19, ignore=255, ignore_frac=0.2, block=1, seed=0, dtype=torch.int64) -> Tensor:
    """Random train ids with ignore pixels; ``block > 1`` makes spatially coherent maps (blocks of one class)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, W = shape
    h, w = -(-H // block), -(-W // block)
    lab = torch.randint(0, num_classes, (B, h, w), generator=gen)
    lab = torch.where(torch.rand(B, h, w, generator=gen) < ignore_frac, torch.full_like(lab, ignore), lab)
    lab = lab.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W]
    return lab.contiguous().to(dtype)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` over the finite reference values (inf where NaN/inf differ)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape or not torch.equal(torch.isnan(a), torch.isnan(e)):
        return float("inf")
    finite = torch.isfinite(e)
    if not torch.equal(a[~finite & ~torch.isnan(e)], e[~finite & ~torch.isnan(e)]):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(e[finite].abs().max().item(), 1e-30)
    return (a - e)[finite].abs().max().item() / scale


def assert_close(
    actual: Tensor, expected: Tensor, rtol: float | None = None, what: str = "output", scale: float | Tensor = 0.0
) -> None:
    """``|actual - expected| <= rtol * max(max|expected|, scale)`` elementwise, NaN exactly where expected is NaN,
    infinities equal. ``rtol`` defaults to :data:`TOLERANCE` of actual's dtype. ``scale``: the size of the terms
    that cancel to give ``expected`` when it is much smaller than they are (e.g. the gradient of a normalization
    over two pixels, which is 0 up to eps): rounding is relative to them; a tensor broadcastable to ``expected``
    gives that size per element. On failure, says how many elements differ,
    the first and the worst one and where, and whether NaN/inf appeared."""
    if rtol is None:
        rtol = TOLERANCE[actual.dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_ok = torch.isnan(a) == torch.isnan(e)
    finite = torch.isfinite(e)
    ref_max = max(e[finite].abs().max().item() if finite.any() else 1.0, 1e-30)
    if isinstance(scale, Tensor):
        scale = scale.detach().double().cpu().clamp_min(ref_max).expand_as(e)
    else:
        scale = torch.full_like(e, max(ref_max, scale))
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = (err > rtol * scale) | ~nan_ok | (torch.isinf(e) & (a != e))
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        worst = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ (rtol {rtol:g} of max|ref| {ref_max:.3g}, "
            f"of {scale[idx].item():.3g} at the first); "
            f"first at {idx}: {a[idx].item():.6g} vs {e[idx].item():.6g}; worst abs error {err.max().item():.3g} "
            f"at {worst}; NaN in actual {int(torch.isnan(a).sum())} / expected {int(torch.isnan(e).sum())}; "
            f"inf in actual {int(torch.isinf(a).sum())}"
        )
