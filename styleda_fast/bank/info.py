"""``styleda-fast bank info FILE [--json]``: what a style bank holds and how it was made.

Reads a StyleBank file (safetensors), a FAMix pickle (``*.pkl`` / ``*.pickle``) or a PODA folder (a directory of
pickles) through the package's loaders (the pickles with the safe unpickler: no code runs), and prints the
format, the provenance (mining options, the prompt of each class), the number of styles per class and per class
the mean over its styles and channels of the style mean and std. A file that cannot be read gives one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from styleda_fast.bank.bank_file import FORMAT
from styleda_fast.bank.style_bank import StyleBank

PICKLE_SUFFIXES = (".pkl", ".pickle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bank_command", required=True)
    info = sub.add_parser(
        "info",
        help="format, provenance, styles per class and a summary of a bank file, FAMix pickle or PODA folder",
        description="Describe a style bank: a StyleBank file (.safetensors), a FAMix pickle (.pkl, .pickle) or a "
        "PODA folder (a directory of .pkl files).",
    )
    info.add_argument("file", help="the bank: a StyleBank file, a FAMix pickle or a PODA folder")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def load_any(path: str) -> tuple[StyleBank, str]:
    """The bank at ``path`` and its kind: a folder is a PODA folder, ``*.pkl`` / ``*.pickle`` a FAMix pickle, anything
    else a StyleBank file."""
    if os.path.isdir(path):
        return StyleBank.from_poda_dir(path), "PODA folder"
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no such file or folder: {path!r}")
    if path.lower().endswith(PICKLE_SUFFIXES):
        return StyleBank.from_famix_pickle(path), "FAMix pickle"
    return StyleBank.load(path), FORMAT


def _format_version(path: str, kind: str) -> str | None:
    if kind != FORMAT:
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("format_version")


def describe(path: str) -> dict:
    """The summary ``bank info`` prints, as a JSON-representable dict."""
    bank, kind = load_any(path)
    ids = [*range(bank.num_classes), bank.fallback]
    names = [*bank.class_names, str(bank.fallback)]
    class_prompts = bank.provenance.get("class_prompts")
    classes = []
    for class_id, name in zip(ids, names, strict=True):
        chosen = bank.class_ids == class_id
        count = int(chosen.sum())
        prompt = class_prompts.get(name) if isinstance(class_prompts, dict) else None
        classes.append(
            {
                "id": class_id,
                "name": name,
                "fallback": class_id == bank.fallback,
                "styles": count,
                "mean_of_mean": float(bank.mean[chosen].double().mean()) if count else None,
                "mean_of_std": float(bank.std[chosen].double().mean()) if count else None,
                "prompt": prompt if prompt is not None else bank.prompts.get(name),
            }
        )
    return {
        "file": path,
        "kind": kind,
        "format": kind if kind == FORMAT else None,
        "format_version": _format_version(path, kind),
        "styles": len(bank),
        "channels": bank.channels,
        "num_classes": bank.num_classes,
        "fallback": bank.fallback,
        "backbone": bank.backbone,
        "layer": bank.layer,
        "empty_class": bank.empty_class,
        "provenance": bank.provenance,
        "classes": classes,
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _text(info: dict) -> str:
    version = f" version {info['format_version']}" if info["format_version"] else ""
    lines = [
        f"file: {info['file']}",
        f"format: {info['kind']}{version}",
        f"styles: {info['styles']} ({info['channels']} channels); classes: {info['num_classes']} and the fallback "
        f"class {info['fallback']}; a class without styles: {info['empty_class']}",
    ]
    if info["backbone"] or info["layer"]:
        lines.append(f"features: {info['backbone'] or '?'}, {info['layer'] or '?'}")
    provenance = info["provenance"]
    if provenance:
        lines.append("provenance:")
        for key, value in provenance.items():
            if isinstance(value, dict):
                lines.append(f"  {key}:")
                lines += [f"    {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
            else:
                lines.append(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    else:
        lines.append("provenance: none recorded")
    width = max(len(c["name"]) for c in info["classes"])
    lines.append(f"  {'id':>5}  {'class':{width}}  {'styles':>7}  {'mean(mean)':>10}  {'mean(std)':>10}  prompt")
    for c in info["classes"]:
        prompt = json.dumps(c["prompt"], ensure_ascii=False) if c["prompt"] is not None else "-"
        lines.append(
            f"  {c['id']:>5}  {c['name']:{width}}  {c['styles']:>7}  {_number(c['mean_of_mean']):>10}  "
            f"{_number(c['mean_of_std']):>10}  {prompt}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``bank info``: 0 and the summary on stdout; 2 and one line on stderr when the bank cannot be read."""
    from styleda_fast.bank.safe_load import FileBudgetError, UnsafePickleError

    path = os.fsdecode(args.file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info = describe(path)
        except (OSError, ValueError, TypeError, UnsafePickleError, FileBudgetError, MemoryError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"styleda-fast bank info: error: {message}", file=sys.stderr)
            return 2
    for warning in caught:
        print(f"styleda-fast bank info: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
    print(json.dumps(info, ensure_ascii=False) if args.json else _text(info))
    return 0
