"""Benchmark family ``mining`` (needs open_clip: ``pip install "styleda_fast[mining]"``): styles mined per second
by the public PIN loop (``reference_public.pin_mining_loop``: one small batch per loop, as the public code runs it,
anomaly detection off) and by ``mine_styles`` mining all those loops' items in one call (the same styles), in
float32 and with the encoder tail under bfloat16 autocast (``ours bf16``, other numerics; run only where the
CPU or GPU has native bfloat16). Random-weight open_clip
RN50, 64x64 layer1 patches (pooled to 56x56). Not memory-bound: the table gives styles/s, no "x copy"."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

from styleda_fast.bench.harness import Case
from styleda_fast.compat.public_code import pin_mining_loop
from styleda_fast.mining.engine import clip_image_tail, mine_styles


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    torch.manual_seed(0)
    visual = open_clip.create_model("RN50", pretrained=None).visual.to(device).eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    # FAMix mines ~6 patches (classes) per batch; default 2 batches of 6 and 1 step, --full: 8 batches and 2 steps
    loops, per_loop, steps = (1, 2, 1) if quick else (8, 6, 2) if full else (2, 6, 1)
    gen = torch.Generator().manual_seed(0)
    content = torch.relu(torch.randn(loops * per_loop, 256, 64, 64, generator=gen) * 0.5 + 0.2).to(device)
    targets = F.normalize(torch.randn(loops * per_loop, 1024, generator=gen), dim=-1).to(device)
    tail = clip_image_tail(visual)

    def public():
        for k in range(loops):
            rows = slice(k * per_loop, (k + 1) * per_loop)
            pin_mining_loop(visual, content[rows], targets[rows], steps, clamp_std=False)

    def ours(autocast_dtype=None):
        mine_styles(tail, content, targets, steps=steps, clamp_std=False, reference_batch_size=per_loop,
                    autocast_dtype=autocast_dtype)  # fmt: skip

    providers = {"ours": ours, "ours bf16": lambda: ours(torch.bfloat16), "public": public}
    name = f"mine {loops}x{per_loop} patches, {steps} step{'s' if steps > 1 else ''}"
    items = (loops * per_loop, "styles")
    shape = str(tuple(content.shape))
    return [Case("mining", name, shape, providers, "public", floor=None, items=items, bf16=("ours bf16",))]
