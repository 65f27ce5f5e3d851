"""Loaders read regular files only: a FIFO, a directory or a device named like a style file is skipped (folders) or
refused (single files) instead of blocking forever or raising IsADirectoryError. Each case runs in a fresh process
with a timeout, so a loader that blocks fails the test instead of hanging the suite."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C = 4

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")

_RUN = textwrap.dedent(
    """
    import json, sys, warnings
    from styleda_fast import StyleBank
    from styleda_fast.compat import famix, poda

    LOADERS = {
        "load_stats": poda.load_stats,
        "load_saved_params": famix.load_saved_params,
        "from_poda_dir": StyleBank.from_poda_dir,
        "from_famix_pickle": StyleBank.from_famix_pickle,
        "load": StyleBank.load,
        "safe_unpickle": __import__("styleda_fast.bank.style_bank", fromlist=["x"]).safe_unpickle,
    }
    out = []
    for name, path in json.loads(sys.argv[1]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = LOADERS[name](path)
                outcome = f"ok {len(result)}"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
        out.append([name, outcome, [f"{w.category.__name__}: {w.message}" for w in caught]])
        print(json.dumps(out[-1]), flush=True)
    """
)


def run_loaders(cases, timeout=120):
    """Each (loader, path) in one fresh process; returns [(loader, outcome, warnings)]. A blocked loader times out."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _RUN, json.dumps([[n, str(p)] for n, p in cases])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"a loader blocked for {timeout} s; finished before it: {done}")
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


def write_style(path):
    with open(path, "wb") as f:
        pickle.dump({"mu_f1": torch.randn(C, 1, 1), "std_f1": torch.rand(C, 1, 1)}, f)


def test_fifos_and_directories_are_skipped_or_refused(tmp_path):
    folder = tmp_path / "styles"
    folder.mkdir()
    write_style(folder / "a.pkl")
    os.mkfifo(folder / "b.pkl")  # nobody ever writes to it: opening it for reading would block
    (folder / "x.pkl").mkdir()
    os.symlink(folder / "b.pkl", folder / "c.pkl")  # a link to the FIFO
    os.symlink(tmp_path / "missing", folder / "d.pkl")  # a broken link
    fifo = tmp_path / "lone.pkl"
    os.mkfifo(fifo)
    bank_fifo = tmp_path / "bank.safetensors"
    os.mkfifo(bank_fifo)
    only_fifos = tmp_path / "only"
    only_fifos.mkdir()
    os.mkfifo(only_fifos / "z.pkl")
    cases = [
        ("from_poda_dir", folder),
        ("load_stats", fifo),
        ("load_saved_params", fifo),
        ("from_famix_pickle", fifo),
        ("safe_unpickle", fifo),
        ("load", bank_fifo),
        ("load_stats", folder / "x.pkl"),
        ("load", tmp_path),
        ("from_poda_dir", only_fifos),
        ("load_stats", "/dev/zero"),  # endless: must be refused, not read
    ]
    results = run_loaders(cases)
    assert len(results) == len(cases)
    (name, outcome, caught) = results[0]
    assert outcome == "ok 1", outcome  # a.pkl only
    assert len(caught) == 1, caught
    for entry in ("'b.pkl' (a FIFO", "'c.pkl' (a FIFO", "'x.pkl' (a directory", "'d.pkl' (unreadable"):
        assert entry in caught[0], (entry, caught[0])
    assert "skipped 4 entries" in caught[0]
    for name, outcome, _ in results[1:6]:
        assert outcome.startswith(("ValueError", "NotRegularFileError")), (name, outcome)
        assert "FIFO" in outcome and "not a regular file" in outcome, (name, outcome)
    assert "x.pkl' is a directory" in results[6][1]
    assert "is a directory" in results[7][1]
    assert results[8][1].startswith("ValueError") and "skipped 1 that are not regular files" in results[8][1]
    assert "character device" in results[9][1]
