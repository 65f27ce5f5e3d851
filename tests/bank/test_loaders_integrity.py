"""StyleBank files carry a SHA-256 checksum of their metadata and tensors: a flipped bit anywhere is either refused
or harmless (the bank loads identical), never a silently changed style."""

from __future__ import annotations

import warnings

import pytest
import torch

from styleda_fast import StyleBank

C = 4


def small_bank() -> StyleBank:
    gen = torch.Generator().manual_seed(0)
    bank = StyleBank(C, num_classes=3, class_names=["a", "b", "c"], prompts={"a": "an a"}, backbone="RN50")
    bank.add(torch.randn(3, C, generator=gen), torch.rand(3, C, generator=gen) + 0.1, torch.tensor([0, 2, 255]))
    return bank


def same(a: StyleBank, b: StyleBank) -> bool:
    return (
        a.metadata() == b.metadata()
        and torch.equal(a.mean, b.mean)
        and torch.equal(a.std, b.std)
        and torch.equal(a.class_ids, b.class_ids)
    )


def test_every_bit_flip_is_refused_or_harmless(tmp_path):
    bank = small_bank()
    good = tmp_path / "bank.safetensors"
    bank.save(good)
    data = good.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    flips = [(i, bit) for i in range(header_end, len(data)) for bit in range(8)]  # every bit of the tensors
    flips += [(i, i % 8) for i in range(header_end)]  # one bit of every header byte
    bad = tmp_path / "flipped.safetensors"
    silent, refused = [], 0
    for i, bit in flips:
        flipped = bytearray(data)
        flipped[i] ^= 1 << bit
        bad.write_bytes(bytes(flipped))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no flip loads with a warning (a renamed "checksum" key is refused)
            try:
                loaded = StyleBank.load(bad)
            except ValueError:
                refused += 1
                continue
        if not same(loaded, bank):
            silent.append((i, bit))
    assert not silent, f"{len(silent)} of {len(flips)} bit flips loaded with changed contents, e.g. {silent[:5]}"
    assert refused >= (len(data) - header_end) * 8  # every flip of the tensor bytes is caught


def test_checksum_mismatch_names_the_file_and_verify_false_skips_it(tmp_path):
    bank = small_bank()
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a bit of the last tensor's last value
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bank\.safetensors.*integrity check.*verify=False"):
        StyleBank.load(path)
    loaded = StyleBank.load(path, verify=False)
    assert not same(loaded, bank)  # unchecked: the changed value comes through
    with pytest.raises(TypeError, match="verify"):
        StyleBank.load(path, verify="no")


def test_version_1_files_without_checksum_still_load(tmp_path):
    """A bank written before checksums existed (format version 1, no 'checksum' entry) loads, with a warning saying it
    is unchecked."""
    import json

    from safetensors.torch import save_file

    bank = small_bank()
    old = tmp_path / "old.safetensors"
    meta = {k: v for k, v in bank.metadata().items() if k != "empty_class"}  # the version-1 metadata of old files
    save_file(
        {"mean": bank.mean, "std": bank.std, "class_ids": bank.class_ids},
        str(old),
        metadata={"format": "styleda_fast.StyleBank", "format_version": "1", "bank": json.dumps(meta)},
    )
    with pytest.warns(UserWarning, match=r"old\.safetensors' has no checksum"):
        loaded = StyleBank.load(old)
    assert same(loaded, bank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same(StyleBank.load(old, verify=False), bank)  # nothing to warn about when not verifying
        new = tmp_path / "new.safetensors"
        loaded.save(new)
        assert same(StyleBank.load(new), bank)  # re-saved: checked, no warning


def test_checksum_is_deterministic(tmp_path):
    from safetensors import safe_open

    bank = small_bank()
    bank.save(tmp_path / "a.safetensors")
    StyleBank.load(tmp_path / "a.safetensors").save(tmp_path / "b.safetensors")
    sums = []
    for name in ("a", "b"):
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as f:
            sums.append(f.metadata()["checksum"])
    assert sums[0] == sums[1] and sums[0].startswith("sha256:") and len(sums[0]) == len("sha256:") + 64
