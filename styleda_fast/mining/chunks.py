"""One chunk of a mining run: its images read, encoded, its items chosen (whole images or patches), their targets,
and their styles mined. A chunk's result depends only on the run's options and the chunk's index (seeds are
derived from both), never on the process or the order that mines it.

Patch mode mines, per chunk, the first patch of each distinct dominant class. Class 255 is the fallback that
training draws from for every class without styles of its own, so a chunk that has no mostly unlabelled patch
also mines its first patch (first image, top-left) under class 255, with the loss weight of the chunk's other
items (``1 / M`` for ``M`` distinct classes, as in FAMix's batch): every bank then holds fallback styles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from styleda_fast.mining.config import FALLBACK, MineConfig, MineError
from styleda_fast.mining.engine import derived_seed, mine_styles, select_patches
from styleda_fast.mining.files import BadFile, ImageFiles, read_image, read_labels
from styleda_fast.mining.targets import PromptTargets, item_descriptions, noisy_targets
from styleda_fast.nn.tokens import grid_as_tokens, tokens_as_grid


@dataclass(frozen=True)
class Encoder:
    """The split CLIP image encoder (``head``: images -> features; ``tail``: features -> embedding), the text
    targets and the device they run on."""

    head: nn.Module
    tail: nn.Module
    prompts: PromptTargets
    device: torch.device

    @property
    def channels(self) -> int:
        tail = self.tail
        return tail.channels if hasattr(tail, "channels") else tail.layer2[0].conv1.in_channels


def chunk_seed(config: MineConfig, k: int) -> int:
    """The seed of chunk ``k``: its FAMix style draws, class-prompt draws and feature noise."""
    return derived_seed(config.seed, k)


def text_noise_seed(config: MineConfig, k: int) -> int:
    """The seed of chunk ``k``'s noisy text targets (a stream of its own)."""
    return derived_seed(config.seed, k, "text-noise")


def mine_chunk(
    k: int, indices: list[int], files: ImageFiles, config: MineConfig, encoder: Encoder,
    show: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Tensor], list[str]]:  # fmt: skip
    """Mine chunk ``k`` (images ``indices`` of ``files``): its styles (``mean``, ``std``, ``class_ids``, ``loss``)
    and the files skipped as unreadable."""
    images, label_maps, skipped = [], [], []
    for i in indices:
        if files.sizes[i] is None:  # unreadable header, reported before mining
            continue
        try:
            image = read_image(files.images[i], config.crop)
            label = read_labels(files.labels[i], config.crop) if files.labels is not None else None
        except BadFile as exc:
            if not config.skip_bad_images:
                raise MineError(f"{exc} (--skip-bad-images skips such files)") from None
            skipped.append(str(exc))
            continue
        images.append(image)
        label_maps.append(label)
    if not images:
        empty = torch.zeros(0, encoder.channels)
        return {"mean": empty, "std": empty.clone(), "class_ids": torch.zeros(0, dtype=torch.int64),
                "loss": torch.zeros(0)}, skipped  # fmt: skip
    seed = chunk_seed(config, k)
    prefix = getattr(encoder.tail, "prefix_tokens", 0)
    with torch.no_grad():
        features = encoder.head(torch.stack(images).to(encoder.device))
        features = features.float() if not prefix else float_token_grid(features, prefix)
    if config.mode == "global":
        content = features
        class_ids = torch.full((len(images),), FALLBACK, dtype=torch.int64)
        reference_batch_size = len(images)  # the public batch: the chunk's images
    else:
        labels = torch.stack(label_maps).to(encoder.device)
        try:
            selection = select_patches(features, labels, grid=config.grid, prefix=prefix)
        except ValueError as exc:
            raise MineError(f"chunk {k}: {exc}") from exc
        content, class_ids = selection.content, selection.class_ids.cpu()
        reference_batch_size = len(class_ids)  # FAMix's batch: the M distinct classes
    generator = torch.Generator().manual_seed(seed)
    descriptions = item_descriptions(config, class_ids.tolist(), generator)
    if config.mode == "patch" and FALLBACK not in class_ids.tolist():  # the first patch gives a fallback style too
        content = repeat_items(content, prefix, extra_first=True)
        class_ids = torch.cat([class_ids, torch.tensor([FALLBACK])])
        descriptions += item_descriptions(config, [FALLBACK], generator)
    targets = encoder.prompts(descriptions)
    draws = config.text_noise_draws if config.text_noise else 1
    if config.text_noise:
        targets = noisy_targets(targets, config.text_noise, draws, text_noise_seed(config, k))
        content = repeat_items(content, prefix, draws=draws)
        class_ids = class_ids.repeat_interleave(draws)
    result = mine_styles(
        encoder.tail, content, targets.to(encoder.device), steps=config.steps, feature_noise=config.feature_noise,
        seed=seed, clamp_std=config.mode == "global", final_clamp=not config.keep_negative_std,
        reference_batch_size=reference_batch_size, step_progress=show,
    )  # fmt: skip
    return {"mean": result.mean, "std": result.std, "class_ids": class_ids.cpu(), "loss": result.loss}, skipped


def float_token_grid(grid: Tensor, prefix: int) -> Tensor:
    """A ViT head's token grid in float32, still a token grid (``.float()`` of a half one would drop the prefix)."""
    if grid.dtype == torch.float32:
        return grid
    return tokens_as_grid(grid_as_tokens(grid).float(), grid.shape[2], grid.shape[3], prefix)


def repeat_items(content: Tensor, prefix: int, *, draws: int = 1, extra_first: bool = False) -> Tensor:
    """``content`` with each item ``draws`` times in a row, or (``extra_first``) with its first item once more at
    the end; a token grid stays a token grid (its prefix tokens travel with each item)."""
    if not prefix:
        return torch.cat([content, content[:1]]) if extra_first else content.repeat_interleave(draws, 0)
    tokens = grid_as_tokens(content)
    tokens = torch.cat([tokens, tokens[:1]]) if extra_first else tokens.repeat_interleave(draws, 0)
    return tokens_as_grid(tokens, content.shape[2], content.shape[3], prefix)
