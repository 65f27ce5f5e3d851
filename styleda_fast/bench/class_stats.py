"""Benchmark family ``class_stats``:

* dominant class of 8 int64 label maps of 768x768, grid 3: ours against FAMix's per-patch ``torch.mode`` loop
  (``public``, ``reference_public.dominant_classes_public``) and a vectorized histogram (``eager``,
  ``class_stats.reference.patch_dominant_class_bincount``);
* ``class_mean_std`` on ``(8, 256, 192, 192)`` with 19 classes: against ``y.copy_(x)`` (the memory floor), the
  fastest plain PyTorch (:func:`class_mean_std_onehot`: one-hot matrix products, two-pass) and ``torch.compile`` of
  it; ``--full`` adds the index-add specification (``reference``);
* drawing the styles of 8 images x 9 patches from a bank of 10,000 styles, against FAMix's ``random.choice`` loop
  (``public``, ``class_stats.reference.sample_styles_loop``).

Label maps are spatially coherent (blocks of one class, like real segmentation maps), with ignore pixels. The setup
checks that the baselines give ours' numbers (the random draw excepted).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from styleda_fast.bank.style_bank import StyleBank
from styleda_fast.bench.harness import Case
from styleda_fast.compat.public_code import dominant_classes_public
from styleda_fast.devtools.testing import random_labels
from styleda_fast.ops.class_stats import class_mean_std, patch_dominant_class, reference


def coherent_labels(
    shape: tuple[int, int, int], num_classes: int = 19, block: int = 32, seed: int = 0, ignore_frac: float = 0.1
) -> torch.Tensor:
    """``(B, H, W)`` int64 train ids in blocks of ``block x block`` pixels, a fraction of them 255 (ignore)."""
    return random_labels(shape, num_classes, 255, ignore_frac, block, seed)


def class_mean_std_onehot(x: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255, eps=1e-5):
    """Per image and class mean/std (two-pass) as a user writes it fast: sums as one-hot matrix products."""
    B, C = x.shape[:2]
    lab = labels.flatten(1)
    slot = torch.where(lab == ignore_index, torch.full_like(lab, num_classes), lab)
    onehot = F.one_hot(slot, num_classes + 1)[..., :num_classes].to(x.dtype)  # (B, N, K)
    values = x.flatten(2)  # (B, C, N)
    count = onehot.sum(1)  # (B, K)
    mean = torch.bmm(values, onehot) / count.clamp_min(1)[:, None]  # (B, C, K)
    centered = values - torch.bmm(mean, onehot.transpose(1, 2))
    var = torch.bmm(centered * centered, onehot) / (count - 1).clamp_min(1)[:, None]
    std = torch.where(count[:, None] > 0, (var + eps).sqrt(), torch.zeros_like(var))
    return mean.transpose(1, 2), std.transpose(1, 2), count.long()


def _public_dominant(labels):
    """FAMix's loop, its lists turned into the ``(B, g, g)`` tensor ours returns."""
    return torch.tensor(dominant_classes_public(labels, 3)).T.reshape(labels.shape[0], 3, 3)


def check_baselines(device: torch.device) -> None:
    """The baselines compute ours' numbers (float64 statistics against the index-add specification)."""
    labels = coherent_labels((2, 30, 33), block=4, seed=3).to(device)
    ours = patch_dominant_class(labels, 3)
    for name, y in {
        "public": _public_dominant(labels),
        "eager": reference.patch_dominant_class_bincount(labels, (3, 3), 19),
    }.items():
        if not torch.equal(y.cpu(), ours.cpu()):
            raise AssertionError(f"class_stats: dominant class, {name} disagrees with ours")
    x = torch.randn(2, 5, 30, 33, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device) + 100
    expected = reference.class_mean_std(x, labels, 19)
    for name, got in {"ours": class_mean_std(x, labels, 19), "eager": class_mean_std_onehot(x, labels, 19)}.items():
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"class_mean_std {n}: {m}")


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    check_baselines(device)
    result = []
    # ---- dominant class per patch
    lshape = (2, 96, 96) if quick else (8, 768, 768)
    labels = coherent_labels(lshape, block=4 if quick else 32).to(device)
    labels_out = torch.empty_like(labels)
    nbytes = labels.numel() * labels.element_size()
    providers = {
        "copy": lambda: labels_out.copy_(labels),
        "ours": lambda: patch_dominant_class(labels, 3),
        "eager": lambda: reference.patch_dominant_class_bincount(labels, (3, 3), 19),
        "public": lambda: _public_dominant(labels),
    }
    result.append(Case("class_stats", "dominant class grid 3", str(lshape), providers, "public", nbytes))
    # ---- per-class statistics
    xshape = (2, 64, 48, 48) if quick else (8, 256, 192, 192)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(xshape, generator=gen) + 100.0).to(device)
    y = torch.empty_like(x)
    flabels = coherent_labels((xshape[0], *xshape[2:]), block=2 if quick else 8, seed=1).to(device)
    providers = {"copy": lambda: y.copy_(x), "ours": lambda: class_mean_std(x, flabels, 19)}
    if compile_baseline:
        compiled = torch.compile(class_mean_std_onehot)
        providers["compile"] = lambda: compiled(x, flabels, 19)
    providers["eager"] = lambda: class_mean_std_onehot(x, flabels, 19)
    if full:
        providers["reference"] = lambda: reference.class_mean_std(x, flabels, 19)
    result.append(Case("class_stats", "class_mean_std 19 classes", str(xshape), providers, "eager", x.numel() * 4))
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
    providers = {
        "copy": lambda: out.copy_(out),
        "ours": lambda: bank.sample_grid(classes, generator=sample_gen),
        "public": lambda: reference.sample_styles_loop(lists, classes.cpu(), rng=rng),
    }
    result.append(
        Case("class_stats", "bank sampling 8x9", f"bank {n_styles}x{C}", providers, "public", out.numel() * 4)
    )
    return result
