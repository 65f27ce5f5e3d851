"""Style-augmentation layers on the fused kernels: MixStyle, PermutedAdaIN, DSU, and PODA/FAMix bank transfer.

    import styleda_fast.nn as snn

    aug = snn.MixStyle(p=0.5, alpha=0.1, generator=0)
    handle = snn.insert(model, "layer1", aug)   # forward hook after model.layer1; state_dict unchanged
    with snn.disabled(model):                   # every augmentation layer off inside the block
        ...
    handle.remove()                             # or snn.remove(model)

On ViT tokens ``(B, 1 + h*w, C)``: ``snn.PatchTokens(aug)`` applies ``aug`` to the patch tokens (no copy in, the
class token passed through).

``styleda_fast.nn.functional`` holds the same augmentations with the random draws as arguments;
``styleda_fast.nn.reference`` states what the public implementations compute (the tests' specification).
"""

from styleda_fast.nn import functional
from styleda_fast.nn.insert import Insertion, augmentations, disabled, insert, remove
from styleda_fast.nn.modules import (
    DistributionUncertainty,
    MixStyle,
    PermutedAdaIN,
    StyleAugmentation,
    StyleBankAugment,
)
from styleda_fast.nn.tokens import PatchTokens

__all__ = [
    "DistributionUncertainty",
    "Insertion",
    "MixStyle",
    "PatchTokens",
    "PermutedAdaIN",
    "StyleAugmentation",
    "StyleBankAugment",
    "augmentations",
    "disabled",
    "functional",
    "insert",
    "remove",
]
