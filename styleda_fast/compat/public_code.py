"""Plain-PyTorch transcriptions of the public PODA/FAMix augmentation, written from its behaviour, in the public code's
style: Python loops over patches and images, ``torch.mode`` per patch, style maps built at full resolution on the
CPU and copied to the device. They are what ``styleda_fast.compat`` must reproduce, and the "public algorithm"
baseline of the end-to-end benchmark. Not for use in training.
"""

from __future__ import annotations

import random as _random

import torch
from torch import Tensor


def calc_mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-image statistics ``(N, C, 1, 1)``: mean and ``sqrt(unbiased var + eps)``."""
    N, C = feat.shape[:2]
    var = feat.reshape(N, C, -1).var(dim=2) + eps
    return feat.reshape(N, C, -1).mean(dim=2).view(N, C, 1, 1), var.sqrt().view(N, C, 1, 1)


def pin_forward(content: Tensor, style_mean: Tensor, style_std: Tensor) -> Tensor:
    """PODA's PIN output: content normalized with its own statistics, restyled, ReLU."""
    mean, std = calc_mean_std(content)
    return torch.relu((content - mean) / std * style_std + style_mean)


def poda_transfer(features: Tensor, mu_t: Tensor, std_t: Tensor, s: Tensor | None) -> Tensor:
    """PODA's transfer branch: global AdaIN toward ``(B, C, 1, 1)`` targets, optional ``(B, C)`` mixing, ReLU."""
    mean, std = calc_mean_std(features)
    normalized = (features - mean) / std
    if s is not None:
        s = s[:, :, None, None]
        mu_t, std_t = s * mean + (1 - s) * mu_t, s * std + (1 - s) * std_t
    return torch.relu(std_t * normalized + mu_t)


def dominant_classes_public(labels: Tensor, div: int = 3, class_names=None) -> list:
    """FAMix's ``most_list``: for each patch (row-major), for each image, ``torch.mode`` of the patch's labels,
    as a class name (or the train id when ``class_names`` is None), 255 for the ignore class."""
    B, H, W = labels.shape
    ph, pw = H // div, W // div
    most_list = []
    for p in range(div * div):
        i, j = divmod(p, div)
        most = []
        for b in range(B):
            value = int(torch.mode(labels[b, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].flatten()).values)
            most.append(255 if value == 255 else (class_names[value] if class_names else value))
        most_list.append(most)
    return most_list


def famix_transfer(features: Tensor, most_list, saved_params: dict, s: Tensor | None, rng=_random) -> Tensor:
    """FAMix's transfer branch: per-patch statistics and normalization in a loop, a style drawn per (patch, image)
    from the dict-of-lists bank with ``rng.choice`` (fallback '255' for an empty class), full-resolution target and
    statistic maps built on the CPU, copied to the device, mixed with ``s (B, C, 1, 1)``, ReLU."""
    B, C, H, W = features.shape
    div = int(round(len(most_list) ** 0.5))
    ph, pw = H // div, W // div
    device = features.device
    maps = [torch.zeros(B, C, H, W, dtype=features.dtype) for _ in range(4)]  # on the CPU, as the public code
    mean_map, std_map, target_mean_map, target_std_map = maps
    normalized = torch.empty_like(features)
    for p in range(div * div):
        i, j = divmod(p, div)
        rows, cols = slice(i * ph, (i + 1) * ph), slice(j * pw, (j + 1) * pw)
        patch = features[:, :, rows, cols]
        mean, std = calc_mean_std(patch)
        mean_map[:, :, rows, cols] = mean.expand(B, C, ph, pw).cpu()
        std_map[:, :, rows, cols] = std.expand(B, C, ph, pw).cpu()
        normalized[:, :, rows, cols] = (patch - mean) / std
        for b, entry in enumerate(most_list[p]):
            key = str(entry) if saved_params.get(str(entry) + "_mu") else "255"
            idx = rng.choice(list(range(len(saved_params[key + "_mu"]))))
            target_mean_map[b, :, rows, cols] = saved_params[key + "_mu"][idx].reshape(C, 1, 1).expand(C, ph, pw)
            target_std_map[b, :, rows, cols] = saved_params[key + "_std"][idx].reshape(C, 1, 1).expand(C, ph, pw)
    target_mean_map, target_std_map = target_mean_map.to(device), target_std_map.to(device)
    if s is not None:
        target_mean_map = s * mean_map.to(device) + (1 - s) * target_mean_map
        target_std_map = s * std_map.to(device) + (1 - s) * target_std_map
    return torch.relu(target_std_map * normalized + target_mean_map)


