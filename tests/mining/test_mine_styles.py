"""What `styleda-fast mine` writes: valid std values, fallback styles in patch mode with a per-class report, and
unreadable images skipped on request. Through the real command on small generated files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import mine, write_dataset  # noqa: E402
from test_command_checks import assert_one_line_error  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402


def copy_files(source, folder, n: int | None = None):
    """The first ``n`` files of ``source``, copied into the new ``folder``."""
    folder.mkdir()
    for p in sorted(source.iterdir())[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_mined_std_is_never_negative_by_default(dataset, tmp_path):
    """FAMix's patch mining never clamps std; after 4 steps some channels' std is below 0 (seen with
    --keep-negative-std, the public behaviour). By default the bank holds those clamped to sqrt(1e-5)."""
    images, labels = (copy_files(folder, tmp_path / folder.name, 2) for folder in dataset)
    raw, clamped = tmp_path / "raw.safetensors", tmp_path / "clamped.safetensors"
    args = ["--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "1",
            "--steps", "4"]  # fmt: skip
    mine(*args, "--out", str(raw), "--keep-negative-std")
    mine(*args, "--out", str(clamped))
    a, b = StyleBank.load(raw, allow_negative_std=True), StyleBank.load(clamped)
    assert (a.std < 0).any(), "the test needs a mined std below 0"
    assert (b.std >= 1e-5**0.5).all()
    assert torch.equal(b.std, a.std.clamp_min(1e-5**0.5)) and torch.equal(a.mean, b.mean)


def test_patch_bank_has_fallback_styles_and_a_class_report(tmp_path):
    """Label maps without any ignore pixel: no patch is of class 255, yet each chunk mines one fallback style, so
    classes never seen can be sampled; the report names the classes and their counts."""

    def label_of(rng):
        label = np.zeros((64, 64), dtype=np.uint8)  # road
        label[:, 32:] = 13  # car
        return label

    images, labels = write_dataset(tmp_path, 3, (64, 64), 2, label_of)
    out = tmp_path / "bank.safetensors"
    done = mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
                "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    counts = bank.class_counts()
    assert counts["road"] == 2 and counts["car"] == 2 and counts["255"] == 2  # 2 chunks (batch size 2)
    assert sum(counts.values()) == len(bank) == 6
    mean, std = bank.sample(torch.tensor([3, 18, 255]), generator=torch.Generator().manual_seed(0))
    assert mean.shape == (3, 256) and (std > 0).all()
    report = done.stdout.split("styles per class", 1)[1]
    for line in ("0 road", "13 car", "255 (fallback)"):
        assert line in " ".join(report.split()), report
    assert "no styles (drawn from the fallback 255): sidewalk, building" in report


def test_bad_images_stop_the_run_or_are_skipped_and_listed(dataset, tmp_path):
    """A truncated PNG passes the header check and fails when decoded, in the middle of mining: one error line
    naming it; with --skip-bad-images it is left out of its chunk and listed at the end."""
    folder = copy_files(dataset[0], tmp_path / "images")
    victim = sorted(folder.iterdir())[2]  # first image of the second chunk
    victim.write_bytes(victim.read_bytes()[:2000])
    out = tmp_path / "bank.safetensors"
    done = mine("--images", str(folder), "--prompt", "x", "--out", str(out), check=False)
    assert_one_line_error(done, victim.name, "--skip-bad-images", after_progress=True)
    done = mine("--images", str(folder), "--prompt", "x", "--out", str(out), "--skip-bad-images")
    assert len(StyleBank.load(out)) == 4
    assert f"skipped 1 unreadable files (--skip-bad-images):\n  cannot read image {victim}" in done.stdout
