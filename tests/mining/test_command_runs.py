"""`styleda-fast mine` as a process among others: failed and changed starts, one run per output (a lock), Ctrl-C,
progress on a terminal and in a log, a full or read-only disk. Real subprocesses, signals and file systems."""

from __future__ import annotations

import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import COMMON, REFERENCE, ROOT, mine, same_bank  # noqa: E402
from test_command_checks import assert_one_line_error  # noqa: E402
from test_mine_styles import copy_files  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "styleda_fast.cli", "mine", *COMMON, *args]


def wait_for(condition, process, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def test_failed_and_changed_starts_do_not_block_the_next(dataset, tmp_path):
    images, _ = dataset
    out, parts = tmp_path / "bank.safetensors", tmp_path / "bank.safetensors.parts"
    args = ["--images", str(images), "--prompt", "x", "--out", str(out)]
    assert_one_line_error(mine(*args, "--crop", "0", check=False), "--crop")
    assert not parts.exists()
    # parts without a finished chunk: other arguments start over without a word
    mine(*args, "--max-chunks", "0")
    assert (parts / "run.json").exists() and not list(parts.glob("chunk-*"))
    done = mine(*args, "--steps", "2")
    assert "arguments" not in done.stderr and "discarded" not in done.stderr, done.stderr
    silent = StyleBank.load(out)
    # finished chunks of other arguments: each differing argument named, --restart offered
    mine(*args, "--max-chunks", "1")
    done = mine(*args, "--steps", "2", "--feature-noise", "0.5", check=False)
    assert_one_line_error(done, "1 finished chunks", "--steps: 1 before, 2 now", "--feature-noise: 0.0 before, 0.5 now",
                          "--restart")  # fmt: skip
    assert len(list(parts.glob("chunk-*.safetensors"))) == 1
    done = mine(*args, "--steps", "2", "--restart")
    assert "--restart: discarded 1 finished chunks" in done.stderr
    restarted = StyleBank.load(out)
    assert torch.equal(silent.mean, restarted.mean) and torch.equal(silent.std, restarted.std)


@pytest.mark.slow
def test_one_run_per_output_and_a_killed_run_does_not_block(dataset, tmp_path):
    images, _ = dataset
    out, lock = tmp_path / "bank.safetensors", tmp_path / "bank.safetensors.lock"
    args = ["--images", str(images), "--prompt", "x", "--out", str(out)]
    first = subprocess.Popen(command(*args, "--steps", "10000"), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: lock.exists() and lock.read_text().startswith(f"{first.pid} "), first, "lock")
        done = mine(*args, check=False)
        assert_one_line_error(done, f"PID {first.pid} on {socket.gethostname()}", str(lock))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.exists(), "a killed run leaves its lock file behind"
    mine(*args)  # not blocked by it
    assert len(StyleBank.load(out)) == 5 and not lock.exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_chunks_and_prints_the_resume_command(dataset, reference_bank, tmp_path):
    images, _ = dataset
    out, parts = tmp_path / "bank.safetensors", tmp_path / "bank.safetensors.parts"
    args = ["--images", str(images), *REFERENCE]
    run = subprocess.Popen(command(*args, "--out", str(out)), env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: list(parts.glob("chunk-*.safetensors")), run, "finished chunk")
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=300)
    if run.returncode == 0:
        pytest.skip("the run finished before Ctrl-C reached it")
    assert run.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr
    *progress, last = stderr.strip().splitlines()
    progress_line = r"mining chunk \d+/3(: step \d+/\d+| done .*), ETA "  # a step line every 30 s, one per chunk
    assert "\r" not in stderr and all(re.match(progress_line, line) for line in progress), stderr
    found = re.fullmatch(r"interrupted: (\d+) finished chunk\(s\) kept in (.+); resume with: (.+)", last)
    assert found, last
    assert int(found[1]) == len(list(parts.glob("chunk-*.safetensors"))) >= 1 and found[2] == str(parts)
    resumed = subprocess.run(shlex.split(found[3]), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{found[1]} chunks done before" in resumed.stdout
    assert same_bank(StyleBank.load(reference_bank[0]), StyleBank.load(out))


@pytest.mark.slow
def test_progress_on_a_terminal_and_errors_on_a_line_of_their_own(dataset, tmp_path):
    """stdout and stderr on a terminal (a pseudo-terminal): the progress line shows the steps and the time left,
    redrawn in place; the error of a broken image in the second chunk starts on a new line."""
    folder = copy_files(dataset[0], tmp_path / "images")
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:2000])
    leader, follower = pty.openpty()
    run = subprocess.Popen(command("--images", str(folder), "--prompt", "x", "--steps", "3", "--out",
                                   str(tmp_path / "bank.safetensors")),
                           env=ENV, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)
    received = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not data:
            break
        received.append(data)
    os.close(leader)
    assert run.wait(timeout=300) == 2
    text = b"".join(received).decode()
    assert re.search(r"\rmining chunk 1/3: step [1-3]/3, ETA ", text), text
    assert re.search(r"\rmining chunk 1/3 done \(2 styles\), ETA \d", text), text
    error = text.index("styleda-fast mine: error: cannot read image")
    assert text[error - 1] == "\n", repr(text[error - 80 : error + 30])
    assert "Traceback" not in text


def _namespace_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _namespace_works(), reason="needs unshare -rm (a user and mount namespace) for a tmpfs")
def test_full_and_read_only_file_systems(dataset, tmp_path):
    """A small tmpfs fills up while the chunks are written (ENOSPC); a read-only one is refused before mining.
    Each in a private mount namespace, so nothing is mounted outside the test."""
    images, _ = dataset
    mount = tmp_path / "mnt"
    mount.mkdir()
    run = shlex.join(command("--images", str(images), "--prompt", "x", "--out", str(mount / "bank.safetensors")))
    for options, needles in (
        ("size=16k", ["no space left on the device while writing", str(mount)]),
        ("ro", ["--out", "is not writable"]),
    ):
        script = f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mount))} && exec {run}"
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert_one_line_error(done, *needles, after_progress=True)
