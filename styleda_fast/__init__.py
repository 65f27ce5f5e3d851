"""styleda_fast: fused kernels for language-driven feature style augmentation (PODA, FAMix).

    from styleda_fast import local_style_mix, patch_mean_std

CPU tensors run fused C++ kernels, CUDA tensors fused Triton kernels; ``backends()`` says what runs here and
``use_backend(name)`` forces one.
"""

from styleda_fast.bank import StyleBank
from styleda_fast.compat import legacy_paths
from styleda_fast.core.backend import BackendStatus, backends, use_backend
from styleda_fast.nn.tokens import grid_as_tokens, grid_prefix, tokens_as_grid
from styleda_fast.ops.class_stats import class_mean_std, labels_to_size, patch_dominant_class
from styleda_fast.ops.style_mix import local_style_mix, patch_bounds, patch_mean_std
from styleda_fast.ops.text import clip_cosine_loss, encode_prompts, noisy_style_features, noisy_text_projection
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES, FAMIX_STYLES, IMAGENET_TEMPLATES, famix_descriptions

legacy_paths.install()

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "CITYSCAPES_CLASSES",
    "FAMIX_STYLES",
    "IMAGENET_TEMPLATES",
    "StyleBank",
    "backends",
    "class_mean_std",
    "clip_cosine_loss",
    "encode_prompts",
    "famix_descriptions",
    "grid_as_tokens",
    "grid_prefix",
    "labels_to_size",
    "local_style_mix",
    "noisy_style_features",
    "noisy_text_projection",
    "patch_bounds",
    "patch_dominant_class",
    "patch_mean_std",
    "tokens_as_grid",
    "use_backend",
]
