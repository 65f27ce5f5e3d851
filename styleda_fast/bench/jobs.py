"""Benchmark family ``jobs`` (needs open_clip; runs ``styleda_fast.train``): whole PODA/FAMix
jobs, the public scripts' behaviour (``public``) against styleda_fast's (``ours``), on synthetic data and a
random-weight open_clip RN50.

Mining (one public batch of images per call; the throughput column is images/s):

* ``public``, FAMix: the loop of FAMix's ``patch_PIN.py``: ``torch.autograd.set_detect_anomaly(True)`` over the
  whole run, ``layer1`` features in grad mode, ``torch.mode`` per 3x3 patch, the first patch of each distinct
  dominant class, the class prompts ("<random style> <class>", "photo" for 255) re-encoded by the text encoder
  every batch (one ``encode_text`` of all templates per class, grad mode, as the script), then 100 SGD steps on the
  patches' styles (``reference_public.pin_mining_loop``, features pooled to 56x56, the loss averaged over the
  batch). PODA: the loop of ``PIN_aug.py``: the same per batch of images, one style per image, ``std`` clamped,
  no anomaly detection, the prompt encoded once per run (not timed, on either side).
* ``ours``: the engine of ``styleda-fast mine`` on the same images: ``clip_image_head`` under ``no_grad``,
  ``select_patches``, ``famix_descriptions`` + ``encode_prompts`` (no grad, the templates of all classes
  batched; the command also caches them across a run: :func:`job_table` accounts for that), ``mine_styles``
  (float32; the same patches and algorithm as the public loop, whose prompts draw their style words from another
  generator). ``ours fast``: with the documented fast options, bfloat16 autocast of the encoder tail and text
  targets encoded ahead of the run (a one-time cost, not timed).

On a CPU (the default) a call mines 1 or 3 steps of one batch with a few prompt templates (the case names say
how many); :func:`job_table` extrapolates to 100 steps and 80 templates from those cases and the ``prompts``
case. ``full=True`` (for a GPU) runs the public settings: 16 images at crop 768, 100 steps, 80 templates.

Training step (forward, backward, SGD step of ``examples/{poda,famix}_train_step.py``): the public augmentation
code (``reference_public``) against ours, then ours with the memory options (``in-place``: the augmentation
written into the ``layer1`` output; ``ckpt``: ``layer4`` recomputed in the backward pass; ``bf16``: autocast).
The augmentation's calls are timed inside each step (its share of the step in the job table); a second case per
recipe times it alone on same-sized features. CPU default: crop 288, batch 2 (``full``: crop 768, batch 8).

Memory (not timed): :func:`memory_table` counts, per option combination, the bytes autograd saves for backward
(``styleda_fast.memory.SavedBytes``), the peak of the tensors alive during forward + backward (``LiveBytes``,
parameter gradients included) and the model's state (parameters, buffers, momentum), at two small crops, and
extrapolates linearly in pixels x batch to crop 768, batch 8. ``python -m styleda_fast.bench.jobs`` times the
cases in turns (a recipe's cases together) and prints the job and memory tables.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from pathlib import Path

import open_clip  # noqa: F401  (the harness skips the family, with a hint, where it is missing)
import torch

from styleda_fast.bench.harness import Case
from styleda_fast.compat.public_code import dominant_classes_public, pin_mining_loop
from styleda_fast.memory import LiveBytes, SavedBytes, format_bytes, state_bytes
from styleda_fast.mining.engine import clip_image_head, clip_image_tail, mine_styles, select_patches
from styleda_fast.ops.text import encode_prompts
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES, FAMIX_STYLES, IMAGENET_TEMPLATES, famix_descriptions
from styleda_fast.train import deeplab_clip, famix_train_step, poda_train_step

FALLBACK = 255
STEPS_FULL, TEMPLATES_FULL = 100, len(IMAGENET_TEMPLATES)


# ---------------------------------------------------------------------------------------------- set-up


def load_examples():
    """``(deeplab_clip, poda_train_step, famix_train_step)`` of ``styleda_fast.train``."""
    return deeplab_clip, poda_train_step, famix_train_step


def _clip(device):
    from styleda_fast.mining.command import load_clip

    model, tokenizer = load_clip("RN50", "none", 0)
    model = model.to(device)
    for p in model.visual.parameters():  # the segmentation backbone is frozen; the text encoder is not (clip.load)
        p.requires_grad_(False)
    return model, tokenizer


def mining_batch(n: int, crop: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` CLIP-normalized-like random images and label maps of 6x6 blocks whose classes follow a skewed
    frequency (1/rank: road, building, vegetation... common, trains rare; about 5% unlabelled), so that a batch of
    16 has about as many distinct dominant patch classes as a driving-scene batch (8 to 13 here)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, crop, crop, generator=gen)
    weights = 1.0 / torch.arange(1, 20, dtype=torch.float64)
    blocks = torch.multinomial(weights, n * 36, replacement=True, generator=gen).view(n, 6, 6)
    blocks[torch.rand(n, 6, 6, generator=gen) < 0.05] = FALLBACK
    side = -(-crop // 6)
    return images, blocks.repeat_interleave(side, 1).repeat_interleave(side, 2)[:, :crop, :crop].contiguous()


# ---------------------------------------------------------------------------------------------- mining runs


def _public_layer1(visual, images):
    return visual.layer1(visual.stem(images.to(visual.conv1.weight.dtype)))  # grad mode, frozen weights


def famix_public_batch(visual, model, tokenizer, images, labels, steps: int, templates, rng: random.Random):
    """One batch of FAMix's ``patch_PIN.py`` loop (call under ``torch.autograd.set_detect_anomaly(True)``)."""
    f1 = _public_layer1(visual, images)
    B = images.shape[0]
    per_patch = dominant_classes_public(labels, 3)  # 9 lists of B class ids
    most_list = [c for patch in per_patch for c in patch]  # position p * B + b, as the script's unfold
    unique = list(set(most_list))
    ind = [most_list.index(c) for c in unique]
    targets = torch.zeros(len(ind), model.text_projection.shape[1], device=images.device)
    for j, c in enumerate(unique):
        text = "photo" if c == FALLBACK else rng.choice(FAMIX_STYLES) + " " + CITYSCAPES_CLASSES[c]
        tokens = tokenizer([t.format(text) for t in templates]).to(images.device)
        targets[j] = model.encode_text(tokens).mean(dim=0).detach()
        targets[j] /= targets[j].norm(dim=-1, keepdim=True)
    H, W = f1.shape[-2:]
    ph, pw = H // 3, W // 3
    patches = []
    for k in ind:
        p, b = divmod(k, B)
        i, j = divmod(p, 3)
        patches.append(f1[b, :, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw])
    return pin_mining_loop(visual, torch.stack(patches).detach(), targets, steps, clamp_std=False, pool_to=56)


