"""Style banks: :class:`StyleBank` (per-class style statistics, sampling, safetensors files) and the safe loaders
of the public code's pickles (an unpickler that rebuilds tensors and refuses everything else)."""

from styleda_fast.bank.style_bank import StyleBank

__all__ = ["StyleBank"]
