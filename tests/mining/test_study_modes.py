"""The study's mining jobs (issue 20): zero-shot class-aware patch styles toward a domain prompt, per-class prompts,
noisy text targets in both patch modes (same seed, same bank: after a resume and with 2 torchrun processes), the
bank's provenance, and the Python API. Through the real command on small generated images, random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import REFERENCE, ZERO_SHOT, mine, same_bank  # noqa: E402
from PIL import Image  # noqa: E402
from test_command_checks import assert_nothing_written, assert_one_line_error  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402
from styleda_fast.mining import MineConfig  # noqa: E402
from styleda_fast.mining import mine as mine_python  # noqa: E402
from styleda_fast.mining.targets import noisy_targets  # noqa: E402
from styleda_fast.ops.text import noisy_text_projection  # noqa: E402
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES  # noqa: E402

DRAWS = 2  # ZERO_SHOT's --text-noise-draws


def dominant_classes(labels) -> set[int]:
    return {int(v) for p in sorted(labels.iterdir()) for v in np.unique(np.asarray(Image.open(p)))}


def test_zero_shot_patch_styles_toward_the_domain(zero_shot_bank, dataset):
    out, done = zero_shot_bank
    bank = StyleBank.load(out)
    assert bank.prompts["road"] == "road while driving at night" and bank.prompts["255"] == "driving at night"
    ids = bank.class_ids
    assert len(bank) % DRAWS == 0 and torch.equal(ids[0::2], ids[1::2]), "each patch mined toward 2 noisy targets"
    assert set(ids.tolist()) <= dominant_classes(dataset[1]) | {255} and 255 in ids.tolist()
    assert not torch.equal(bank.mean[0::2], bank.mean[1::2]), "two noisy draws give two styles"
    assert "styles per class" in done.stdout and "255 (fallback)" in done.stdout


def test_class_prompts_change_only_their_classes(zero_shot_bank, dataset, tmp_path):
    """--class-prompts for one class: its styles move toward the new prompt; every other style stays bit-equal
    (items are mined independently, and each keeps its noise draws). A template that writes the same sentences
    as the default gives the same bank."""
    images, labels = dataset
    reference = StyleBank.load(zero_shot_bank[0])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"road": ["a flooded road at night"]}))
    out = tmp_path / "road.safetensors"
    mine("--images", str(images), "--labels", str(labels), *ZERO_SHOT, "--class-prompts", str(prompts),
         "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert bank.prompts["road"] == "a flooded road at night"
    road = reference.class_ids == CITYSCAPES_CLASSES.index("road")
    assert road.any() and torch.equal(bank.class_ids, reference.class_ids)
    assert not torch.equal(bank.mean[road], reference.mean[road])
    assert torch.equal(bank.mean[~road], reference.mean[~road]) and torch.equal(bank.std[~road], reference.std[~road])


def test_zero_shot_resume_with_text_noise_gives_the_same_bank(zero_shot_bank, dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    args = ["--images", str(images), "--labels", str(labels), *ZERO_SHOT, "--out", str(out)]
    mine(*args, "--max-chunks", "2")
    assert not out.exists()
    run = json.loads((tmp_path / "bank.safetensors.parts" / "run.json").read_text())
    assert run["text_noise"] == 0.05 and run["class_prompts"]["sky"] == ["sky while driving at night"]
    mine(*args)
    assert same_bank(StyleBank.load(zero_shot_bank[0]), StyleBank.load(out))


@pytest.mark.slow
def test_zero_shot_torchrun_with_text_noise_gives_the_same_bank(zero_shot_bank, dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    mine("--images", str(images), "--labels", str(labels), *ZERO_SHOT, "--out", str(out), nproc=2)
    assert same_bank(StyleBank.load(zero_shot_bank[0]), StyleBank.load(out))


def test_famix_mode_with_text_noise_keeps_the_fallback_styles(dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
         "--text-noise", "0.1", "--text-noise-draws", "2", "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert torch.equal(bank.class_ids[0::2], bank.class_ids[1::2]) and 255 in bank.class_ids.tolist()
    assert bank.prompts["car"].endswith(" car") and bank.prompts["255"] == "photo"


def test_label_folder_that_does_not_match_the_images(dataset, tmp_path):
    images, labels = dataset
    partial = tmp_path / "labels"
    partial.mkdir()
    for p in sorted(labels.iterdir())[1:]:
        (partial / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "bank.safetensors"
    done = mine("--images", str(images), "--labels", str(partial), *ZERO_SHOT, "--out", str(out), check=False)
    assert_one_line_error(done, "no label PNG for image city_00_leftImg8bit.png")
    assert_nothing_written(tmp_path, out)


def test_noisy_targets_are_the_seeded_operator_on_the_sphere():
    gen = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.normalize(torch.randn(3, 64, generator=gen), dim=-1)
    noisy = noisy_targets(targets, 0.05, 4, seed=11)
    assert noisy.shape == (12, 64)
    assert torch.equal(noisy, noisy_text_projection(targets, 0.05, samples=4, seed=11).reshape(12, 64))
    torch.testing.assert_close(noisy.norm(dim=-1), torch.ones(12))
    cosine = (noisy.view(3, 4, 64) * targets[:, None]).sum(-1)
    assert (cosine < 0.999).all() and (cosine > 0.5).all(), cosine
    assert not torch.equal(noisy, noisy_targets(targets, 0.05, 4, seed=12))
    assert noisy_targets(targets, 0.0, 1, seed=11) is targets


def test_python_api_writes_the_command_bank_with_its_provenance(dataset, reference_bank, tmp_path):
    out = tmp_path / "bank.safetensors"
    config = MineConfig(images=str(dataset[0]), out=str(out), prompt="fog", steps=2, clip_weights="none",
                        batch_size=2, seed=3, templates=2, threads=1)  # fmt: skip
    assert REFERENCE == ["--prompt", "fog", "--steps", "2"]
    bank = mine_python(config)
    assert same_bank(bank, StyleBank.load(reference_bank[0])) and same_bank(bank, StyleBank.load(out))
    provenance = bank.provenance
    assert json.loads(json.dumps(provenance)) == provenance
    expected = {"tool": "styleda-fast mine", "mode": "global", "model": "RN50", "pretrained": "none",
                "domain": "fog", "steps": 2, "seed": 3, "templates": 2, "text_noise": 0.0, "text_noise_draws": 1,
                "feature_noise": 0.0, "images": 5, "processes": 1, "class_template": None}  # fmt: skip
    assert {k: provenance[k] for k in expected} == expected
    assert len(provenance["image_list_sha256"]) == 64 and provenance["version"]


def test_saved_provenance_of_a_zero_shot_bank(zero_shot_bank):
    loaded = StyleBank.load(zero_shot_bank[0])
    if not hasattr(loaded, "provenance"):
        pytest.skip("this StyleBank does not save provenance yet (the bank branch adds it)")
    provenance = loaded.provenance
    assert provenance["mode"] == "patch-zero-shot" and provenance["domain"] == "driving at night"
    assert provenance["class_template"] == "{class} while {domain}"
    assert provenance["class_prompts"]["road"] == ["road while driving at night"]
    assert provenance["text_noise"] == 0.05 and provenance["text_noise_draws"] == 2
    assert provenance["feature_noise"] == 0.1 and provenance["images"] == 5