def famix_ours_batch(head, tail, model, tokenizer, images, labels, steps: int, templates, seed: int,
                     targets_cache: dict | None = None, autocast_dtype=None):  # fmt: skip
    """One batch as ``styleda-fast mine --mode patch --class-styles`` mines it (``targets_cache``: text targets
    encoded ahead of the run, by description)."""
    with torch.no_grad():
        features = head(images).float()
    selection = select_patches(features, labels, grid=3)
    content, class_ids = selection.content, selection.class_ids.tolist()
    descriptions = famix_descriptions(class_ids, generator=torch.Generator().manual_seed(seed))
    reference = len(descriptions)
    if FALLBACK not in class_ids:  # the command mines a fallback ("photo") style from the first patch too
        content = torch.cat([content, content[:1]])
        descriptions.append("photo")
    if targets_cache is None:
        targets = encode_prompts(model, tokenizer, descriptions, templates)
    else:
        targets = torch.stack([targets_cache[d] for d in descriptions])
    return mine_styles(tail, content, targets, steps=steps, clamp_std=False, reference_batch_size=reference,
                       autocast_dtype=autocast_dtype)  # fmt: skip


def famix_descriptions_of(head, images, labels, seed: int) -> list[str]:
    with torch.no_grad():
        classes = select_patches(head(images).float(), labels, grid=3).class_ids.tolist()
    return [*famix_descriptions(classes, generator=torch.Generator().manual_seed(seed)), "photo"]


def poda_public_batch(visual, images, target, steps: int):
    """One batch of PODA's ``PIN_aug.py`` loop (the prompt's target encoded once per run, outside)."""
    f1 = _public_layer1(visual, images)
    return pin_mining_loop(visual, f1.detach(), target.expand(images.shape[0], -1), steps, clamp_std=True)


def poda_ours_batch(head, tail, images, target, steps: int, autocast_dtype=None):
    with torch.no_grad():
        features = head(images).float()
    return mine_styles(tail, features, target.expand(images.shape[0], -1), steps=steps, clamp_std=True,
                       reference_batch_size=images.shape[0], autocast_dtype=autocast_dtype)  # fmt: skip


