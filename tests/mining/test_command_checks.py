"""`styleda-fast mine` refuses bad arguments with one line on stderr and exit status 2, before writing anything;
its help shows every option with its default. All through the real command in a subprocess."""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import mine  # noqa: E402
from PIL import Image  # noqa: E402

from styleda_fast import cli  # noqa: E402
from styleda_fast.bank.style_bank import StyleBank  # noqa: E402
from styleda_fast.mining.command import add_arguments  # noqa: E402


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str, after_progress: bool = False) -> str:
    """Exit status 2 and one error line on stderr holding each of ``needles``, no traceback; with
    ``after_progress``, the error (last) may follow progress lines, each on a line of its own."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("styleda-fast mine: error: "), done.stderr
    assert len(lines) == 1 or (after_progress and all(line.startswith("mining ") for line in lines[:-1])), lines
    assert "Traceback" not in done.stdout + done.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def assert_nothing_written(folder: Path, out: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(out.name)]
    assert not left, f"a failed start left {left}"


def test_help_shows_every_option_with_its_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit, match="0"):
        cli.main(["mine", "--help"])
    text = capsys.readouterr().out
    blocks = {}  # option -> its help text
    for block in re.split(r"\n(?=  -)", text.split("options:", 1)[1].strip("\n")):
        words = block.split()
        blocks[words[0].rstrip(",")] = " ".join(words)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    either = {a.dest for group in parser._mutually_exclusive_groups for a in group._group_actions}
    assert {"--mode", "--steps", "--keep-negative-std", "--skip-bad-images", "--restart"} <= {
        a.option_strings[0] for a in options
    }
    for action in options:
        name = action.option_strings[0]
        assert name in blocks, f"{name} missing from --help"
        assert len(blocks[name].split()) > 3, f"{name} has no help text: {blocks[name]!r}"
        if action.default is not None and action.default is not False:
            assert f"(default: {action.default})" in blocks[name], blocks[name]
        elif not action.required and action.dest not in either and not isinstance(action, argparse._StoreTrueAction):
            assert "(default: " in blocks[name], f"{name} does not say what happens without it: {blocks[name]!r}"
    with pytest.raises(SystemExit, match="0"):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "mine" in top
    assert "``" not in top and "``" not in text


def test_argument_errors_come_before_anything_is_written(dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    base = ["--images", str(images), "--out", str(out)]
    glob = [*base, "--prompt", "x"]
    patch = [*base, "--class-styles", "--mode", "patch", "--labels", str(labels)]
    no_cuda = [] if torch.cuda.is_available() else [(["--device", "cuda"], ["CUDA is not available", "--device cpu"])]
    cases = [  # each a start-up of the command: only the cases the user reported, and one of each kind
        (["--crop", "0"], ["--crop must be >= 1"]),
        (["--feature-noise", "nan"], ["--feature-noise", "nan"]),
        (["--pool-to", "-1"], ["--pool-to must be >= 0"]),
        (["--clip-model", "RN5O"], ["no such open_clip model", "did you mean RN50"]),
        (["--clip-weights", str(tmp_path / "missing.pt")], ["missing.pt", "no such file"]),
        (["--device", "tpu"], ["--device tpu", "cpu, cuda"]),
        *no_cuda,
    ]
    for extra, needles in cases:
        done = mine(*glob, *extra, check=False)
        line = assert_one_line_error(done, *needles)
        assert len(line) < 400, f"a short message, not a list of every model: {line}"
        assert "initialized randomly" not in done.stdout + done.stderr
        assert_nothing_written(tmp_path, out)
    # patch mode: a grid that does not divide the 16x16 feature map of 64x64 images, a missing labels folder
    assert_one_line_error(mine(*patch, "--grid", "3", check=False), "--grid 3 does not divide", "--crop 60")
    assert_nothing_written(tmp_path, out)
    missing = tmp_path / "no-labels"
    done = mine(*base, "--class-styles", "--mode", "patch", "--labels", str(missing), check=False)
    assert_one_line_error(done, str(missing), "does not exist")
    # the output: missing parent (not created), under a regular file, an existing directory
    done = mine(*base[:2], "--prompt", "x", "--out", "/nonexistent_dir_of_styleda/x.safetensors", check=False)
    assert_one_line_error(done, "/nonexistent_dir_of_styleda", "does not exist")
    assert not Path("/nonexistent_dir_of_styleda").exists()
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    assert_one_line_error(mine(*glob, "--out", str(regular / "x.safetensors"), check=False), "is a file")
    assert_one_line_error(mine(*glob, "--out", str(tmp_path), check=False), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_the_grid_hint_works(dataset, tmp_path):
    """The crop the grid error suggests makes the same command run."""
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    args = ["--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--out", str(out)]
    hint = re.search(r"--crop (\d+)", mine(*args, check=False).stderr).group(1)
    mine(*args, "--crop", hint)
    assert len(StyleBank.load(out)) > 0


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` pixels (no image data): enough for PIL's size checks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)  # PIL reads up to the first IDAT chunk to open a PNG; it decodes nothing yet
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_unminable_image_folders(tmp_path):
    rng = np.random.default_rng(1)
    out = tmp_path / "bank.safetensors"
    # two sizes in one chunk: both files named, --crop suggested
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(mixed / "a.png")
    Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(mixed / "b.png")
    done = mine("--images", str(mixed), "--prompt", "x", "--out", str(out), check=False)
    assert_one_line_error(done, "a.png is 64x64", "b.png is 80x64", "--crop")
    # a label map of another size than its image
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(labels / "a.png")
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(labels / "b.png")
    done = mine("--images", str(mixed), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "1",
                "--crop", "64", "--out", str(out), check=False)  # fmt: skip
    assert_one_line_error(done, "label map b.png is 40x64", "its image b.png is 80x64")
    # PIL's decompression-bomb guard
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bomb / "a.png")
    _png_header_only(bomb / "huge.png", 30000, 30000)
    done = mine("--images", str(bomb), "--prompt", "x", "--out", str(out), check=False)
    assert_one_line_error(done, "huge.png", "decompression-bomb", "--skip-bad-images")
    assert not any(p.name.startswith(out.name) for p in tmp_path.iterdir())


@pytest.mark.slow
def test_openai_weights_without_network_fail_fast(dataset, tmp_path):
    """The default --clip-weights openai, with nothing in the caches (HOME and HF_HOME point to an empty folder):
    offline (HF_HUB_OFFLINE) it fails at once; otherwise after a short connection probe (only run where there is
    no network, so that the test never downloads weights)."""
    images, _ = dataset
    empty = tmp_path / "home"
    empty.mkdir()
    env = {"HOME": str(empty), "HF_HOME": str(empty / "hf"), "XDG_CACHE_HOME": str(empty / "cache")}
    args = ["--images", str(images), "--prompt", "x", "--out", str(tmp_path / "b.safetensors"), "--templates", "1"]
    started = time.monotonic()
    assert_one_line_error(mine(*args, "--clip-model", "RN5O", common=False, check=False, env=env))
    baseline = time.monotonic() - started  # start-up, imports and the model-name check alone
    started = time.monotonic()
    done = mine(*args, common=False, check=False, env={**env, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(done, "--clip-weights openai", "not in the cache", "--clip-weights none")
    offline = time.monotonic() - started  # the same checks, the cache look-up included, without the probe
    assert offline < 2 * baseline + 10
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return  # a network: the command would download the weights
    except OSError:
        pass
    started = time.monotonic()
    done = mine(*args, common=False, check=False, env=env)
    assert_one_line_error(done, "cannot be reached", "--clip-weights none")
    assert time.monotonic() - started < 2 * offline + 10, "a probe of a few seconds, not a download's timeout"
    assert "initialized randomly" not in done.stdout + done.stderr


def test_a_fifo_among_the_images_is_skipped_not_read(dataset, tmp_path):
    """Opening a FIFO blocks until someone writes to it: the command must not open it."""
    images, _ = dataset
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(images.iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    os.mkfifo(folder / "a.png")
    out = tmp_path / "bank.safetensors"
    done = mine("--images", str(folder), "--prompt", "x", "--out", str(out), timeout=300)
    assert "a.png (a FIFO)" in done.stderr and "a.png (a FIFO)" in done.stdout, done.stdout + done.stderr
    assert len(StyleBank.load(out)) == 2
