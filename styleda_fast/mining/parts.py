"""What a mining run keeps on disk: the output path's checks, ``OUT.parts/`` (``run.json`` with the run's options
and one ``chunk-NNNNNN.safetensors`` per finished chunk, each written atomically), from which a rerun of the same
command resumes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from styleda_fast.mining.config import MineConfig, MineError
from styleda_fast.mining.files import ImageFiles, shown


def run_record(config: MineConfig, files: ImageFiles) -> dict:
    """What ``run.json`` records: every option that changes the styles of a chunk. Options added after a run
    format was in use are recorded only when they are not at their default, so such runs still resume."""
    keys = ("images", "labels", "prompt", "class_styles", "clip_model", "clip_weights", "mode", "grid", "steps",
            "batch_size", "seed", "crop", "templates", "feature_noise", "pool_to", "keep_negative_std")  # fmt: skip
    record = {k: getattr(config, k) for k in keys}
    if config.split_block is not None:
        record["split_block"] = config.split_block
    if config.text_noise:
        record["text_noise"] = config.text_noise
        record["text_noise_draws"] = config.text_noise_draws
    if config.zero_shot:
        record["class_prompts"] = {name: list(p) for name, p in config.prompt_lists.items()}
    record["images"] = shown(Path(config.images).resolve())
    record["labels"] = shown(Path(config.labels).resolve()) if config.labels else None
    record["image_files"] = f"{len(files.images)} files, sha256 {files.names_sha256()[:16]}"
    record["fallback_styles"] = "first patch of a chunk without class 255" if config.mode == "patch" else None
    return record


def check_out(out: Path) -> None:
    """``MineError`` unless ``out`` can be written: a file name in an existing, writable folder."""
    parent = out.parent
    if not parent.exists():
        if any(p.exists() and not p.is_dir() for p in parent.parents):
            raise MineError(
                f"--out {shown(out)}: {shown(next(p for p in parent.parents if p.exists()))} is a file, not a folder"
            )
        raise MineError(f"--out {shown(out)}: the parent folder {shown(parent)} does not exist (create it first)")
    if not parent.is_dir():
        raise MineError(f"--out {shown(out)}: {shown(parent)} is a file, not a folder")
    if out.is_dir():
        raise MineError(f"--out {shown(out)}: is a directory; give a file name, e.g. {out / 'bank.safetensors'}")
    if out.exists() and not out.is_file():
        raise MineError(f"--out {shown(out)}: exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MineError(f"--out {shown(out)}: the folder {shown(parent)} is not writable")


def config_name(key: str) -> str:
    """A run.json key as the user knows it: the option's name, or a description of what it records."""
    if key in ("image_files", "fallback_styles"):
        return key.replace("_", " ")
    return f"--{key.replace('_', '-')}"


def chunk_file(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.safetensors"


def prepare_parts(parts: Path, config: dict, restart: bool) -> str:
    """Create OUT.parts/ with the run's configuration, or check that an existing one belongs to this run.
    Returns what happened, for the log ('' when nothing worth saying)."""
    run_file = parts / "run.json"
    note = ""
    if parts.exists() and not parts.is_dir():
        raise MineError(f"{shown(parts)} exists and is not a folder; move it away")
    if parts.is_dir():
        finished = sorted(parts.glob("chunk-*.safetensors"))
        previous = None
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, ValueError):
            pass
        if restart and finished:
            note = f"--restart: discarded {len(finished)} finished chunks of an earlier run in {shown(parts)}"
        elif finished and previous != config:
            if not isinstance(previous, dict):
                raise MineError(
                    f"{shown(parts)} holds finished chunks but no readable run.json; use --restart to discard them"
                )
            changed = [k for k in config if previous.get(k, "(not recorded)") != config[k]]
            changed += [k for k in previous if k not in config]
            what = "; ".join(
                f"{config_name(k)}: {previous.get(k, '(not recorded)')!r} before, {config.get(k)!r} now"
                for k in changed
            )
            raise MineError(
                f"{shown(parts)} holds {len(finished)} finished chunks of a run with other arguments ({what}); "
                "rerun with the earlier arguments to resume, or add --restart to discard them"
            )
        elif finished:
            return ""
        shutil.rmtree(parts)  # nothing finished (or --restart): start over
    parts.mkdir()
    tmp = parts / "run.json.tmp"
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp, run_file)  # atomic, like the chunk files
    return note


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a chunk file is complete or absent
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def disk_error(exc: BaseException, what: Path) -> MineError:
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
        return MineError(
            f"no space left on the device while writing {shown(what)}; free some space and run the same command again "
            "(finished chunks are kept)"
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return MineError(f"cannot write {shown(what)}: {detail}")


def chunk_bytes(result: dict[str, torch.Tensor], skipped: list[str]) -> bytes:
    tensors = {name: t.contiguous().cpu() for name, t in result.items()}
    return save(tensors, metadata={"skipped": json.dumps(skipped)})


def chunk_skipped(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("skipped", "[]"))