def _mining_cases(device, quick: bool, full: bool) -> list[Case]:
    model, tokenizer = _clip(device)
    visual = model.visual.eval()
    head, tail = clip_image_head(visual), clip_image_tail(visual)
    if full:
        n_famix, n_poda, crop, step_list, n_templates = 16, 16, 768, (STEPS_FULL,), TEMPLATES_FULL
    elif quick:
        n_famix, n_poda, crop, step_list, n_templates = 1, 1, 48, (1,), 1  # a smoke test
    else:
        n_famix, n_poda, crop, step_list, n_templates = 16, 8, 192, (1, 3), 4
    templates = IMAGENET_TEMPLATES[:n_templates]
    images, labels = mining_batch(n_famix, crop)
    images, labels = images.to(device), labels.to(device)
    seed = 0
    descriptions = famix_descriptions_of(head, images, labels, seed)
    public_classes = {c for patch in dominant_classes_public(labels.cpu(), 3) for c in patch}
    with torch.no_grad():
        our_classes = set(select_patches(head(images).float(), labels, grid=3).class_ids.tolist())
    if public_classes != our_classes:
        raise AssertionError(f"jobs: the public loop mines classes {public_classes}, ours {our_classes}")
    cache = dict(zip(descriptions, encode_prompts(model, tokenizer, descriptions, templates)))
    n_classes = len(descriptions) - 1
    cases = []
    for steps in step_list:
        rng = random.Random(0)

        def public(steps=steps, rng=rng, images=images, labels=labels):
            with torch.autograd.set_detect_anomaly(True):
                famix_public_batch(visual, model, tokenizer, images, labels, steps, templates, rng)

        def ours(steps=steps, images=images, labels=labels):
            famix_ours_batch(head, tail, model, tokenizer, images, labels, steps, templates, seed)

        def fast(steps=steps, images=images, labels=labels):
            famix_ours_batch(head, tail, model, tokenizer, images, labels, steps, templates, seed, cache,
                             torch.bfloat16)  # fmt: skip

        name = f"famix mine, {steps} step{'s' * (steps > 1)}, {n_templates} templates"
        shape = f"{n_famix} img {crop}px, {n_classes} cls"
        providers = {"public": public, "ours": ours} if quick else {"public": public, "ours": ours, "ours fast": fast}
        cases.append(Case("jobs", name, shape, providers, "public", floor=None, items=(n_famix, "images"),
                          bf16=("ours fast",)))  # fmt: skip

    if quick:  # a smoke test: the prompt and PODA mining cases run the same code as the case above
        return cases
    # the prompts of one batch alone: the public per-class encode_text (grad mode, anomaly detection) against
    # encode_prompts, for the extrapolation to 80 templates
    classes = descriptions[:-1]

    def public_prompts():
        with torch.autograd.set_detect_anomaly(True):
            for text in classes:
                tokens = tokenizer([t.format(text) for t in templates]).to(device)
                model.encode_text(tokens).mean(dim=0).detach()

    providers = {"public": public_prompts, "ours": lambda: encode_prompts(model, tokenizer, classes, templates)}
    name = f"famix prompts, {n_templates} templates"
    cases.append(Case("jobs", name, f"{n_classes} cls", providers, "public", floor=None, items=(n_famix, "images")))

    poda_images = mining_batch(n_poda, crop, seed=1)[0].to(device)
    target = encode_prompts(model, tokenizer, ["driving at night"], templates)
    for steps in step_list:
        providers = {
            "public": lambda steps=steps: poda_public_batch(visual, poda_images, target, steps),
            "ours": lambda steps=steps: poda_ours_batch(head, tail, poda_images, target, steps),
            "ours fast": lambda steps=steps: poda_ours_batch(head, tail, poda_images, target, steps, torch.bfloat16),
        }
        name = f"poda mine, {steps} step{'s' * (steps > 1)}"
        cases.append(Case("jobs", name, f"{n_poda} img {crop}px", providers, "public", floor=None,
                          items=(n_poda, "images"), bf16=("ours fast",)))  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------- training steps

STEP_OPTIONS = {
    "public": dict(aug="public"),
    "ours": dict(aug="ours"),
    "ours in-place": dict(aug="ours", in_place=True),
    "ours in-place+ckpt": dict(aug="ours", in_place=True, checkpoint=True),
    "ours in-place+ckpt+bf16": dict(aug="ours", in_place=True, checkpoint=True, bf16=True),
}


