"""Every registered operator, called directly (``torch.ops.styleda_fast.<op>``, the Triton launchers through the
interpreter path, the reference), refuses bad arguments with the same exception type on every backend: the C++
checks and the declaration's rules agree (issue 19 item 2, issue 22 item 16)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import available_backends, backend_device

import styleda_fast  # noqa: F401  (imports every family, which declares its operators)
from styleda_fast.core.library import interpreted, operators

BACKENDS = available_backends()


def _good_arguments(device: torch.device) -> dict[str, tuple]:
    """Valid arguments of every operator (fresh random numbers, float32, on ``device``)."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=gen).to(device)

    def positive(*shape):
        return (torch.rand(shape, generator=gen) + 0.5).to(device)

    x = randn(2, 3, 8, 8) * 2 + 1
    p = {name: positive(2, 3, 2, 2) for name in ("tm", "ts", "mix", "mean", "std", "a", "b", "c", "d")}
    labels = torch.randint(0, 19, (2, 8, 8), generator=gen).to(device)
    text = randn(4, 16)
    out = torch.nn.functional.normalize(randn(4, 2, 16), dim=-1)
    xn = randn(2, 3, 4, 4)
    return {
        "patch_mean_std": (x, 2, 2, 1e-5),
        "patch_mean_std_backward": (p["a"], p["b"], x, p["mean"], p["std"]),
        "local_style_mix": (x, p["tm"], p["ts"], p["mix"], 2, 2, True, 1e-5),
        "local_style_mix_into": (x, p["tm"], p["ts"], p["mix"], 2, 2, True, 1e-5, torch.empty_like(x)),
        "local_style_mix_backward": (randn(2, 3, 8, 8), x, p["mean"], p["std"], p["tm"], p["ts"], p["mix"], True, True),
        "local_style_mix_grad_x": (
            randn(2, 3, 8, 8),
            x,
            p["mean"],
            p["std"],
            p["tm"],
            p["ts"],
            p["mix"],
            p["a"],
            p["b"],
            p["c"],
            p["d"],
            True,
        ),  # fmt: skip
        "patch_dominant_class": (labels, 2, 2, 19, 255, True),
        "class_mean_std": (x, labels, 19, 1e-5),
        "noisy_text_projection": (text, 0.1, 2, 1, 0),
        "noisy_text_projection_backward": (randn(4, 2, 16), text, out, positive(4, 2)),
        "clip_cosine_loss": (randn(3, 16), randn(3, 16)),
        "clip_cosine_loss_backward": (randn(), randn(3, 16), randn(3, 16), True),
        "noisy_style_features": (xn, randn(2, 3), positive(2, 3), 0.1, 1, 0),
        "noisy_style_features_backward": (randn(2, 3, 4, 4), xn, randn(2, 3), positive(2, 3), True),
    }


# Non-tensor arguments with bad values: operator -> [(position, value)], each a ValueError.
BAD_VALUES = {
    "patch_mean_std": [(1, 0), (2, 9), (3, -1.0), (3, math.nan), (3, 1e39)],
    "local_style_mix": [(4, 0), (5, 9), (7, -1.0), (7, math.inf), (7, 1e39)],
    "local_style_mix_into": [(4, 3), (7, math.nan)],
    "patch_dominant_class": [(1, 0), (2, 9), (3, 0), (3, 2**21)],
    "class_mean_std": [(2, 0), (2, 2**21), (3, -1.0), (3, math.nan)],
    "noisy_text_projection": [(1, -0.5), (1, math.nan), (2, 0), (2, 2**31 - 1), (3, -1), (4, -1), (4, 2**32)],
    "noisy_style_features": [(3, -0.1), (3, math.inf), (4, -1), (5, -1), (5, 2**32)],
}


def _call(backend: str, name: str, args: tuple):
    if backend == "cpp":
        return getattr(torch.ops.styleda_fast, name)(*args)
    if backend == "triton":
        return (
            interpreted(name)(*args) if backend_device("triton").type == "cpu" else operators()[name].run_triton(*args)
        )
    return operators()[name].run_reference(*args)


def _backends_of(name: str) -> list[str]:
    return [b for b in BACKENDS if b != "reference" or operators()[name].reference is not None]


def _cases(name: str, args: tuple) -> list[tuple[str, tuple, type[Exception]]]:
    """(what, arguments, expected exception) for one operator."""
    cases = []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        wrong_dtype = a.float() if not a.is_floating_point() else a.to(torch.int32)
        cases.append((f"arg {i} dtype {wrong_dtype.dtype}", (*args[:i], wrong_dtype, *args[i + 1 :]), TypeError))
        if sum(isinstance(t, torch.Tensor) for t in args) > 1:  # a meta tensor among CPU tensors
            cases.append((f"arg {i} on meta", (*args[:i], a.to("meta"), *args[i + 1 :]), ValueError))
        if a.dim() > 0:
            cases.append((f"arg {i} with an extra dim", (*args[:i], a[None], *args[i + 1 :]), ValueError))
    for i, value in BAD_VALUES.get(name, []):
        cases.append((f"arg {i} = {value!r}", (*args[:i], value, *args[i + 1 :]), ValueError))
    return cases


def test_every_registered_operator_is_declared():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("styleda_fast::")}
    if not schemas:
        pytest.skip("the compiled extension is not loaded")
    output_cache = {
        "empty_cached_like",
        "output_cache_bytes",
        "output_cache_limit",
        "release_output_cache",
        "cpu_allocator_wrapped",
    }
    assert schemas - output_cache == set(operators())
    assert set(_good_arguments(torch.device("cpu"))) == set(operators())


@pytest.mark.parametrize("name", sorted(_good_arguments(torch.device("cpu"))))
def test_good_arguments_run_on_every_backend(name):
    """The baseline of the bad-argument test: the unmodified arguments pass every backend's checks."""
    for backend in _backends_of(name):
        _call(backend, name, _good_arguments(backend_device(backend))[name])


@pytest.mark.parametrize("name", sorted(_good_arguments(torch.device("cpu"))))
def test_bad_arguments_raise_the_same_exception_type_on_every_backend(name):
    results = {}
    for backend in _backends_of(name):
        args = _good_arguments(backend_device(backend))[name]
        for what, bad, expected in _cases(name, args):
            try:
                _call(backend, name, bad)
                got = None
            except (TypeError, ValueError, RuntimeError, NotImplementedError, IndexError) as exc:
                got = type(exc)
            results.setdefault(what, {})[backend] = (got, expected)
    wrong = {
        f"{what} (expected {next(iter(per.values()))[1].__name__})": {
            b: g.__name__ if g else "no error" for b, (g, _) in per.items()
        }
        for what, per in results.items()
        if any(g is not e for g, e in per.values())
    }
    assert not wrong, f"{name}: {wrong}"
