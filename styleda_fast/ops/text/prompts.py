"""Prompt data of PODA and FAMix (CLIP templates, FAMix styles, Cityscapes train ids), shipped as data.

* :data:`IMAGENET_TEMPLATES`: the 80 ImageNet prompt templates of CLIP's zero-shot evaluation, in the order the
  public PODA/FAMix code lists them (the order does not change the template mean).
* :data:`FAMIX_STYLES`: the 20 random artistic styles FAMix combines with class names.
* :data:`CITYSCAPES_CLASSES`: the 19 Cityscapes class names, indexed by train id (255 is the ignore label).
* :func:`famix_descriptions`: FAMix's per-class descriptions, ``"<random style> <class name>"``, and ``"photo"``
  for the ignore class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
FAMIX_STYLES: tuple[str, ...] = (
    "Ethereal Mist style",
    "Cyberpunk Cityscape style",
    "Rustic Charm style",
    "Galactic Fantasy style",
    "Pastel Dreams style",
    "Dystopian Noir style",
    "Whimsical Wonderland style",
    "Urban Grit style",
    "Enchanted Forest style",
    "Retro Futurism style",
    "Monochrome Elegance style",
    "Vibrant Graffiti style",
    "Haunting Shadows style",
    "Steampunk Adventures style",
    "Watercolor Serenity style",
    "Industrial Chic style",
    "Cosmic Voyage style",
    "Pop Art Popularity style",
    "Abstract Symphony style",
    "Magical Realism style",
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

IGNORE_INDEX = 255
IGNORE_DESCRIPTION = "photo"


def famix_descriptions(
    classes: Iterable[int] | None = None,
    *,
    class_names: Sequence[str] = CITYSCAPES_CLASSES,
    styles: Sequence[str] = FAMIX_STYLES,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> list[str]:
    """FAMix's text description of each class: ``"<random style> <class name>"``, and ``"photo"`` for the ignore class.

    Args:
        classes: train ids (e.g. the distinct dominant classes of a batch's patches), ``ignore_index`` allowed;
            default: every class ``0..len(class_names)-1`` followed by ``ignore_index``.
        class_names: name of each train id.
        styles: the styles to draw from, uniformly and independently for each class (as FAMix does per batch).
        ignore_index: the label whose description is ``"photo"``.
        generator: a CPU ``torch.Generator`` for reproducible draws (default: torch's global generator).
    Returns:
        One description per entry of ``classes``, in order; feed them to :func:`styleda_fast.encode_prompts`.
    """
    if classes is None:
        classes = [*range(len(class_names)), ignore_index]
    classes = list(classes)
    if not styles:
        raise ValueError("styles must not be empty")
    out = []
    for c in classes:
        if isinstance(c, torch.Tensor):
            c = int(c)
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"classes must hold ints (train ids), got {type(c).__name__}")
        if c == ignore_index:
            out.append(IGNORE_DESCRIPTION)
            continue
        if not 0 <= c < len(class_names):
            raise ValueError(
                f"classes: train id {c} is not in [0, {len(class_names)}) nor the ignore index {ignore_index}"
            )
        style = styles[int(torch.randint(len(styles), (), generator=generator))]
        out.append(f"{style} {class_names[c]}")
    return out
