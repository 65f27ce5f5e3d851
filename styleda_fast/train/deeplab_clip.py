"""The segmentation model of the PODA/FAMix training jobs: DeepLabv3+ on an open_clip ModifiedResNet (RN50).

Used by :mod:`.poda_train_step`, :mod:`.famix_train_step`, :mod:`.study` (Cityscapes -> ACDC) and the ``jobs``
benchmark family. The network is the one both public training scripts build, written here from its description:

* backbone: the CLIP image encoder without its attention pool, at output stride 16: ``layer4`` keeps the
  resolution of ``layer3`` (its strided average pools become identities) and the 3x3 convolution of its last block
  is dilated by 2 (where the public backbone puts the dilation); the weights are CLIP's, unchanged;
* head: ASPP on ``layer4`` (1x1 and three 3x3 branches at rates 6, 12, 18, an image-pooling branch, 256 channels,
  projection with dropout 0.1), a 48-channel projection of the ``layer1`` features (the low-level skip), a 3x3
  convolution on both, a 1x1 classifier; logits upsampled to the input size.

The augmentation acts on the ``layer1`` output, which feeds both ``layer2`` and the skip (as in the public code).
It is inserted with ``styleda_fast.nn.insert(model, "backbone.layer1", layer)``; such a hook acts only while its
host is in training mode, so :func:`freeze` leaves a frozen module in training mode and fixes its BatchNorms
instead (eval mode: running statistics, as the public ``eval()`` of the frozen part).

Also here: the public augmentation code as an inserted layer (``reference_public``: Python loops, full-size maps
built on the CPU), for comparisons, and the synthetic batch the step jobs train on.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from styleda_fast import CITYSCAPES_CLASSES, StyleBank, local_style_mix, patch_dominant_class
from styleda_fast.compat.public_code import famix_step_public, poda_transfer
from styleda_fast.nn.functional import beta_weights

NUM_CLASSES = 19
IGNORE = 255


# ---------------------------------------------------------------------------------------------- CLIP backbone


def load_visual(weights: str = "none", name: str = "RN50", seed: int = 0) -> nn.Module:
    """The image tower of open_clip ``name``: ``weights`` ``"none"`` (random, seeded: no download), ``"openai"``
    (downloaded once to open_clip's cache) or the path of a state dict (of the whole CLIP model)."""
    from styleda_fast.mining.command import load_clip

    model, _ = load_clip(name, weights, seed)
    return model.visual


class ClipBackbone(nn.Module):
    """Stem, ``layer1``..``layer4`` of a CLIP ModifiedResNet at output stride 16: images -> (layer1, layer4).

    ``checkpoint_layer4=True`` recomputes ``layer4`` in the backward pass instead of keeping its activations
    (``torch.utils.checkpoint``, non-reentrant: its input needs no gradient). Same numbers; the BatchNorm running
    statistics of ``layer4``, which the recomputation would update a second time, are put back by
    :meth:`after_backward`.
    """

    def __init__(self, visual: nn.Module, checkpoint_layer4: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
            visual.conv3, visual.bn3, visual.act3, visual.avgpool,
        )  # fmt: skip
        self.layer1, self.layer2, self.layer3, self.layer4 = visual.layer1, visual.layer2, visual.layer3, visual.layer4
        first, last = self.layer4[0], self.layer4[-1]
        first.avgpool = nn.Identity()  # stride 1 instead of 2 (output stride 16)
        first.downsample._modules["-1"] = nn.Identity()
        last.conv2.dilation, last.conv2.padding = (2, 2), (2, 2)
        self.checkpoint_layer4 = checkpoint_layer4
        self._layer4_buffers: list[Tensor] | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        low = self.layer1(self.stem(images.to(self.stem[0].weight.dtype)))
        x = self.layer3(self.layer2(low))
        if self.checkpoint_layer4 and torch.is_grad_enabled():
            x = checkpoint(self.layer4, x, use_reentrant=False)
            self._layer4_buffers = [b.clone() for b in self.layer4.buffers()]
        else:
            x = self.layer4(x)
        return low, x

    def after_backward(self) -> None:
        """Undo the second BatchNorm statistics update of a checkpointed ``layer4`` (call after ``backward``)."""
        if self._layer4_buffers is not None:
            with torch.no_grad():
                for b, saved in zip(self.layer4.buffers(), self._layer4_buffers):
                    b.copy_(saved)
            self._layer4_buffers = None


# ---------------------------------------------------------------------------------------------- DeepLabv3+ head


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class ASPP(nn.Module):
    def __init__(self, cin: int, rates=(6, 12, 18), cout: int = 256):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(cin, cout))
        self.project = nn.Sequential(_conv_bn_relu(cout * (len(rates) + 2), cout), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, high: int = 2048, low: int = 256):
        super().__init__()
        self.aspp = ASPP(high)
        self.low_project = _conv_bn_relu(low, 48)
        self.fuse = _conv_bn_relu(48 + 256, 256, 3)
        self.classify = nn.Conv2d(256, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.low_project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classify(self.fuse(torch.cat([low, high], dim=1)))


class SegmentationModel(nn.Module):
    """``backbone`` (:class:`ClipBackbone`) + ``classifier`` (:class:`DeepLabV3PlusHead`); logits at input size."""

    def __init__(self, visual: nn.Module, num_classes: int = NUM_CLASSES, checkpoint_layer4: bool = False):
        super().__init__()
        self.backbone = ClipBackbone(visual, checkpoint_layer4)
        self.classifier = DeepLabV3PlusHead(num_classes)
        self.frozen: list[nn.Module] = []

    def forward(self, images: Tensor) -> Tensor:
        low, high = self.backbone(images)
        logits = self.classifier(low, high)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        for module in self.frozen:  # frozen parts keep their BatchNorm statistics
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def freeze(model: SegmentationModel, *modules: nn.Module) -> None:
    """No gradients for ``modules``' parameters and fixed BatchNorm statistics (the public ``freeze``/``eval()``),
    the modules themselves left in training mode so that an augmentation inserted after one of them still acts."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
        model.frozen.append(module)
    model.train(model.training)


def poly_schedule(optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9, min_lr: float = 1e-6):
    """The public poly learning rate: ``max(base_lr * (1 - it / total_iters) ** power, min_lr)`` per group."""
    factors = [
        (lambda it, base=group["lr"]: max((1 - it / total_iters) ** power, min_lr / base))
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


# ---------------------------------------------------------------------------------------------- banks and batches


def random_bank(classes: bool, styles_per_class: int = 8, channels: int = 256, seed: int = 0) -> StyleBank:
    """A random bank (styles around the statistics of random-weight layer1 features): PODA's class-less bank
    (``classes=False``: 64 styles) or FAMix's 19 classes + the fallback ``255``."""
    gen = torch.Generator().manual_seed(seed)
    if classes:
        ids = torch.cat([torch.arange(NUM_CLASSES), torch.tensor([IGNORE])]).repeat_interleave(styles_per_class)
        bank = StyleBank(channels, NUM_CLASSES, IGNORE)
    else:
        ids = torch.full((64,), IGNORE)
        bank = StyleBank(channels, 0, IGNORE)
    mean = torch.rand(len(ids), channels, generator=gen) * 0.5
    std = torch.rand(len(ids), channels, generator=gen) * 0.5 + 0.1
    bank.add(mean, std, ids)
    return bank


def synthetic_batch(batch: int, crop: int, seed: int = 0, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """``(images (B, 3, crop, crop), labels (B, crop, crop))``: normalized-image-like noise, and train-id label
    maps of 6x6 blocks (about 8% unlabelled) so that patches have clear dominant classes."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, crop, crop, generator=gen, dtype=dtype)
    blocks = torch.randint(0, NUM_CLASSES, (batch, 6, 6), generator=gen)
    blocks[torch.rand(batch, 6, 6, generator=gen) < 0.08] = IGNORE
    side = -(-crop // 6)
    labels = blocks.repeat_interleave(side, 1).repeat_interleave(side, 2)[:, :crop, :crop].contiguous()
    return images, labels


# ---------------------------------------------------------------------------------------------- in-place augmentation


class InPlaceBankAugment(nn.Module):
    """``StyleBankAugment.poda(bank)`` / ``.famix(bank)`` written into its input (``local_style_mix(..., out=x)``
    under ``torch.no_grad()``), for a backbone frozen up to the augmented layer, whose output needs no gradient:
    no second feature map. It draws what ``StyleBankAugment`` draws, in the same order, from a generator seeded the
    same way (``seed``), so a step gives the same numbers either way.

    Args:
        recipe: ``"poda"`` (global, a style per image from the whole bank, ``U[0, 1)`` mixing) or ``"famix"``
            (3x3 patches, styles of each patch's dominant class, ``Beta(0.1, 0.1)`` mixing; labels through
            :meth:`set_labels`).
    """

    def __init__(self, bank: StyleBank, recipe: str, seed: int = 0):
        super().__init__()
        if recipe not in ("poda", "famix"):
            raise ValueError(f"recipe must be 'poda' or 'famix', got {recipe!r}")
        self.bank, self.recipe = bank, recipe
        self.generator = torch.Generator(bank.device).manual_seed(seed)
        self.labels: Tensor | None = None

    def set_labels(self, labels: Tensor) -> None:
        self.labels = labels

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("in-place augmentation needs a frozen backbone: its input must not require grad")
        B, C = x.shape[:2]
        g, bank = self.generator, self.bank
        if self.recipe == "famix":
            grid = 3
            dominant = patch_dominant_class(self.labels, grid, num_classes=bank.num_classes, ignore_index=bank.fallback)
            mean, std = bank.sample_grid(dominant, generator=g)
            s = beta_weights(0.1, 0.1, (B, C), g, bank.device)
        else:
            grid = 1
            mean, std = bank.sample_any(B, generator=g)
            mean, std = mean.view(B, C, 1, 1), std.view(B, C, 1, 1)
            s = torch.rand((B, C), generator=g, device=bank.device)
        with torch.no_grad():
            return local_style_mix(
                x, mean.to(x.device), std.to(x.device), grid=grid, mix=s.to(x.device), activation="relu", out=x
            )


# ---------------------------------------------------------------------------------------------- the public code


class PublicPodaTransfer(nn.Module):
    """PODA's transfer as its training script runs it (``reference_public.poda_transfer``): per image a style
    picked with ``random.choice`` (the script opens one pickle per image; here the bank's styles are a list in
    memory), ``s ~ U[0, 1)`` drawn on the CPU from torch's global generator."""

    def __init__(self, bank: StyleBank, seed: int = 0):
        super().__init__()
        self.styles = list(zip(bank.mean.cpu().unbind(0), bank.std.cpu().unbind(0)))
        self.rng = random.Random(seed)

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        mu_t, std_t = torch.zeros(B, C, 1, 1), torch.zeros(B, C, 1, 1)
        for k in range(B):
            mean, std = self.rng.choice(self.styles)
            mu_t[k], std_t[k] = mean.view(C, 1, 1), std.view(C, 1, 1)
        s = torch.rand((B, C)).to(x.device)
        return poda_transfer(x, mu_t.to(x.device, x.dtype), std_t.to(x.device, x.dtype), s.to(x.dtype))


def famix_saved_params(bank: StyleBank) -> dict:
    """FAMix's bank structure (``{"<class>_mu": [(C, 1, 1), ...], "<class>_std": [...], "255_mu": ...}``)."""
    names = [*bank.class_names, str(bank.fallback)]
    params = {f"{n}_{k}": [] for n in names for k in ("mu", "std")}
    for mean, std, c in zip(bank.mean.cpu(), bank.std.cpu(), bank.class_ids.tolist()):
        name = str(bank.fallback) if c == bank.fallback else bank.class_names[c]
        params[name + "_mu"].append(mean.view(-1, 1, 1))
        params[name + "_std"].append(std.view(-1, 1, 1))
    return params


class PublicFamixTransfer(nn.Module):
    """FAMix's transfer as its training script runs it (``reference_public.famix_step_public``: ``torch.mode``
    per patch on the CPU labels, ``random.choice`` per patch and image, full-size maps built on the CPU and copied
    to the device, ``s ~ Beta(0.1, 0.1)`` from torch's global generator). Labels: :meth:`set_labels`."""

    def __init__(self, bank: StyleBank, seed: int = 0):
        super().__init__()
        self.saved_params = famix_saved_params(bank)
        self.class_names = list(bank.class_names) if bank.num_classes else list(CITYSCAPES_CLASSES)
        self.rng = random.Random(seed)
        self.labels: Tensor | None = None

    def set_labels(self, labels: Tensor) -> None:
        self.labels = labels.cpu()

    def forward(self, x: Tensor) -> Tensor:
        s = torch.distributions.Beta(0.1, 0.1).sample((x.shape[0], x.shape[1], 1, 1)).to(x.device, x.dtype)
        return famix_step_public(x, self.labels, self.saved_params, s, self.class_names, self.rng)
