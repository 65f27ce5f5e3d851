"""`styleda-fast mine --clip-model ViT-B-16 --split-block K` end to end (real command, random weights, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from mine_helpers import mine as mine_command  # noqa: E402
from mine_helpers import write_dataset  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 RGB images of 80x72 and their train-id label maps."""

    def label_of(rng):
        label = np.full((72, 80), 255, dtype=np.uint8)
        label[:40] = rng.choice([0, 2, 8])
        label[40:, :40] = rng.choice([11, 13])
        return label

    return write_dataset(tmp_path_factory.mktemp("vit-data"), 3, (72, 80), 1, label_of)


def mine(*args, check=True):
    return mine_command(*args, check=check, timeout=900)


@pytest.mark.slow
def test_global_and_patch_mining_on_vit_tokens(dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "global.safetensors"
    mine("--images", str(images), "--prompt", "driving at night", "--clip-model", "ViT-B-16", "--split-block", "3",
         "--crop", "64", "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert len(bank) == 3 and bank.channels == 768
    assert bank.backbone == "ViT-B-16" and bank.layer == "tokens after 3 transformer blocks"
    assert torch.isfinite(bank.mean).all() and (bank.std >= 1e-5**0.5).all()

    out = tmp_path / "patch.safetensors"
    mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
         "--clip-model", "ViT-B-16", "--split-block", "12", "--crop", "64", "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert len(bank) >= 2 and bank.channels == 768
    assert torch.isfinite(bank.mean).all() and torch.isfinite(bank.std).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clip-model", "ViT-B-16"], "--split-block"),
        (["--clip-model", "ViT-B-16", "--split-block", "13"], "12 transformer blocks"),
        (["--clip-model", "RN50", "--split-block", "2"], "--split-block is for ViT"),
        (["--clip-model", "ViT-B-16", "--split-block", "-1"], "--split-block must be >= 0"),
    ],
)
def test_split_block_errors(dataset, tmp_path, args, message):
    done = mine("--images", str(dataset[0]), "--prompt", "snow", "--out", str(tmp_path / "x.safetensors"), *args,
                check=False)  # fmt: skip
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "x.safetensors.parts").exists()


def test_patch_grid_must_divide_the_token_grid(dataset, tmp_path):
    """80x72 images have a 5x4 patch grid at patch size 16: --grid 2 does not divide it; the hint is a crop."""
    images, labels = dataset
    done = mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
                "--clip-model", "ViT-B-16", "--split-block", "1", "--out", str(tmp_path / "x.safetensors"),
                check=False)  # fmt: skip
    assert done.returncode != 0 and "N / 16 a multiple of 2" in done.stderr and "--crop 64" in done.stderr, done.stderr