def make_aug(dc, recipe: str, bank, aug: str = "ours", in_place: bool = False, seed: int = 0):
    """The augmentation layer of an option combination: ``"public"`` (the public code), ``"ours"`` (in place or
    not) or ``"none"`` (``None``)."""
    from styleda_fast.nn import StyleBankAugment

    if aug == "public":
        return dc.PublicFamixTransfer(bank, seed) if recipe == "famix" else dc.PublicPodaTransfer(bank, seed)
    if aug == "ours":
        return (
            dc.InPlaceBankAugment(bank, recipe, seed)
            if in_place
            else getattr(StyleBankAugment, recipe)(bank, generator=seed)
        )
    return None


def configure(job, dc, recipe: str, aug: str = "ours", in_place: bool = False, checkpoint: bool = False,
              bf16: bool = False, seed: int = 0, layer=None) -> None:  # fmt: skip
    """Switch a training job (``examples/*_train_step.build``) to an option combination: the inserted
    augmentation (``layer``, or a new one from ``aug``, ``in_place``, ``seed``), ``layer4`` checkpointing, bf16."""
    from styleda_fast.nn import insert, remove

    remove(job.model)
    job.aug = layer if layer is not None else make_aug(dc, recipe, job.bank, aug, in_place, seed)
    if job.aug is not None:
        insert(job.model, "backbone.layer1", job.aug)
    job.model.backbone.checkpoint_layer4 = checkpoint
    job.bf16 = bf16


