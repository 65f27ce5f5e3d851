"""Putting augmentation layers into an existing model, taking them out, and switching them off for a while.

:func:`insert` registers a forward hook on the named submodule that passes its output through the layer; the model's
modules, parameters and ``state_dict`` stay exactly as they were (nothing is wrapped or added), so checkpoints load
either way and :func:`remove` restores the model. The layer acts only while the hooked submodule is in training mode
(``model.eval()`` turns it off) and the layer itself is in training mode and enabled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["Insertion", "augmentations", "disabled", "insert", "remove"]


class _AugmentHook:
    """Forward hook: the host's output through the augmentation layer, in training mode only."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module
        self.name = name
        self.handle = None

    def __call__(self, host: nn.Module, args, output):
        if not host.training:
            return None
        if not isinstance(output, Tensor):
            raise TypeError(
                f"styleda_fast.nn: the output of {self.name!r} must be a (B, C, H, W) tensor for the inserted "
                f"{type(self.module).__name__}, got {type(output).__name__}"
            )
        return self.module(output)


class Insertion:
    """Handle of one :func:`insert`: ``.remove()`` takes the layer out again (also as a context manager)."""

    def __init__(self, model: nn.Module, name: str, module: nn.Module, hook: _AugmentHook) -> None:
        self.model_type = type(model).__name__
        self.name = name
        self.module = module
        self._hook = hook

    @property
    def removed(self) -> bool:
        return self._hook.handle is None

    def remove(self) -> None:
        """Remove the hook (no-op if already removed)."""
        if self._hook.handle is not None:
            self._hook.handle.remove()
            self._hook.handle = None

    def __enter__(self) -> Insertion:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"Insertion({self.module!r} after {self.model_type}.{self.name or '<model>'}, {state})"


def insert(model: nn.Module, name: str, module: nn.Module) -> Insertion:
    """Apply ``module`` to the output of ``model``'s submodule ``name`` (e.g. ``"layer1"``, ``"visual.layer2"``;
    ``""`` is the model itself) on every forward call in training mode.

    The submodule must return a ``(B, C, H, W)`` tensor. Several layers inserted after one submodule run in the
    order of insertion. Returns an :class:`Insertion` whose ``remove()`` undoes it; :func:`remove` removes by name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be the dotted name of a submodule (a str), got {type(name).__name__}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module (an augmentation layer), got {type(module).__name__}")
    host = _submodule(model, name)
    hook = _AugmentHook(module, name)
    hook.handle = host.register_forward_hook(hook)
    return Insertion(model, name, module, hook)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        top = sorted(n for n, _ in model.named_children())
        raise ValueError(
            f"name {name!r} is not a submodule of {type(model).__name__} (its children: {', '.join(top)})"
        ) from None


def _hooks(model: nn.Module) -> Iterator[tuple[str, _AugmentHook]]:
    for sub_name, sub in model.named_modules(remove_duplicate=False):
        for hook in list(sub._forward_hooks.values()):
            if isinstance(hook, _AugmentHook):
                yield sub_name, hook


def remove(model: nn.Module, what: str | nn.Module | Insertion | None = None) -> int:
    """Remove inserted layers from ``model``: all of them (``what=None``), those after submodule ``what`` (a name),
    a given layer (a module), or one :class:`Insertion`. Returns how many were removed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if what is not None and not isinstance(what, (str, nn.Module, Insertion)):
        raise TypeError(f"what must be None, a submodule name, a module or an Insertion, got {type(what).__name__}")
    if isinstance(what, str):
        _submodule(model, what)  # a name that is not a submodule is an error, not "nothing removed"
    removed = 0
    for sub_name, hook in list(_hooks(model)):
        match = (
            what is None
            or (isinstance(what, str) and sub_name == what)
            or (isinstance(what, Insertion) and hook is what._hook)
            or (isinstance(what, nn.Module) and hook.module is what)
        )
        if match and hook.handle is not None:
            hook.handle.remove()
            hook.handle = None
            removed += 1
    return removed


def augmentations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The augmentation layers of ``model``: ``(where, layer)`` for each inserted layer (``where`` = the name of
    the submodule it follows) and each style-augmentation layer that is a submodule (``where`` = its name)."""
    from styleda_fast.nn.modules import StyleAugmentation

    found = [(name, hook.module) for name, hook in _hooks(model)]
    found += [(name, m) for name, m in model.named_modules() if isinstance(m, StyleAugmentation)]
    return found


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Switch off every augmentation layer of ``model`` (inserted or built in) inside the ``with`` block; each gets
    its previous ``enabled`` state back on leaving, also when the block raises."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {id(m): m for _, m in augmentations(model) if hasattr(m, "enabled")}
    previous = [(m, m.enabled) for m in layers.values()]
    try:
        for m, _ in previous:
            m.enabled = False
        yield model
    finally:
        for m, state in previous:
            m.enabled = state
