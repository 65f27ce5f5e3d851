"""Benchmark family ``famix_step``: one FAMix training step's augmentation for a batch of 8, end to end: dominant
classes of 768x768 label maps, a style per patch drawn from a bank of 20 x 50 styles, patch statistics, mixing,
ReLU. ``public`` is the algorithm as FAMix writes it (``reference_public.famix_step_public``: Python loops,
``torch.mode`` per patch, full-resolution maps built on the CPU and copied to the device); ``ours`` is
``patch_dominant_class`` + ``StyleBank`` + ``local_style_mix`` (``compat.famix.transfer_fast``). The style draws
are random on both sides (different generators), so the two run the same algorithm, not the same numbers: the
setup checks that both find the same dominant classes; the ``style_mix`` family compares the transfer itself on
equal styles."""

from __future__ import annotations

import random

import torch

from styleda_fast.bank.style_bank import StyleBank
from styleda_fast.bench.harness import Case
from styleda_fast.compat.famix import CITYSCAPES_NAMES, transfer_fast
from styleda_fast.compat.public_code import dominant_classes_public, famix_step_public
from styleda_fast.ops.class_stats import patch_dominant_class


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    B, C, size = (2, 32, 48) if quick else (8, 256, 192)
    gen = torch.Generator().manual_seed(0)
    features = (torch.randn(B, C, size, size, generator=gen) * 2 + 1).to(device)
    blocks = torch.randint(0, 19, (B, 12, 12), generator=gen)
    blocks[torch.rand(B, 12, 12, generator=gen) < 0.1] = 255
    labels = blocks.repeat_interleave(size * 4 // 12, 1).repeat_interleave(size * 4 // 12, 2)  # spatially coherent
    styles_per_class = 50
    class_ids = torch.arange(20).repeat_interleave(styles_per_class)
    class_ids[class_ids == 19] = 255
    bank_mean = torch.randn(len(class_ids), C, generator=gen)
    bank_std = torch.rand(len(class_ids), C, generator=gen) + 0.5
    names = [*CITYSCAPES_NAMES, "255"]
    saved_params = {f"{n}_{k}": [] for n in names for k in ("mu", "std")}
    for row, c in enumerate(class_ids.tolist()):
        name = "255" if c == 255 else CITYSCAPES_NAMES[c]
        saved_params[name + "_mu"].append(bank_mean[row].view(C, 1, 1))
        saved_params[name + "_std"].append(bank_std[row].view(C, 1, 1))
    bank = StyleBank(C, device=device)
    bank.add(bank_mean.to(device), bank_std.to(device), class_ids.to(device))
    s = torch.distributions.Beta(0.1, 0.1).sample((B, C, 1, 1)).to(device)
    labels_dev = labels.to(device)
    out = torch.empty_like(features)
    rng = random.Random(0)
    sampler = torch.Generator(device=device).manual_seed(0)

    public_classes = torch.tensor(dominant_classes_public(labels, 3)).T.reshape(B, 3, 3)  # (patch, image) lists
    if not torch.equal(patch_dominant_class(labels_dev, 3).cpu(), public_classes):
        raise AssertionError("famix_step: ours and the public code disagree on the dominant classes")

    def ours():
        return transfer_fast(features, patch_dominant_class(labels_dev, 3), bank, s, generator=sampler)

    providers = {
        "copy": lambda: out.copy_(features),
        "ours": ours,
        "public": lambda: famix_step_public(features, labels, saved_params, s, CITYSCAPES_NAMES, rng),
    }
    nbytes = features.numel() * features.element_size()
    shape = str(tuple(features.shape))  # the label maps: 4x the features' resolution
    return [Case("famix_step", "famix step augmentation", shape, providers, replaces="public", bytes_moved=2 * nbytes)]