def timed_forward(layer, log: list[float], device) -> None:
    """Make ``layer`` append the wall time (ms) of each of its calls to ``log``."""
    inner = layer.forward

    def forward(*args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.append((time.perf_counter() - start) * 1e3)
        return out

    layer.forward = forward


def training_job(recipe: str, crop: int, batch: int, device, visual=None):
    """A training job of ``examples/{recipe}_train_step.py`` (random RN50, random bank) with ``job.bank`` set."""
    dc, poda, famix = load_examples()
    module = famix if recipe == "famix" else poda
    args = module.parse_args(["--crop", str(crop), "--batch", str(batch), "--device", str(device)])
    job = module.build(args, visual=visual)
    job.bank = job.aug.bank
    job.bf16 = getattr(job, "bf16", False)
    return job, module, dc


def run_step(job, module) -> None:
    """One training step of ``job`` under its options (bf16 autocast handled by the FAMix example's job)."""
    if module.__name__.endswith("poda_train_step"):
        with torch.autocast(job.images.device.type, dtype=torch.bfloat16, enabled=job.bf16):
            module.step(job)
    else:
        module.step(job)


def _step_cases(device, quick: bool, full: bool) -> list[Case]:
    crop, batch = (48, 2) if quick else (768, 8) if full else (288, 2)
    cases = []
    for recipe in ("famix", "poda"):
        job, module, dc = training_job(recipe, crop, batch, device)
        names = STEP_OPTIONS if recipe == "famix" else ("public", "ours", "ours in-place")
        if quick:  # a smoke test: each code path once (public, ours, in place with checkpointing and bf16)
            names = ("public", "ours", "ours in-place+ckpt+bf16") if recipe == "famix" else ("public", "ours in-place")
        options = {k: STEP_OPTIONS[k] for k in names}

        job.config, job.aug_log, job.aug_ms = None, [], {}

        def provider(name, config, job=job, module=module, dc=dc, recipe=recipe):
            layer = make_aug(dc, recipe, job.bank, config["aug"], config.get("in_place", False))
            if layer is not None:
                timed_forward(layer, job.aug_log, device)
            job.aug_ms[name] = []

            def run():
                if job.config is not config:
                    configure(job, dc, recipe, layer=layer, **config)
                    job.config = config
                job.aug_log.clear()
                run_step(job, module)
                job.aug_ms[name].append(sum(job.aug_log))

            return run

        providers = {name: provider(name, config) for name, config in options.items()}
        shape = f"{batch} img {crop}px"
        bf16 = tuple(name for name, config in options.items() if config.get("bf16"))
        case = Case("jobs", f"{recipe} train step", shape, providers, "public", floor=None, items=(batch, "images"),
                    bf16=bf16)  # fmt: skip
        case.aug_ms = job.aug_ms  # the augmentation's time inside each step, per provider (the job table's share)
        cases.append(case)

        # the augmentation alone, on features and labels of the step's sizes
        gen = torch.Generator().manual_seed(0)
        x = torch.relu(torch.randn(batch, 256, crop // 4, crop // 4, generator=gen)).to(device)
        augs = {
            "public": dc.PublicFamixTransfer(job.bank) if recipe == "famix" else dc.PublicPodaTransfer(job.bank),
            "ours": make_aug(dc, recipe, job.bank, "ours"),
            "ours in-place": make_aug(dc, recipe, job.bank, "ours", in_place=True),
        }
        for aug in augs.values():
            if hasattr(aug, "set_labels"):
                aug.set_labels(job.labels)
        buffer = x.clone()
        aug_providers = {
            "public": lambda a=augs["public"], x=x: a(x),
            "ours": lambda a=augs["ours"], x=x: a(x),
            "ours in-place": lambda a=augs["ours in-place"], b=buffer: a(b),  # restyles its own output each call
        }
        cases.append(Case("jobs", f"{recipe} augmentation alone", shape + " (layer1)", aug_providers, "public",
                          floor=None, items=(batch, "images")))  # fmt: skip
    return cases


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    load_examples()
    return _mining_cases(device, quick, full) + _step_cases(device, quick, full)


# ---------------------------------------------------------------------------------------------- memory

MEMORY_OPTIONS = {
    "no augmentation": dict(aug="none"),
    "public augmentation": dict(aug="public"),
    "our augmentation": dict(aug="ours"),
    "+ in-place": dict(aug="ours", in_place=True),
    "+ layer4 checkpointing": dict(aug="ours", in_place=True, checkpoint=True),
    "+ bf16 autocast": dict(aug="ours", in_place=True, checkpoint=True, bf16=True),
}


def measure_memory(job, module, dc, recipe: str, config: dict) -> dict:
    """One forward + backward of ``job`` under ``config``: the bytes saved for backward, the bytes alive after each
    operation (``LiveBytes`` timeline: activations, their gradients, parameter gradients, temporaries) and the
    augmentation's own peak (``LiveBytes`` around the inserted layer's call)."""
    configure(job, dc, recipe, **config)
    if hasattr(job.aug, "set_labels"):
        job.aug.set_labels(job.labels)
    aug_peak = [0]
    if job.aug is not None:
        inner = job.aug.forward

        def tracked(x, *args, **kwargs):
            with LiveBytes() as live:
                y = inner(x, *args, **kwargs)
            aug_peak[0] = max(aug_peak[0], live.peak)
            return y

        job.aug.forward = tracked
    job.optimizer.zero_grad(set_to_none=True)
    saved = SavedBytes(exclude=job.model.parameters())
    autocast = torch.autocast(job.images.device.type, dtype=torch.bfloat16, enabled=config.get("bf16", False))
    with LiveBytes(timeline=True) as live:
        with saved, autocast:
            logits = job.model(job.images)
            loss = job.criterion(logits.float(), job.labels)
        del logits
        loss.backward()
        job.model.backbone.after_backward()
    job.optimizer.zero_grad(set_to_none=True)
    return {"saved": saved.bytes, "timeline": live.timeline, "aug_peak": aug_peak[0]}


def memory_table(recipe: str = "famix", crops=(96, 192), batch: int = 2, target_crop: int = 768,
                 target_batch: int = 8, device="cpu") -> list[dict]:  # fmt: skip
    """Memory per option combination at ``target_crop``, ``target_batch``, from measurements at two ``crops`` (batch
    ``batch``), extrapolated linearly in pixels x batch: activations and temporaries grow with it (exactly, for this
    network, when the crops divide by 48), parameters and their gradients do not (the fit's constant). The peak is
    that of the extrapolated timeline, operation by operation (both crops run the same operations).

    Returns rows with ``saved`` (bytes saved for backward at the end of the forward pass), ``peak`` (most bytes
    alive at once during forward + backward, parameter gradients included), ``aug_peak`` (the augmentation's own
    allocations), ``state`` (parameters, buffers, momentum) and ``estimate = state + peak + the batch's images and
    labels``."""
    dc, poda, famix = load_examples()
    visual = dc.load_visual("none")
    jobs = {crop: training_job(recipe, crop, batch, device, visual=copy.deepcopy(visual)) for crop in crops}
    (c0, c1), target = sorted(crops), target_batch * target_crop**2
    q0, q1 = batch * c0**2, batch * c1**2

    def extrapolate(v0: float, v1: float) -> float:
        return v0 + (v1 - v0) * (target - q0) / (q1 - q0)

    rows = []
    for name, config in MEMORY_OPTIONS.items():
        if recipe == "poda":  # PODA's backbone is frozen: nothing in layer4 to recompute
            if name == "+ layer4 checkpointing":
                continue
            config = {k: v for k, v in config.items() if k != "checkpoint"}
        m0, m1 = (measure_memory(*jobs[c], recipe, config) for c in (c0, c1))
        if len(m0["timeline"]) != len(m1["timeline"]):
            raise RuntimeError(f"memory_table: {name}: the two crops ran different operations")
        job = jobs[c0][0]
        state = state_bytes(job.model, job.optimizer)
        row = {
            "option": name,
            "recipe": recipe,
            "measured_at": f"crops {c0} and {c1}, batch {batch}",
            "saved": extrapolate(m0["saved"], m1["saved"]),
            "peak": max(extrapolate(a, b) for a, b in zip(m0["timeline"], m1["timeline"])),
            "aug_peak": extrapolate(m0["aug_peak"], m1["aug_peak"]),
            "state": state["parameters"] + state["buffers"] + state["optimizer"],
            "inputs": target_batch * target_crop**2 * (3 * 4 + 8),  # float32 images, int64 labels
        }
        row["estimate"] = row["state"] + row["peak"] + row["inputs"]
        rows.append(row)
    return rows


def augmentation_saved_bytes(recipe: str = "famix", crops=(96, 192), batch: int = 2, target_crop: int = 768,
                             target_batch: int = 8) -> dict[str, float]:  # fmt: skip
    """Bytes the augmentation alone saves for backward when its input needs a gradient (a backbone trained below
    ``layer1``; not the PODA/FAMix recipes, where nothing is saved): the public code's against ours, measured at
    two ``crops`` (batch ``batch``), extrapolated linearly in pixels (feature maps) and scaled by batch (feature
    maps and per-patch statistics alike)."""
    dc, _, _ = load_examples()
    bank = dc.random_bank(recipe == "famix")
    gen = torch.Generator().manual_seed(0)
    measured = {}
    for crop in crops:
        x = torch.relu(torch.randn(batch, 256, crop // 4, crop // 4, generator=gen)).requires_grad_()
        _, labels = dc.synthetic_batch(batch, crop)
        public = dc.PublicFamixTransfer(bank) if recipe == "famix" else dc.PublicPodaTransfer(bank)
        for name, aug in (("public", public), ("ours", make_aug(dc, recipe, bank, "ours"))):
            if hasattr(aug, "set_labels"):
                aug.set_labels(labels)
            with SavedBytes() as saved:
                aug(x)
            measured[name, crop] = saved.bytes
    (c0, c1), result = crops, {}
    for name in ("public", "ours"):
        slope = (measured[name, c1] - measured[name, c0]) / (c1**2 - c0**2)
        result[name] = (measured[name, c0] + slope * (target_crop**2 - c0**2)) * target_batch / batch
    return result


def format_memory_table(rows: list[dict], limit: float = 16e9) -> str:
    lines = [
        "| option | saved for backward | peak alive in fwd+bwd | augmentation's own peak | params+buffers+momentum"
        f" | estimate | within {limit / 1e9:g} GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['option']} | {format_bytes(r['saved'])} | {format_bytes(r['peak'])} | "
            f"{format_bytes(r['aug_peak'])} | {format_bytes(r['state'])} | {format_bytes(r['estimate'])} | "
            f"{'yes' if r['estimate'] <= limit else 'no'} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the job table


def _items(row: dict) -> float:
    """Images per call of a row (its throughput is images/s)."""
    return round(row["throughput"] * row["ms"] / 1e3)


GTA5_BATCHES = 24_966 // 16  # batches of 16 in a FAMix mining run over GTA5
DESCRIPTIONS = len(FAMIX_STYLES) * 20  # "<style> <class>" pairs (19 classes + "photo"): what a run-long cache holds


def job_table(rows: list[dict], steps: int = STEPS_FULL, templates: int = TEMPLATES_FULL, key: str = "ms") -> str:
    """Seconds per image of whole mining jobs at ``steps`` steps and ``templates`` templates, and the training steps
    with the augmentation's share (medians).

    From the 1- and 3-step cases: per batch, time = rest + steps x (one step) + prompts, the prompts' time (the
    ``prompts`` case) scaled from the templates used to ``templates``. ``ours`` encodes its prompts every batch
    (as the public code); ``ours, cached`` as ``styleda-fast mine`` over a GTA5-sized run, which encodes each
    "<style> <class>" description once (at most 400 for 1560 batches); ``ours fast`` with the targets encoded
    ahead and bfloat16 autocast. A ``full`` run's 100-step cases are used as they are. ``key``: ``"ms"`` (median
    wall time) or ``"cpu_ms"`` (median process CPU time, all threads: what a single-threaded run on a busy machine
    reports most steadily)."""
    by_case: dict[str, dict[str, dict]] = {}
    wall: dict[str, dict[str, dict]] = {}
    for r in rows:
        wall.setdefault(r["case"], {})[r["provider"]] = r
        by_case.setdefault(r["case"], {})[r["provider"]] = {**r, "ms": r[key], "images": _items(r)}

    def find(prefix):
        return next((by_case[c] for c in by_case if c.startswith(prefix)), None)

    lines = []
    mining = []
    for recipe in ("famix", "poda"):
        one, three = find(f"{recipe} mine, 1 step,") or find(f"{recipe} mine, 1 step"), find(f"{recipe} mine, 3 steps")
        full, prompts = find(f"{recipe} mine, {steps} steps"), find(f"{recipe} prompts")
        case = next((c for c in by_case if c.startswith(f"{recipe} mine")), None)
        if case is None:
            continue
        classes = int(next(p for p in by_case[case]["public"]["shape"].split(", ") if p.endswith("cls")).split()[0]) \
            if recipe == "famix" else 0  # fmt: skip
        used = int(next(c for c in by_case if c.startswith(f"{recipe} prompts")).split(", ")[1].split()[0]) \
            if prompts else templates  # fmt: skip
        result = {}
        for provider in ("public", "ours", "ours fast"):  # "ours fast" (bf16) is absent without native bf16
            if full:
                if provider in full:
                    result[provider] = full[provider]["ms"] / 1e3 / full[provider]["images"]
                continue
            if not (one and three and provider in one and provider in three):
                continue
            r1, r3 = one[provider], three[provider]
            per_step = (r3["ms"] - r1["ms"]) / 2
            total = r1["ms"] + (steps - 1) * per_step
            if prompts and provider != "ours fast":
                text = prompts["public" if provider == "public" else "ours"]["ms"]
                total += (templates / used - 1) * text
                if provider == "ours":
                    encoded = min(1.0, DESCRIPTIONS / (GTA5_BATCHES * classes))
                    cached = total - (1 - encoded) * templates / used * text
                    result["ours, cached"] = cached / 1e3 / r1["images"]
            result[provider] = total / 1e3 / r1["images"]
        mining.append((recipe, result))
    if mining:
        lines += [
            f"| mining job, {steps} steps, {templates} templates | public s/image | ours s/image | ours, cached"
            " s/image | ours fast s/image | ours vs public | cached vs public | fast vs public |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for recipe, r in mining:
            p, o, f = r.get("public"), r.get("ours"), r.get("ours fast")
            c = r.get("ours, cached", o)
            if p and o:
                fast = f"{f:.2f}" if f else "skipped (no native bf16)"
                vs_fast = f"{p / f:.2f}x" if f else ""
                lines.append(
                    f"| {recipe} | {p:.2f} | {o:.2f} | {c:.2f} | {fast} | {p / o:.2f}x | {p / c:.2f}x | {vs_fast} |"
                )
    steps_rows = []
    for recipe in ("famix", "poda"):
        step, alone = wall.get(f"{recipe} train step"), wall.get(f"{recipe} augmentation alone")
        if not step:
            continue
        for provider, r in step.items():
            aug_key = "ours in-place" if "in-place" in provider else "ours" if provider.startswith("ours") else provider
            alone_ms = f"{alone[aug_key]['ms']:.1f}" if alone and aug_key in alone else ""
            inside = r.get("aug_in_step_ms")
            share = f"{inside:.1f} | {inside / r['ms']:.1%}" if inside is not None else " | "
            step_s = f"{r['ms'] / 1e3:.2f} | {r['spread']:.0%}"
            steps_rows.append(f"| {recipe} | {provider} | {step_s} | {share} | {alone_ms} |")
    if steps_rows and key == "ms":  # the augmentation's share: wall times of the step and of its calls in it
        lines += [
            "",
            "| training step | provider | s/step | spread | augmentation ms in the step | its share of the step"
            " | augmentation alone ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *steps_rows,
        ]
    return "\n".join(lines)


def interleaved(cases: list[Case], device, rounds: int, log=print) -> list[dict]:
    """Time the providers of ``cases`` in turns (one call of each provider of each case per round, after one
    warm-up call each), so that changes in the machine's load during the run reach all of them alike (the job
    table combines several cases); rows as the harness makes them."""
    from styleda_fast.bench import harness

    cpu: dict[tuple[int, str], list[float]] = {}

    def timed(fn, key) -> float:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu.setdefault(key, []).append((time.process_time() - start_cpu) * 1e3)
        return (time.perf_counter() - start) * 1e3

    calls = [(case, name, fn) for case in cases for name, fn in case.providers.items()]
    first = {(id(case), name): timed(fn, (id(case), name)) for case, name, fn in calls}
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in first}
    with harness.OtherLoad() as load:
        for _ in range(rounds):
            for case, name, fn in calls:
                samples[id(case), name].append(timed(fn, (id(case), name)))
    log(f" {rounds} rounds")
    rows = []
    for case in cases:
        timings = {}
        for name in case.providers:
            timing = harness.Timing(samples[id(case), name], first[id(case), name], others=load.cores)
            timing.noise = harness.noise_reason(timing)
            timings[name] = timing
        log(f"  {case.name}: " + ", ".join(f"{n} {harness.fmt_ms(t.median)} ms" for n, t in timings.items()))
        case_rows = harness.case_rows(case, timings)
        for row in case_rows:  # process CPU time (all threads); the augmentation's time inside the timed steps
            row["cpu_ms"] = statistics.median(cpu[id(case), row["provider"]][1:])
            inside = getattr(case, "aug_ms", {}).get(row["provider"])
            if inside and len(inside) > rounds:
                row["aug_in_step_ms"] = statistics.median(inside[-rounds:])
        rows += case_rows
    return rows


def main(argv=None) -> None:
    import argparse
    import json

    from styleda_fast.bench import harness

    p = argparse.ArgumentParser(description="time the jobs family, then print the job and memory tables")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--only", choices=["mining", "steps", "memory"], action="append")
    p.add_argument("--rounds", type=int, default=5, help="calls per provider, in turns (default 5)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", help="write the rows and tables here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads, load {__import__('os').getloadavg()[0]:.1f}")
    only = set(args.only or ("mining", "steps", "memory"))
    load_examples()
    rows = []
    todo = (_mining_cases(device, args.quick, args.full) if "mining" in only else []) + (
        _step_cases(device, args.quick, args.full) if "steps" in only else []
    )
    groups: dict[str, list[Case]] = {}  # the cases one job-table line combines are timed together
    for case in todo:
        key = case.name.split()[0] + (" training" if "train" in case.name or "alone" in case.name else " mining")
        groups.setdefault(key, []).append(case)
    info = harness.machine_info(device)
    print(f"on {harness.describe(info)}")
    dropped = harness.drop_bf16(todo, device, info)
    if dropped:
        print(harness.bf16_skip_line(info, dropped))
    for k, (key, group) in enumerate(groups.items(), 1):
        print(f"[{k}/{len(groups)}] {key}: {', '.join(c.name for c in group)}", end="", flush=True)
        rows += interleaved(group, device, args.rounds)
    if rows:
        print(harness.format_table(rows))
        print("\nwall time (medians):")
        print(job_table(rows))
        print("\nprocess CPU time, all threads (medians):")
        print(job_table(rows, key="cpu_ms"))
    memory = []
    if "memory" in only:
        crops = (48, 96) if args.quick else (96, 192)
        for recipe in ("famix", "poda"):
            memory += memory_table(recipe, crops=crops, device=device)
            print(f"\n{recipe}: estimated memory at crop 768, batch 8 (measured at crops {crops}, batch 2)")
            print(format_memory_table([r for r in memory if r["recipe"] == recipe]))
            aug = augmentation_saved_bytes(recipe)
            memory.append({"recipe": recipe, "option": "augmentation saved bytes, input needing grad", **aug})
            print(
                f"{recipe} augmentation alone, input requiring grad (crop 768, batch 8): saves "
                f"{format_bytes(aug['public'])} for backward in the public code, {format_bytes(aug['ours'])} in ours"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "memory": memory}, indent=1))


if __name__ == "__main__":
    main()
