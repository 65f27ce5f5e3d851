"""One PODA adaptation step (prompt-driven feature augmentation, one mined style per image) with styleda_fast.

The model and settings are those of the public PODA training script (``main.py``) in its adaptation run: DeepLabv3+
on CLIP RN50 at output stride 16 (:mod:`.deeplab_clip`); the whole backbone frozen (``--freeze_BB``), the head
trained; SGD with momentum 0.9, weight decay 1e-4, lr 0.01, poly schedule (power 0.9) over 2000 iterations;
cross-entropy (ignore 255); crop 768, batch 8; styles mixed with ``U[0, 1)`` weights (``--mix``). Here the batch is
synthetic (random images, block label maps) and the CLIP weights random unless ``--clip-weights openai|PATH``.

The lines that differ from the public script:

* the augmentation is a layer inserted after ``layer1`` instead of the transfer branch of the model's forward, and
  the per-image ``random.choice`` + ``pickle.load`` of the training loop goes with it::

      aug = StyleBankAugment.poda(StyleBank.load(path), generator=seed)   # a style per image, U[0, 1) mixing
      insert(model, "backbone.layer1", aug)

* the styles come from one ``StyleBank`` file on the device (``styleda-fast mine --mode global --prompt ...``, or
  ``StyleBank.from_poda_dir(dir)``) instead of a folder of pickles read every step;
* the frozen backbone keeps training mode with its BatchNorms in eval mode (``deeplab_clip.freeze``), so that the
  inserted layer acts: the same numbers as the public ``backbone.eval()``.

``--in-place`` writes the augmentation into the ``layer1`` output (the backbone is frozen: nothing needs the
original), the same numbers without a second feature map.

    python examples/poda_train_step.py --crop 288 --batch 2
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from styleda_fast import StyleBank
from styleda_fast.memory import SavedBytes
from styleda_fast.train import deeplab_clip as dc
from styleda_fast.train import steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--crop", type=int, default=768, help="crop size, a multiple of 16 (default 768)")
    steps.add_step_arguments(p, recipe="poda", lr=0.01, lr_help="head lr (default 0.01)", total_iters=2000)
    args = p.parse_args(argv)
    if args.crop % 16:
        p.error("--crop must be a multiple of 16 (output stride 16)")
    steps.check_step_arguments(p, args)
    return args


def build(args: argparse.Namespace, visual: nn.Module | None = None) -> steps.Job:
    """The model, augmentation, optimizer and a synthetic batch; ``visual`` (a CLIP image tower) is used as given
    (modified in place) instead of loading one."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if visual is None:
        visual = dc.load_visual(args.clip_weights, seed=args.seed)
    model = dc.SegmentationModel(visual)
    dc.freeze(model, model.backbone)
    model.to(device, dtype).train()

    bank = StyleBank.load(args.bank, map_location=device) if args.bank else dc.random_bank(False).to(device)
    aug = steps.attach_augmentation(model, bank, "poda", args)

    optimizer = torch.optim.SGD(model.classifier.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = dc.poly_schedule(optimizer, args.total_iters)
    criterion = nn.CrossEntropyLoss(ignore_index=dc.IGNORE)
    images, labels = dc.synthetic_batch(args.batch, args.crop, seed=args.seed, dtype=dtype)
    return steps.Job(model, aug, optimizer, scheduler, criterion, images.to(device), labels.to(device))


def forward_loss(job: steps.Job, saved: SavedBytes | None = None) -> Tensor:
    """The forward pass and the loss (``saved``: counts what autograd keeps for backward meanwhile)."""
    if saved is None:
        return job.criterion(job.model(job.images), job.labels)
    with saved:
        return job.criterion(job.model(job.images), job.labels)


def forward_backward(job: steps.Job) -> Tensor:
    """Gradients of one step (no update); returns the loss."""
    return steps.forward_backward(job, forward_loss)


def step(job: steps.Job) -> Tensor:
    """One training step: forward, backward, SGD update, schedule; returns the loss."""
    return steps.step(job, forward_loss)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return steps.run_steps(args, build(args), forward_loss)


if __name__ == "__main__":
    main()
