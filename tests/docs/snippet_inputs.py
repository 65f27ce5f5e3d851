"""Made-up inputs for the docs' code blocks (``<!-- setup: ... -->`` lines import them): small random features,
label maps with every class, and banks saved under the file names the docs use, in the current directory."""

from __future__ import annotations

import torch

from styleda_fast import StyleBank


def bank(channels: int, per_class: int = 2, seed: int = 0) -> StyleBank:
    """A FAMix-style bank: ``per_class`` random styles for each of the 19 Cityscapes classes and the fallback 255."""
    gen = torch.Generator().manual_seed(seed)
    result = StyleBank(channels)
    ids = torch.arange(20).repeat_interleave(per_class)
    ids[ids == 19] = 255
    mean = torch.randn(len(ids), channels, generator=gen) * 0.5 + 1.0
    std = torch.rand(len(ids), channels, generator=gen) + 0.5
    result.add(mean, std, ids)
    return result


def save_banks(channels: int = 256) -> None:
    """The bank files the docs load, written into the current directory."""
    for k, name in enumerate(("poda_night", "famix_bank", "famix_styles")):
        bank(channels, seed=k).save(f"{name}.safetensors")


def labels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(batch, size, size)`` int64 label maps: random classes in [0, 19) and some ignored pixels (255)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.randint(0, 19, (batch, size, size), generator=gen)
    out[torch.rand(out.shape, generator=gen) < 0.1] = 255
    return out


def famix_inputs(batch: int = 2, channels: int = 256, size: int = 48) -> dict:
    """The names the FAMix and PODA snippets use: features ``f1``/``x``/``feats``, ``labels`` (4x the feature size,
    as layer1 is to the crop), a ``bank``, mixing weights ``s``, a generator ``gen`` and per-image styles."""
    gen = torch.Generator().manual_seed(0)
    f1 = torch.relu(torch.randn(batch, channels, size, size, generator=gen) + 0.3)
    return {
        "B": batch,
        "C": channels,
        "f1": f1,
        "x": f1.clone(),
        "feats": f1.clone(),
        "labels": labels(batch, 4 * size),
        "bank": bank(channels),
        "s": torch.distributions.Beta(0.1, 0.1).sample((batch, channels)),
        "gen": torch.Generator().manual_seed(1),
        "style_mean": torch.randn(batch, channels, generator=gen) + 1.0,
        "style_std": torch.rand(batch, channels, generator=gen) + 0.5,
    }
