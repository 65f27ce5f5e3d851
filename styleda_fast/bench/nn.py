"""Benchmark family ``nn``: the augmentation layers of :mod:`styleda_fast.nn` (MixStyle, permuted AdaIN, DSU, PODA's
and FAMix's bank transfer), forward and forward+backward at a classification shape (64, 256, 56, 56) and a
segmentation shape (8, 256, 192, 192), float32, every layer acting (p = 1).

Providers (from :mod:`styleda_fast.nn.bench_cases`, one input and one set of random draws per layer, so all compute
the same numbers): ``ours`` (the fused functional forms), ``public`` (the public code's math in eager PyTorch, the
code a user replaces) and ``compile`` (``torch.compile`` of it). The case name also reports the bytes autograd saves
for backward, ours against public (counted with ``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import torch

from styleda_fast.bench.harness import Case
from styleda_fast.nn.bench_cases import cases as layer_cases
from styleda_fast.nn.bench_cases import saved_bytes

LAYERS = ("mixstyle", "permuted_adain", "dsu", "poda", "famix")


def _copy_provider(x: torch.Tensor):
    out = torch.empty_like(x)
    return lambda: out.copy_(x)


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    shapes = [(4, 64, 28, 28)] if quick else [(64, 256, 56, 56), (8, 256, 192, 192)]
    providers = ("ours", "public", "compile") if compile_baseline else ("ours", "public")
    result = []
    for shape in shapes:
        table = layer_cases(shape, device, layers=LAYERS, providers=providers)
        x = torch.randn(shape, device=device)
        nbytes = x.numel() * x.element_size()
        for layer in LAYERS:
            row = table[layer]
            saved = {p: saved_bytes(row[p]["forward_backward"]) for p in ("ours", "public")}
            for kind, moved in (("forward", 2 * nbytes), ("forward_backward", 5 * nbytes)):
                providers_of_case = {"copy": _copy_provider(x)}
                providers_of_case.update({p: row[p][kind] for p in providers})
                label = {"forward": "fwd", "forward_backward": "fwd+bwd"}[kind]
                name = f"{layer} {label}"
                if kind == "forward_backward":
                    name += f", saved {saved['ours'] / 2**20:.1f}/{saved['public'] / 2**20:.0f} MiB"
                result.append(
                    Case("nn", name, str(tuple(shape)), providers_of_case, replaces="public", bytes_moved=moved)
                )
    return result
