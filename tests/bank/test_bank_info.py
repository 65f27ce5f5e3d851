"""``styleda-fast bank info FILE [--json]`` on every bank kind (StyleBank file, FAMix pickle, PODA folder) and on bad
files, through the real command (``python -m styleda_fast.cli``) and in process (``cli.main``). Issue 20 item 3."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from styleda_fast import StyleBank, cli

C = 6
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVENANCE = {
    "tool": "styleda-fast mine",
    "mode": "patch",
    "model": "RN50",
    "pretrained": "openai",
    "domain": "driving at night",
    "class_template": "{class} while {domain}",
    "class_prompts": {"road": ["road while driving at night"], "sky": ["a dark sky"]},
    "steps": 100,
    "seed": 3,
}


def _styles(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=gen, dtype=torch.float64) * 2 + 1, torch.rand(n, C, generator=gen) + 0.2


def write_bank(path) -> StyleBank:
    bank = StyleBank(
        C, num_classes=3, class_names=["road", "sky", "car"], prompts={"car": "a car"}, provenance=PROVENANCE
    )
    mean, std = _styles(7, 0)
    bank.add(mean, std, torch.tensor([0, 0, 1, 1, 1, 255, 255]))
    bank.save(path)
    return bank


def write_famix(path) -> dict:
    gen = torch.Generator().manual_seed(1)
    data = {}
    for name, n in (("road", 2), ("building", 3), ("255", 1)):
        data[f"{name}_mu"] = [torch.randn(C, 1, 1, generator=gen) for _ in range(n)]
        data[f"{name}_std"] = [torch.rand(C, 1, 1, generator=gen) + 0.1 for _ in range(n)]
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return data


def write_poda(folder) -> list[dict]:
    folder.mkdir()
    gen = torch.Generator().manual_seed(2)
    styles = []
    for i in range(4):
        style = {"mu_f1": torch.randn(C, 1, 1, generator=gen), "std_f1": torch.rand(C, 1, 1, generator=gen) + 0.1}
        with open(folder / f"img_{i}.pkl", "wb") as f:
            pickle.dump(style, f)
        styles.append(style)
    return styles


def command(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "styleda_fast.cli", "bank", "info", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["bank", "info", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _by_name(info: dict) -> dict:
    return {c["name"]: c for c in info["classes"]}


def test_a_stylebank_file(tmp_path, capsys):
    path = tmp_path / "bank.safetensors"
    bank = write_bank(path)
    done = command(str(path), "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    info = json.loads(done.stdout)
    assert info["kind"] == "styleda_fast.StyleBank" and info["format_version"] == "2"
    assert info["provenance"] == PROVENANCE and info["styles"] == 7 and info["channels"] == C
    classes = _by_name(info)
    assert [classes[n]["styles"] for n in ("road", "sky", "car", "255")] == [2, 3, 0, 2]
    for name, k in (("road", 0), ("sky", 1), ("255", 255)):
        chosen = bank.class_ids == k
        assert classes[name]["mean_of_mean"] == pytest.approx(float(bank.mean[chosen].double().mean()), rel=1e-12)
        assert classes[name]["mean_of_std"] == pytest.approx(float(bank.std[chosen].double().mean()), rel=1e-12)
    assert classes["car"]["mean_of_mean"] is None and classes["car"]["prompt"] == "a car"
    assert classes["road"]["prompt"] == ["road while driving at night"]
    rc, out, err = in_process(capsys, str(path), "--json")
    assert rc == 0 and err == "" and json.loads(out) == info
    rc, text, err = in_process(capsys, str(path))
    assert rc == 0 and err == ""
    assert "format: styleda_fast.StyleBank version 2" in text
    assert 'class_template: "{class} while {domain}"' in text and 'road: ["road while driving at night"]' in text
    road = next(line for line in text.splitlines() if line.split()[:2] == ["0", "road"])
    assert road.split()[2:5] == ["2", f"{classes['road']['mean_of_mean']:.4g}", f"{classes['road']['mean_of_std']:.4g}"]
    assert command(str(path)).stdout.strip() == text.strip()


def test_a_famix_pickle(tmp_path, capsys):
    path = tmp_path / "famix_styles.pkl"
    data = write_famix(path)
    done = command(str(path), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["kind"] == "FAMix pickle" and info["provenance"] == {} and info["styles"] == 6
    classes = _by_name(info)
    assert classes["road"]["styles"] == 2 and classes["building"]["styles"] == 3 and classes["255"]["styles"] == 1
    assert classes["sky"]["styles"] == 0
    want = torch.stack([t.double().flatten() for t in data["building_std"]]).mean()
    assert classes["building"]["mean_of_std"] == pytest.approx(float(want), rel=1e-6)
    rc, text, _ = in_process(capsys, str(path))
    assert rc == 0 and "format: FAMix pickle" in text and "provenance: none recorded" in text


def test_a_poda_folder(tmp_path, capsys):
    folder = tmp_path / "poda_styles"
    styles = write_poda(folder)
    rc, out, err = in_process(capsys, str(folder), "--json")
    assert rc == 0 and err == ""
    info = json.loads(out)
    assert info["kind"] == "PODA folder" and info["num_classes"] == 0 and info["styles"] == 4
    (fallback,) = info["classes"]
    want = torch.stack([s["mu_f1"].double().flatten() for s in styles]).mean()
    assert fallback["styles"] == 4 and fallback["mean_of_mean"] == pytest.approx(float(want), rel=1e-6)
    done = command(str(folder))
    assert done.returncode == 0 and "format: PODA folder" in done.stdout


class _Code:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _bad_files(tmp_path) -> dict[str, str]:
    good = tmp_path / "good.safetensors"
    write_bank(good)
    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x01
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    (tmp_path / "text.safetensors").write_text("not a bank at all\n")
    with open(tmp_path / "code.pkl", "wb") as f:
        pickle.dump({"road_mu": [_Code()], "road_std": [torch.ones(C)]}, f)
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2, 3], f)
    (tmp_path / "empty_folder").mkdir()
    return {
        "missing": str(tmp_path / "missing.safetensors"),
        "corrupt": str(corrupt),
        "truncated": str(truncated),
        "text": str(tmp_path / "text.safetensors"),
        "code": str(tmp_path / "code.pkl"),
        "not-famix": str(tmp_path / "list.pkl"),
        "empty-folder": str(tmp_path / "empty_folder"),
    }


MESSAGES = {
    "missing": "no such file",
    "corrupt": "integrity check",
    "truncated": "not a readable safetensors",
    "text": "not a readable safetensors",
    "code": "system",
    "not-famix": "not a FAMix style file",
    "empty-folder": "no PODA style files",
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_bad_files_give_one_line_and_exit_2(tmp_path, capsys, case):
    path = _bad_files(tmp_path)[case]
    done = command(path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("styleda-fast bank info: error: "), done.stderr
    assert "Traceback" not in done.stderr and MESSAGES[case] in done.stderr
    rc, out, err = in_process(capsys, path, "--json")
    assert rc == 2 and out == "" and err == done.stderr


def test_warnings_of_a_loader_are_single_lines(tmp_path, capsys):
    """A PODA folder with a subfolder matching the pattern: the loader's warning, one line on stderr, exit 0."""
    folder = tmp_path / "poda"
    write_poda(folder)
    (folder / "sub.pkl").mkdir()
    rc, out, err = in_process(capsys, str(folder))
    assert rc == 0 and "format: PODA folder" in out
    assert err.count("\n") == 1 and err.startswith("styleda-fast bank info: warning: ") and "sub.pkl" in err
