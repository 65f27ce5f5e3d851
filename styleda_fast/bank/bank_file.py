"""The StyleBank file: safetensors with the tensors ``mean``, ``std``, ``class_ids`` and string metadata.

Metadata (format version 2): ``format`` (``styleda_fast.StyleBank``), ``format_version``, ``bank`` (JSON: channels,
classes, prompts, backbone, layer, empty_class), ``provenance`` (JSON: how the bank was made) and ``checksum``:
SHA-256 over every other metadata entry (names and values, sorted by name) and each tensor's name, dtype, shape and
bytes. Version 1 files (older writers) have a checksum over ``bank`` and the tensors only, or none.

The checksum detects corruption (a flipped bit, a truncated or edited file), not tampering: it has no key, so
whoever changes a file can compute a new one. It gives integrity, not authenticity.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping

import torch
from torch import Tensor

from styleda_fast.bank.safe_load import Budget, open_regular, short

FORMAT = "styleda_fast.StyleBank"
FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")
CHECKSUM_PREFIX = "sha256:"
_SAFETENSORS_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def _digest_tensors(digest, tensors: Mapping[str, Tensor]) -> None:
    for name in ("mean", "std", "class_ids"):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())


def checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """The version-2 checksum: every metadata entry but ``checksum`` itself, then the tensors."""
    digest = hashlib.sha256(b"styleda_fast.StyleBank checksum 2\0")
    for key in sorted(k for k in metadata if k != "checksum"):
        for part in (key, metadata[key]):
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
    _digest_tensors(digest, tensors)
    return CHECKSUM_PREFIX + digest.hexdigest()


def checksum_v1(tensors: Mapping[str, Tensor], bank_json: str) -> str:
    """The version-1 checksum (files of older writers): the ``bank`` entry, then the tensors."""
    digest = hashlib.sha256(b"styleda_fast.StyleBank checksum 1\0")
    digest.update(bank_json.encode("utf-8", "surrogatepass") + b"\0")
    _digest_tensors(digest, tensors)
    return CHECKSUM_PREFIX + digest.hexdigest()


def check_safetensors_header(path, budget: Budget) -> None:
    """Check what a safetensors file declares against its size before anything is loaded: the header length, each
    tensor's dtype, shape and byte range, and the file size against ``max_bytes``."""
    where = repr(path)
    fd, size = open_regular(path, budget)
    bad = f"{where} is not a readable safetensors style bank (truncated or corrupt?)"
    with open(fd, "rb", closefd=True) as f:
        head = f.read(8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
        if length is None or length > size - 8 or length > _MAX_HEADER:
            raise ValueError(f"{bad}: its header declares {short(length)} bytes but the file has {size}")
        text = f.read(length)  # buffered: reads until `length` bytes or the end of the file
    if len(text) != length:
        raise ValueError(f"{bad}: the file changed while it was read")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{bad}: its header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: its header is not a JSON object")
    end = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (
                isinstance(info, dict) and all(isinstance(v, str) for v in info.values())
            ):  # fmt: skip
                raise ValueError(f"{bad}: its metadata must map str to str")
            continue
        try:
            itemsize = _SAFETENSORS_DTYPES[info["dtype"]]
            shape, (begin, stop) = info["shape"], info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, stop)) or len(shape) > 64:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{bad}: tensor {short(name)} has an invalid dtype, shape or data_offsets") from None
        numel = 1
        for s in shape:
            numel = min(numel * s, end + 1)  # bounded: anything past the file is wrong anyway
        if not begin <= stop <= end or (stop - begin) != numel * itemsize:
            raise ValueError(
                f"{bad}: tensor {short(name)} declares shape {short(shape)} at bytes [{short(begin)}, {short(stop)}) "
                f"but the file holds {end} bytes of data"
            )
