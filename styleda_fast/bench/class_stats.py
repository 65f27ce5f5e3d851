"""Benchmark cases of the class-statistics family (``styleda-fast bench --family class_stats``).

* dominant class of 8 int64 label maps of 768x768, grid 3, against FAMix's per-patch ``torch.mode`` loop;
* ``class_mean_std`` on ``(8, 256, 192, 192)`` with 19 classes against ``y.copy_(x)`` (the memory floor), the
  eager reference and ``torch.compile`` of it;
* drawing the styles of 8 images x 9 patches from a bank of 10,000 styles, against FAMix's ``random.choice`` loop.

Label maps are spatially coherent (blocks of one class, like real segmentation maps), with ignore pixels.
The baselines come from ``styleda_fast.reference_class_stats``, so benchmarks and tests share them.
"""

from __future__ import annotations

import random

import torch

from styleda_fast import reference_class_stats as reference
from styleda_fast.class_stats import class_mean_std, patch_dominant_class
from styleda_fast.style_bank import StyleBank


def coherent_labels(
    shape: tuple[int, int, int], num_classes: int = 19, block: int = 32, seed: int = 0, ignore_frac: float = 0.1
) -> torch.Tensor:
    """``(B, H, W)`` int64 train ids in blocks of ``block x block`` pixels, a fraction of them 255 (ignore)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, W = shape
    h, w = -(-H // block), -(-W // block)
    low = torch.randint(0, num_classes, (B, h, w), generator=gen)
    low = torch.where(torch.rand(B, h, w, generator=gen) < ignore_frac, torch.full_like(low, 255), low)
    return low.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W].contiguous()


def class_stats_cases(device: torch.device, quick: bool, compile_baseline: bool) -> list:
    """The family's ``Case`` list (see ``styleda_fast.bench``); ``quick`` gives small shapes (a smoke test)."""
    from styleda_fast.bench import Case  # here: bench imports this module for CASE_FAMILIES

    cases = []
    # ---- dominant class per patch
    lshape = (2, 96, 96) if quick else (8, 768, 768)
    labels = coherent_labels(lshape, block=4 if quick else 32).to(device)
    labels_out = torch.empty_like(labels)
    nbytes = labels.numel() * labels.element_size()
    cases.append(
        Case(
            "class_stats",
            "dominant class grid 3",
            str(lshape),
            nbytes,
            {
                "copy": lambda: labels_out.copy_(labels),
                "eager": lambda: reference.patch_dominant_class_loop(labels, (3, 3)),
                "ours": lambda: patch_dominant_class(labels, 3),
            },
        )
    )
    # ---- per-class statistics
    xshape = (2, 64, 48, 48) if quick else (8, 256, 192, 192)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(xshape, generator=gen) + 100.0).to(device)
    y = torch.empty_like(x)
    flabels = coherent_labels((xshape[0], *xshape[2:]), block=2 if quick else 8, seed=1).to(device)
    providers = {
        "copy": lambda: y.copy_(x),
        "eager": lambda: reference.class_mean_std(x, flabels, 19),
        "ours": lambda: class_mean_std(x, flabels, 19),
    }
    if compile_baseline:
        compiled = torch.compile(reference.class_mean_std)
        providers["compile"] = lambda: compiled(x, flabels, 19)
    cases.append(Case("class_stats", "class_mean_std 19 classes", str(xshape), x.numel() * 4, providers))
    # ---- style bank sampling
    C, n_styles = (64, 1000) if quick else (256, 10_000)
    bank = StyleBank(C, device=device)
    ids = torch.randint(0, 20, (n_styles,), generator=gen)
    ids[ids == 19] = 255
    bank.add(torch.randn(n_styles, C, generator=gen), torch.rand(n_styles, C, generator=gen) + 0.5, ids)
    lists: dict[int, list] = {}
    for k, m, s in zip(ids.tolist(), bank.mean, bank.std, strict=True):
        lists.setdefault(k, []).append((m, s))
    classes = torch.randint(0, 19, (8, 3, 3), generator=gen).to(device)
    sample_gen = torch.Generator(device=device).manual_seed(0)
    rng = random.Random(0)
    out = torch.empty(2, 8, 9, C, device=device)
    cases.append(
        Case(
            "class_stats",
            "bank sampling 8x9",
            f"bank {n_styles}x{C}",
            out.numel() * 4,
            {
                "copy": lambda: out.copy_(out),
                "eager": lambda: reference.sample_styles_loop(lists, classes.cpu(), rng=rng),
                "ours": lambda: bank.sample_grid(classes, generator=sample_gen),
            },
        )
    )
    return cases