def famix_step_public(features: Tensor, labels: Tensor, saved_params: dict, s: Tensor, class_names, rng=_random):
    """One FAMix training step's augmentation, end to end, as the public code does it."""
    most_list = dominant_classes_public(labels, 3, class_names)
    return famix_transfer(features, most_list, saved_params, s, rng)


def pin_mining_loop(visual, content: Tensor, targets: Tensor, steps: int, clamp_std: bool = True,
                    detach_norm: bool = True, lr: float = 1.0, pool_to: int | None = 56):  # fmt: skip
    """The public PIN optimization for one public batch, the loss averaged over the batch.

    ``visual`` is an open_clip ModifiedResNet (its layer2..layer4 and attention pool run on the styled features).
    Returns the mined ``(mean, std)``, each ``(N, C)``.
    """
    import torch.nn.functional as F

    mean0, std0 = calc_mean_std(content)
    normalized = (content - mean0) / std0
    style_mean = torch.nn.Parameter(mean0.clone())
    style_std = torch.nn.Parameter(std0.clone())
    optimizer = torch.optim.SGD([style_mean, style_std], lr=lr, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        if clamp_std:
            style_std.data.clamp_(min=0)
        features = torch.relu(normalized * style_std + style_mean)
        if pool_to is not None:
            features = F.adaptive_avg_pool2d(features, pool_to)
        z = visual.attnpool(visual.layer4(visual.layer3(visual.layer2(features))))
        if detach_norm:
            z = z / z.norm(dim=-1, keepdim=True).clone().detach()
        loss = (1 - torch.cosine_similarity(targets, z, dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return style_mean.detach().flatten(1), style_std.detach().flatten(1)


def pin_on_tokens(visual, split_block: int, tokens: Tensor, targets: Tensor, steps: int, *, clamp_std: bool = False,
                  relu: bool = False, lr: float = 1.0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """PODA's PIN loop (:func:`pin_mining_loop`) carried over to ViT tokens, written out in plain PyTorch as a user
    would (no public code exists for ViTs): the style is the per-channel mean/std of the patch tokens (class token
    excluded); the synthesized patch tokens ``act(std_s * xn + mean_s)`` (``act``: ReLU with ``relu``, else the
    identity) follow the unchanged class token through blocks ``split_block..`` of the open_clip
    ``VisionTransformer`` ``visual``, its pooling and ``proj``; SGD (momentum 0.9, weight decay 1e-4) on
    ``mean(1 - cos)`` with the embedding divided by its detached norm. ``tokens (N, 1 + h*w, C)``; returns
    ``(mean, std)``, each ``(N, C)``."""
    cls, patches = tokens[:, :1], tokens[:, 1:]
    mean0 = patches.mean(dim=1)
    std0 = (patches.var(dim=1, unbiased=True) + 1e-5).sqrt()
    normalized = (patches - mean0[:, None]) / std0[:, None]
    style_mean = torch.nn.Parameter(mean0.clone())
    style_std = torch.nn.Parameter(std0.clone())
    optimizer = torch.optim.SGD([style_mean, style_std], lr=lr, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        if clamp_std:
            style_std.data.clamp_(min=0)
        features = normalized * style_std[:, None] + style_mean[:, None]
        if relu:
            features = torch.relu(features)
        x = torch.cat([cls, features], dim=1)
        for block in visual.transformer.resblocks[split_block:]:
            x = block(x)
        pooled, _ = visual._pool(x)
        z = pooled @ visual.proj
        z = z / z.norm(dim=-1, keepdim=True).detach()
        loss = (1 - torch.cosine_similarity(targets, z, dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return style_mean.detach(), style_std.detach()
