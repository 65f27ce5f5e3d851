"""The import paths of release 0.1 (``styleda_fast.style_bank``, ``styleda_fast.style_mix``, ...), kept for one
release as aliases of the modules' new homes. Importing an old path gives the new module itself (same objects)
and a ``DeprecationWarning`` naming the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

OLD_TO_NEW = {
    "styleda_fast.style_mix": "styleda_fast.ops.style_mix",
    "styleda_fast.class_stats": "styleda_fast.ops.class_stats",
    "styleda_fast.text": "styleda_fast.ops.text",
    "styleda_fast.prompts": "styleda_fast.ops.text.prompts",
    "styleda_fast.tokens": "styleda_fast.nn.tokens",
    "styleda_fast.style_bank": "styleda_fast.bank.style_bank",
    "styleda_fast.mining": "styleda_fast.mining",  # now a package; its old names are still there
    "styleda_fast.mine_command": "styleda_fast.mining.command",
    "styleda_fast.reference_public": "styleda_fast.compat.public_code",
    "styleda_fast.gpu_report": "styleda_fast.devtools.gpu_report",
    "styleda_fast.testing": "styleda_fast.devtools.testing",
}


def new_name(old: str) -> str | None:
    """The module that replaced ``old`` (or a submodule of a replaced package), or None."""
    for before, after in OLD_TO_NEW.items():
        if before == after:
            continue
        if old == before or old.startswith(before + "."):
            return after + old[len(before) :]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class LegacyPathFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names and hands out the new modules under them."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path goes away in the next release", DeprecationWarning,
                      stacklevel=2)  # fmt: skip
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, LegacyPathFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyPathFinder())
