"""The CLIP model of a mining run: checking its name and weights without loading it (the cache, a short probe of
the download server), and loading it. open_clip is imported only when a function here runs."""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from styleda_fast.mining.config import MineError
from styleda_fast.mining.engine import is_vision_transformer

PROBE_TIMEOUT_S = 3.0  # --clip-weights openai without a cached file: how long to wait for the download server


def check_clip_model(name: str, split_block: int | None = None) -> None:
    """A ModifiedResNet (no --split-block) or a plain VisionTransformer (--split-block K in [0, layers])."""
    import open_clip

    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. RN50, RN101, RN50x4, ViT-B-16"
        raise MineError(f"--clip-model {name}: no such open_clip model{hint}")
    config = open_clip.get_model_config(name) or {}
    vision = config.get("vision_cfg", {})
    layers = vision.get("layers")
    if isinstance(layers, (list, tuple)):
        if split_block is not None:
            raise MineError(f"--split-block is for ViT models; {name} is a ModifiedResNet (mined after layer1)")
        return
    if not is_plain_vit(config):
        resnets = [m for m in models if isinstance(open_clip.get_model_config(m)["vision_cfg"].get("layers"), list)]
        raise MineError(
            f"--clip-model {name} is neither a ModifiedResNet nor a plain open_clip VisionTransformer (timm and "
            f"Hugging Face towers are not supported); use a ViT such as ViT-B-16, or one of {', '.join(resnets)}"
        )
    if split_block is None:
        raise MineError(f"--clip-model {name} is a ViT: give --split-block K (0..{layers}), blocks before the split")
    if split_block > layers:
        raise MineError(f"--split-block {split_block}: {name} has {layers} transformer blocks (use 0..{layers})")


def is_plain_vit(config: dict) -> bool:
    vision = config.get("vision_cfg", {})
    return (
        isinstance(vision.get("layers"), int) and not vision.get("timm_model_name") and not vision.get("hf_model_name")
    )


def patch_size(name: str) -> int | None:
    """A ViT's patch size (None for a ModifiedResNet)."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        return None
    patch = vision.get("patch_size", 16)
    return patch[0] if isinstance(patch, (list, tuple)) else patch


def attention_grid(name: str) -> int | None:
    """The side of a ModifiedResNet's attention-pool grid (7 for RN50: 224 px / 32); None for a ViT."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if not isinstance(vision.get("layers"), (list, tuple)):
        return None
    return int(vision.get("image_size", 224)) // 32


def cached_openai_weights(name: str) -> tuple[str | None, str, dict]:
    """(path of the cached 'openai' weights of ``name`` or None, where they would be downloaded from, the tag's
    config). Looks where open_clip's download keeps them, without touching the network."""
    import open_clip
    from open_clip import pretrained

    cfg = open_clip.get_pretrained_cfg(name, "openai")
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise MineError(
            f"--clip-weights openai: open_clip has no OpenAI weights for {name} (tags: {', '.join(tags) or 'none'}); "
            "use --clip-weights PATH or none"
        )
    if cfg.get("hf_hub") and pretrained.has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for candidate in names:
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str) and os.path.isfile(found):
                return found, constants.ENDPOINT, cfg
        return None, constants.ENDPOINT, cfg
    url = cfg.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    expected = url.split("/")[-2] if "openaipublic" in url else ""
    if os.path.isfile(path):  # open_clip downloads straight into this file: check that it is whole
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        if not expected or digest.hexdigest().startswith(expected):
            return path, url, cfg
    return None, url, cfg


def server_answers(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds (name lookup included)."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    answered = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup can hang past any socket timeout
    thread.start()
    thread.join(timeout)
    return bool(answered)


def check_clip_weights(name: str, weights: str) -> tuple[str, str | None, bool]:
    """``(kind, path, quick_gelu)``: kind 'none', 'file' or 'openai'; path of the file to read (None: download)."""
    if weights == "none":
        return "none", None, False
    if weights != "openai":
        path = Path(weights)
        if not path.exists():
            raise MineError(f"--clip-weights {weights}: no such file (give a state dict PATH, 'openai' or 'none')")
        if not path.is_file():
            raise MineError(f"--clip-weights {weights}: not a regular file")
        if not os.access(path, os.R_OK):
            raise MineError(f"--clip-weights {weights}: not readable")
        return "file", str(path), False
    cached, source, cfg = cached_openai_weights(name)
    quick_gelu = bool(cfg.get("quick_gelu", False))  # OpenAI's CLIPs use QuickGELU
    if cached is not None:
        return "openai", cached, quick_gelu
    hint = "use --clip-weights none (random weights, offline) or --clip-weights PATH to a local state dict"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        raise MineError(
            f"--clip-weights openai: {name}'s weights are not in the cache and HF_HUB_OFFLINE is set; {hint}"
        )
    if not server_answers(source, PROBE_TIMEOUT_S):
        raise MineError(
            f"--clip-weights openai: {name}'s weights are not in the cache and {source} cannot be reached "
            f"(no network?); {hint}"
        )
    return "openai", None, quick_gelu


class DropRandomInitWarning:
    """open_clip logs 'Model initialized randomly' when it creates a model without weights; we load them after."""

    def filter(self, record) -> bool:
        return "initialized randomly" not in record.getMessage()


def load_clip(name: str, weights: str, seed: int, *, checked: tuple[str, str | None, bool] | None = None):
    """An open_clip model (eval mode) and its tokenizer; ``weights`` is a state-dict path, 'openai' or 'none'."""
    import open_clip

    kind, path, quick_gelu = checked or check_clip_weights(name, weights)
    torch.manual_seed(seed)  # 'none': the same random weights on every rank and every run
    quiet = DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        if kind == "openai":  # a cached file is read directly: no network access, not even a freshness check
            model = open_clip.create_model(name, pretrained=path or "openai", force_quick_gelu=quick_gelu)
        else:
            model = open_clip.create_model(name, pretrained=None)
        if kind == "file":
            state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise MineError(f"--clip-weights {weights}: not a state dict (a {type(state).__name__})")
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise MineError(
                    f"--clip-weights {weights} does not fit {name}: {len(missing)} missing keys "
                    f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
                )
    except MineError:
        raise
    except Exception as exc:  # unreadable file, shape mismatch, download failure
        raise MineError(f"cannot load CLIP {name} with weights {weights!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    if not hasattr(model.visual, "attnpool") and not is_vision_transformer(model.visual):
        raise MineError(f"--clip-model {name} is neither a ModifiedResNet nor an open_clip VisionTransformer")
    return model.eval(), open_clip.get_tokenizer(name)
