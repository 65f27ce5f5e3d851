"""Bad arguments through the public functions and direct operator calls raise the rule's exception type (TypeError
for a type, ValueError for a value) with a message naming the argument."""

from __future__ import annotations

import pytest
import torch
from helpers import available_backends

import styleda_fast
from styleda_fast import patch_dominant_class, patch_mean_std

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: patch_dominant_class(torch.zeros(1, 4, 4, dtype=torch.long), 2, num_classes=2**40),
            ValueError,
            "num_classes",
        ),
        (
            lambda: patch_dominant_class(torch.zeros(1, 4, 4, dtype=torch.long), 2, ignore_index=2**63),
            ValueError,
            "ignore_index",
        ),
        (lambda: patch_mean_std(torch.randn(1, 1, 4, 4), 1, eps="1e-5"), TypeError, "eps"),
        (lambda: styleda_fast.labels_to_size(torch.zeros(1, 4, 4, dtype=torch.long), (2, 0)), ValueError, "size"),
        (lambda: styleda_fast.labels_to_size(torch.zeros(1, 4, 4, dtype=torch.long), (2, 2.0)), TypeError, "size"),
    ],
)
def test_bad_arguments_raise_the_rule_type(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_direct_operator_calls_with_bad_arguments_get_clear_errors(backend):
    """The registered operators are reachable without the public API; every backend checks their arguments."""
    from styleda_fast.core.library import operators

    def call(name, *args):
        if backend == "cpp":
            return getattr(torch.ops.styleda_fast, name)(*args)
        return operators()[name].run_triton(*args)

    x = torch.randn(2, 3, 8, 8)
    good = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="grid"):
        call("patch_mean_std", x, 9, 1, 1e-5)
    with pytest.raises(ValueError, match="target_mean"):
        call("local_style_mix", x, torch.zeros(2, 3, 3, 3), good, None, 2, 2, True, 1e-5)
    with pytest.raises(ValueError, match="target_std"):
        call("local_style_mix", x, good, good.double(), None, 2, 2, True, 1e-5)
    with pytest.raises(ValueError, match="out"):
        call("local_style_mix_into", x, good, good, None, 2, 2, True, 1e-5, torch.empty(2, 3, 8, 7))
    with pytest.raises(TypeError, match="labels"):
        call("patch_dominant_class", torch.zeros(1, 4, 4), 2, 2, 19, 255, True)
    with pytest.raises(ValueError, match="num_classes"):
        call("patch_dominant_class", torch.zeros(1, 4, 4, dtype=torch.long), 2, 2, 0, 255, True)
    with pytest.raises(ValueError, match="same shape"):
        call("clip_cosine_loss", torch.randn(2, 4), torch.randn(2, 5))
