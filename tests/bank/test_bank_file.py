"""The StyleBank file (format version 2): the checksum covers every metadata entry and the tensors, a missing
checksum is refused, the provenance is saved and read back; save names a missing folder; add refuses meta tensors.
"""

from __future__ import annotations

import copy
import json
import pickle
import struct
import warnings

import pytest
import torch

from styleda_fast import StyleBank

C = 5
PROVENANCE = {
    "tool": "styleda-fast mine",
    "mode": "patch",
    "model": "RN50",
    "class_template": "{class} while {domain}",
    "class_prompts": {"road": ["a road at night", "a wet road at night"], "sky": ["the night sky"]},
    "steps": 100,
    "text_noise": 0.05,
    "seed": 7,
    "images": 3,
    "resumed": False,
    "note": None,
}


def bank_with_provenance() -> StyleBank:
    gen = torch.Generator().manual_seed(3)
    bank = StyleBank(C, num_classes=3, class_names=["road", "sky", "car"], provenance=PROVENANCE, backbone="RN50")
    bank.add(torch.randn(4, C, generator=gen), torch.rand(4, C, generator=gen) + 0.1, torch.tensor([0, 1, 1, 255]))
    return bank


def read_metadata(path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])["__metadata__"]


def rewrite_metadata(path, change) -> None:
    """Rewrite the file's safetensors metadata with ``change(metadata)``, the tensors' bytes as they were."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def same(a: StyleBank, b: StyleBank) -> bool:
    return (
        a.metadata() == b.metadata()
        and a.provenance == b.provenance
        and torch.equal(a.mean, b.mean)
        and torch.equal(a.std, b.std)
        and torch.equal(a.class_ids, b.class_ids)
    )


def test_provenance_is_saved_under_the_checksum_and_read_back(tmp_path):
    """Issue 20 item 3: a bank records how it was made; save/load, deepcopy and pickle keep it."""
    bank = bank_with_provenance()
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    meta = read_metadata(path)
    assert meta["format_version"] == "2" and json.loads(meta["provenance"]) == PROVENANCE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = StyleBank.load(path)
    assert same(loaded, bank) and loaded.provenance == PROVENANCE
    for duplicate in (copy.deepcopy(bank), pickle.loads(pickle.dumps(bank))):
        assert same(duplicate, bank)
        duplicate.provenance["class_prompts"]["road"].append("changed")
        assert bank.provenance == PROVENANCE  # a copy, not shared
    assert StyleBank(C).provenance == {}
    plain = tmp_path / "plain.safetensors"
    StyleBank(C).save(plain)
    assert StyleBank.load(plain).provenance == {}


def test_provenance_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="provenance"):
        StyleBank(C, provenance=[("seed", 1)])
    with pytest.raises(TypeError, match="provenance"):
        StyleBank(C, provenance={1: "a"})
    with pytest.raises(ValueError, match="provenance"):
        StyleBank(C, provenance={"sigma": float("nan")})
    with pytest.raises(ValueError, match="provenance"):
        StyleBank(C, provenance={"model": object()})
    bank = StyleBank(C, provenance={"seed": 1})
    bank.provenance["bad"] = float("inf")  # changed in place after the check: save checks again
    with pytest.raises(ValueError, match="provenance"):
        bank.save(tmp_path / "bank.safetensors")
    assert not (tmp_path / "bank.safetensors").exists()
    bank.provenance = {"steps": (1, 2)}
    assert bank.provenance == {"steps": [1, 2]}  # kept as JSON reads it back


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(format_version="1"),  # not covered by the version-1 checksum
        lambda m: m.update(provenance=json.dumps({**PROVENANCE, "seed": 8})),
        lambda m: m.update(extra="added"),
        lambda m: m.pop("provenance"),
        lambda m: m.update(bank=m["bank"].replace('"RN50"', '"RN101"')),
    ],
    ids=["format_version", "provenance", "extra-entry", "provenance-removed", "bank"],
)
def test_the_checksum_covers_all_metadata(tmp_path, change):
    """Issue 22 item 12: only the 'bank' entry was covered; a changed format_version, provenance or any other
    metadata entry is now refused (and loads with verify=False)."""
    path = tmp_path / "bank.safetensors"
    bank_with_provenance().save(path)
    rewrite_metadata(path, change)
    with pytest.raises(ValueError, match=r"bank\.safetensors.*integrity check"):
        StyleBank.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StyleBank.load(path, verify=False)


def test_a_current_file_without_its_checksum_is_refused(tmp_path):
    """Issue 22 item 12: a tampered file with the 'checksum' entry removed loaded with only a warning. A version-2
    file without one is an error unless verify=False."""
    bank = bank_with_provenance()
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + length])["std"]["data_offsets"][0]
    data[8 + length + begin] ^= 0x01  # a tampered style (the lowest bit of the first std value) ...
    path.write_bytes(bytes(data))
    rewrite_metadata(path, lambda m: m.pop("checksum"))  # ... and the checksum that would tell
    with pytest.raises(ValueError, match=r"bank\.safetensors' has no checksum.*verify=False"):
        StyleBank.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = StyleBank.load(path, verify=False)
    assert loaded.provenance == PROVENANCE and not torch.equal(loaded.std, bank.std)


@pytest.mark.parametrize("version", ["0", "3", "02", "1.0", ""])
def test_unknown_format_versions_are_refused(tmp_path, version):
    path = tmp_path / "bank.safetensors"
    bank_with_provenance().save(path)
    rewrite_metadata(path, lambda m: m.update(format_version=version))
    with pytest.raises(ValueError, match="format version"):
        StyleBank.load(path, verify=False)


def test_invalid_provenance_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bank.safetensors"
    bank_with_provenance().save(path)
    for text in ("[1, 2]", "{not json", "[" * 100_000 + "]" * 100_000):
        rewrite_metadata(path, lambda m, text=text: m.update(provenance=text))
        with pytest.raises(ValueError, match=r"bank\.safetensors.*metadata"):
            StyleBank.load(path, verify=False)


@pytest.mark.parametrize("argument", ["mean", "std", "class_ids"])
def test_add_refuses_meta_tensors_naming_the_argument(argument):
    """Issue 22 item 16: StyleBank.add with a meta tensor raised NotImplementedError."""
    bank = StyleBank(C, num_classes=3, class_names=["a", "b", "c"])
    args = {"mean": torch.randn(2, C), "std": torch.rand(2, C), "class_ids": torch.tensor([0, 1])}
    args[argument] = args[argument].to("meta")
    with pytest.raises(ValueError, match=rf"{argument} is a meta tensor"):
        bank.add(**args)
    assert len(bank) == 0


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    """Issue 22 item 16: StyleBank.save into a missing folder raised safetensors' own error. The folder is not
    created (a mistyped path stays an error): FileNotFoundError naming it; a file in place of the folder:
    NotADirectoryError."""
    bank = bank_with_provenance()
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=rf"folder '{missing}' does not exist"):
        bank.save(missing / "bank.safetensors")
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        bank.save(tmp_path / "file" / "bank.safetensors")
