"""Benchmark cases of the augmentation layers: ours (fused), the public code's math in eager PyTorch, and that math
under ``torch.compile``.

    from styleda_fast.nn.bench_cases import cases, saved_bytes
    table = cases((64, 256, 56, 56), "cuda")
    table["mixstyle"]["ours"]["forward_backward"]()   # one timed call

``cases`` fixes one input and one set of random draws per layer, so every provider computes the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from styleda_fast.bank import StyleBank
from styleda_fast.nn import functional as F
from styleda_fast.nn import reference as R
from styleda_fast.ops.style_mix import local_style_mix

PROVIDERS = ("ours", "public", "compile")


def _features(shape, device, dtype, generator) -> Tensor:
    B, C, H, W = shape
    x = torch.randn(shape, generator=generator, dtype=dtype).mul_(2.0)
    x += torch.rand((1, C, 1, 1), generator=generator, dtype=dtype) * 4 - 1  # channel means far from 0
    return x.to(device)


def _layer_functions(shape, device, generator) -> dict[str, dict[str, Callable[[Tensor], Tensor]]]:
    """For each layer, ``{"ours": f, "public": f}`` mapping features to augmented features (same draws)."""
    B, C, H, W = shape
    perm = torch.randperm(B, generator=generator).to(device)
    lam = F.beta_weights(0.1, 0.1, (B,), generator).to(device)
    noise_mean = torch.randn((B, C), generator=generator).to(device)
    noise_std = torch.randn((B, C), generator=generator).to(device)
    bank = StyleBank(C, num_classes=0, class_names=())
    bank.add(torch.randn((16, C), generator=generator) + 1, torch.rand((16, C), generator=generator) + 0.5, 255)
    poda_mean, poda_std = (t.to(device)[:, :, None, None] for t in bank.sample_any(B, generator=generator))
    famix_mean, famix_std = (
        t.reshape(B, 3, 3, C).permute(0, 3, 1, 2).contiguous().to(device)
        for t in bank.sample_any(B * 9, generator=generator)
    )
    uniform = torch.rand((B, C), generator=generator).to(device)
    beta = F.beta_weights(0.1, 0.1, (B, C), generator).to(device)
    return {
        "mixstyle": {
            "ours": lambda x: F.mix_style(x, perm, lam, 1e-6),
            "public": lambda x: R.mixstyle(x, perm, lam, 1e-6),
        },
        "permuted_adain": {
            "ours": lambda x: F.permuted_adain(x, perm, 1e-5),
            "public": lambda x: R.permuted_adain(x, perm, 1e-5, eps_after_sqrt=True),
        },
        "dsu": {
            "ours": lambda x: F.dsu(x, noise_mean, noise_std, 1e-6),
            "public": lambda x: R.dsu(x, noise_mean, noise_std, 1e-6),
        },
        "poda": {
            "ours": lambda x: local_style_mix(x, poda_mean, poda_std, grid=1, mix=uniform),
            "public": lambda x: R.patch_transfer(x, poda_mean, poda_std, (1, 1), uniform, "relu"),
        },
        "famix": {
            "ours": lambda x: local_style_mix(x, famix_mean, famix_std, grid=3, mix=beta),
            "public": lambda x: R.patch_transfer(x, famix_mean, famix_std, (3, 3), beta, "relu"),
        },
    }


def cases(
    shape: tuple[int, int, int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    layers: tuple[str, ...] | None = None,
    providers: tuple[str, ...] = PROVIDERS,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Callable[[], object]]]]:
    """``cases[layer][provider][kind]``: a callable without arguments running one ``"forward"`` (under
    ``torch.no_grad``: no autograd bookkeeping) or one ``"forward_backward"`` (a random output gradient).

    Layers: ``mixstyle``, ``permuted_adain``, ``dsu``, ``poda``, ``famix``. Providers: ``ours`` (the fused
    functional forms), ``public`` (:mod:`styleda_fast.nn.reference`, eager), ``compile`` (the same reference under
    ``torch.compile``; compiled on first call, so warm up before timing).
    """
    generator = torch.Generator().manual_seed(seed)
    x = _features(shape, device, dtype, generator)
    x_grad = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    table = {}
    for layer, fns in _layer_functions(shape, device, generator).items():
        if layers is not None and layer not in layers:
            continue
        row = {}
        for provider in providers:
            if provider == "compile":
                fn = torch.compile(fns["public"], dynamic=False)
            else:
                fn = fns[provider]
            row[provider] = {"forward": _forward(fn, x), "forward_backward": _forward_backward(fn, x_grad, grad_out)}
        table[layer] = row
    return table


def _forward(fn, x):
    def run():
        with torch.no_grad():
            return fn(x)

    return run


def _forward_backward(fn, x, grad_out):
    def run():
        x.grad = None
        fn(x).backward(grad_out)
        return x.grad

    return run


def saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the tensors that autograd saves for the backward of ``fn()`` (each storage counted once), e.g.
    ``saved_bytes(lambda: F.mix_style(x.requires_grad_(), perm, lam))``."""
    storages: dict[int, int] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())
