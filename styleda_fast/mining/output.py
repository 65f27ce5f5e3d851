"""The bank a mining run writes: its styles in chunk order, its prompts and provenance (every option that made
it), written atomically; and the report of the styles per class and of the files skipped."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

import styleda_fast
from styleda_fast.bank.style_bank import StyleBank
from styleda_fast.mining.config import MineConfig
from styleda_fast.mining.files import ImageFiles
from styleda_fast.mining.parts import disk_error
from styleda_fast.mining.targets import bank_prompts, class_prompt_lists

SGD = {"lr": 1.0, "momentum": 0.9, "weight_decay": 1e-4}  # mine_styles' defaults, the public code's


def provenance(config: MineConfig, files: ImageFiles, processes: int) -> dict:
    """How the bank was made, as a JSON-able dict: the tool, the model, every mining option, the prompt of each
    class and which images (their count and a SHA-256 of their names in mining order)."""
    if config.mode == "global":
        mode = "global"
    else:
        mode = "patch-zero-shot" if config.zero_shot else "patch-famix"
    return {
        "tool": "styleda-fast mine",
        "version": styleda_fast.__version__,
        "mode": mode,
        "model": config.clip_model,
        "pretrained": config.clip_weights,
        "split_block": config.split_block,
        "domain": config.prompt,
        "class_template": config.template if config.zero_shot else None,
        "class_prompts": class_prompt_lists(config),
        "templates": config.templates or len(styleda_fast.IMAGENET_TEMPLATES),
        "steps": config.steps,
        **SGD,
        "text_noise": config.text_noise,
        "text_noise_draws": config.text_noise_draws if config.text_noise else 1,
        "feature_noise": config.feature_noise,
        "seed": config.seed,
        "grid": config.grid if config.mode == "patch" else None,
        "batch_size": config.batch_size,
        "crop": config.crop,
        "pool_to": config.pool_to if config.split_block is None else None,
        "keep_negative_std": config.keep_negative_std,
        "images": len(files.images),
        "image_list_sha256": files.names_sha256(),
        "processes": processes,
    }


def write_bank(out: Path, results: list[dict], config: MineConfig, files: ImageFiles, processes: int) -> StyleBank:
    """The bank of the chunks' ``results`` (in chunk order), saved to ``out`` atomically."""
    mean = torch.cat([r["mean"] for r in results])
    std = torch.cat([r["std"] for r in results])
    class_ids = torch.cat([r["class_ids"] for r in results])
    layer = "layer1" if config.split_block is None else f"tokens after {config.split_block} transformer blocks"
    about = {"backbone": config.clip_model, "layer": layer, "prompts": bank_prompts(config)}
    if config.mode == "global":  # PODA: class-less, every style in the fallback list
        bank = StyleBank(mean.shape[1], num_classes=0, **about)
    else:
        bank = StyleBank(mean.shape[1], **about)
    bank.add(mean, std, class_ids, allow_negative_std=config.keep_negative_std)
    # StyleBank saves this in its checksummed metadata where it has the attribute; set either way
    setattr(bank, "provenance", provenance(config, files, processes))  # noqa: B010
    tmp = out.with_name(out.name + ".tmp")
    try:
        bank.save(tmp)
        os.replace(tmp, out)
    except Exception as exc:  # safetensors reports write errors as its own exception type
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_error(exc, out) from None
    return bank


def class_report(bank) -> str:
    """How many styles each class got (class names for Cityscapes train ids)."""
    counts = bank.class_counts()
    total = len(bank)
    if bank.num_classes == 0:
        return f"styles: {total} (global bank: every style can be drawn for any image)"
    lines = [f"styles per class ({total} in all):"]
    empty = []
    for k, name in enumerate(bank.class_names):
        if counts[name]:
            lines.append(f"  {k:>3} {name:<14} {counts[name]:>6}")
        else:
            empty.append(name)
    fallback = counts[str(bank.fallback)]
    lines.append(f"  {bank.fallback:>3} {'(fallback)':<14} {fallback:>6}")
    if empty:
        source = f"drawn from the fallback {bank.fallback}" if fallback else "and no fallback: sampling them fails"
        lines.append(f"  no styles ({source}): {', '.join(empty)}")
    return "\n".join(lines)


def skip_report(skipped: list[str], not_regular: list[str]) -> str:
    lines = []
    if not_regular:
        lines.append(f"skipped {len(not_regular)} entries that are not regular files: {', '.join(not_regular)}")
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable files (--skip-bad-images):")
        lines += [f"  {line}" for line in skipped]
    return "\n".join(lines)
