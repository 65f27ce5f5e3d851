"""The text targets of a mining run: each item's description (per mode), encoded once, and the noisy targets of
``--text-noise`` (hypothesis 1: more diverse target styles from noise on the CLIP text features)."""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.mining.config import FALLBACK, MineConfig
from styleda_fast.ops.text import encode_prompts, noisy_text_projection
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES, FAMIX_STYLES, IMAGENET_TEMPLATES, famix_descriptions


class PromptTargets:
    """Text targets of descriptions, encoded once each (FAMix reuses '<style> <class>' pairs across batches)."""

    def __init__(self, model, tokenizer, templates: int | None):
        self.model, self.tokenizer = model, tokenizer
        self.templates = IMAGENET_TEMPLATES[:templates] if templates else IMAGENET_TEMPLATES
        self.cache: dict[str, Tensor] = {}

    def __call__(self, descriptions: list[str]) -> Tensor:
        new = [d for d in dict.fromkeys(descriptions) if d not in self.cache]
        if new:
            for d, t in zip(new, encode_prompts(self.model, self.tokenizer, new, self.templates)):
                self.cache[d] = t
        return torch.stack([self.cache[d] for d in descriptions])


def item_descriptions(config: MineConfig, class_ids: list[int], generator: torch.Generator) -> list[str]:
    """The description each item is mined toward, for items of the given classes (``FALLBACK`` included).

    - global mode: the domain prompt;
    - patch mode with ``--prompt`` (zero-shot): the class's prompt, the template filled in or one of its
      ``--class-prompts`` (drawn uniformly with ``generator`` when it has several); the domain prompt itself for
      the fallback class;
    - patch mode with ``--class-styles`` (FAMix): ``"<random style> <class>"``, ``"photo"`` for the fallback.
    """
    if config.mode == "global":
        return [config.prompt] * len(class_ids)
    if config.class_styles:
        return famix_descriptions(class_ids, generator=generator)
    out = []
    for c in class_ids:
        if c == FALLBACK:
            out.append(config.prompt)
            continue
        choices = config.prompt_lists[CITYSCAPES_CLASSES[c]]
        pick = 0 if len(choices) == 1 else int(torch.randint(len(choices), (), generator=generator))
        out.append(choices[pick])
    return out


def noisy_targets(targets: Tensor, sigma: float, draws: int, seed: int) -> Tensor:
    """``(M * draws, D)``: ``draws`` noisy copies of each of the ``(M, D)`` targets (item-major), drawn by
    :func:`~styleda_fast.ops.text.noisy_text_projection` (Gaussian noise in the embedding space, each row projected
    back to the unit sphere) from ``seed``. Computed on the CPU in float32, so the draws do not depend on the
    device or the thread count; ``sigma = 0`` returns the targets."""
    if not sigma:
        return targets
    noisy = noisy_text_projection(targets.detach().float().cpu(), sigma, samples=draws, seed=seed)
    return noisy.reshape(-1, targets.shape[1]).to(targets.device)


def bank_prompts(config: MineConfig) -> dict[str, str]:
    """The ``prompts`` metadata of the bank: the text of each class (several prompts joined by ``" | "``)."""
    if config.mode == "global":  # PODA: class-less, every style in the fallback list
        return {str(FALLBACK): config.prompt}
    if config.class_styles:
        prompts = {name: f"<one of {len(FAMIX_STYLES)} FAMix styles> {name}" for name in CITYSCAPES_CLASSES}
        return {**prompts, str(FALLBACK): "photo"}
    prompts = {name: " | ".join(p) for name, p in config.prompt_lists.items()}
    return {**prompts, str(FALLBACK): config.prompt}


def class_prompt_lists(config: MineConfig) -> dict[str, list[str]]:
    """Every prompt each class may be mined toward (for the provenance), the fallback class as ``"255"``."""
    if config.mode == "global":
        return {str(FALLBACK): [config.prompt]}
    if config.class_styles:
        lists = {name: [f"{style} {name}" for style in FAMIX_STYLES] for name in CITYSCAPES_CLASSES}
        return {**lists, str(FALLBACK): ["photo"]}
    return {**{name: list(p) for name, p in config.prompt_lists.items()}, str(FALLBACK): [config.prompt]}
