"""One FAMix training step (feature augmentation with patch-wise, class-aware styles) with styleda_fast.

The model and settings are those of the public FAMix training script (``main.py``): DeepLabv3+ on CLIP RN50 at
output stride 16 (:mod:`.deeplab_clip`); the stem, ``layer1``..``layer3`` frozen (and ``layer4[0:2]`` too with
``--finetune layer4.2``, its GTA5 setting), ``layer4`` and the head trained; SGD with momentum 0.9, weight decay
1e-4, lr 0.1 for the head and 0.01 for the backbone, poly schedule (power 0.9) over 40k iterations; cross-entropy
with label smoothing 0.1 (ignore 255); crop 768, batch 8. Here the batch is synthetic (random images, block label
maps) and the CLIP weights random unless ``--clip-weights openai|PATH``.

The lines that differ from the public script:

* the augmentation is a layer inserted after ``layer1`` instead of the transfer branch of the model's forward,
  and the per-patch ``torch.mode`` loop and the ``Beta(0.1, 0.1)`` draw of the training loop go with it::

      aug = StyleBankAugment.famix(StyleBank.load(path), generator=seed)   # 3x3 patches, dominant-class styles
      insert(model, "backbone.layer1", aug)
      ...
      aug.set_labels(labels)                                                # every step, before the forward

* the styles come from a ``StyleBank`` file (``styleda-fast mine --mode patch --class-styles``, or
  ``StyleBank.from_famix_pickle("saved_params.pkl")``) instead of the pickle of lists;
* frozen parts keep training mode with their BatchNorms in eval mode (``deeplab_clip.freeze``), so that the
  inserted layer acts: the same numbers as the public ``eval()``.

Memory options (``--in-place``, ``--checkpoint``: the same numbers, bit for bit; ``--bf16``: other numbers):

* ``--in-place``: the augmentation overwrites the ``layer1`` output (``local_style_mix(..., out=x)`` under
  ``torch.no_grad()``), allowed because nothing before it is trained: no second feature map while it runs (the
  step's peak, at the end of the forward pass, does not change);
* ``--checkpoint``: ``layer4`` is recomputed in the backward pass (``torch.utils.checkpoint``) instead of keeping
  its activations, about a third of what the step saves for backward; costs a second ``layer4`` forward;
* ``--bf16``: forward and loss under ``torch.autocast(dtype=torch.bfloat16)``: about 40% less saved for backward
  on top of checkpointing; the numbers change (the loss by under 2% in the tests).

Our augmentation saves for backward only what its gradient needs, and here, with the backbone frozen up to
``layer1``, nothing at all (neither does the public code, whose cost is transient: about ten feature-sized maps
while it runs). ``styleda-fast bench --family jobs`` prints the estimated sizes at crop 768, batch 8.

    python examples/famix_train_step.py --crop 288 --batch 2 --in-place --checkpoint
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from torch import Tensor, nn

from styleda_fast import StyleBank
from styleda_fast.memory import SavedBytes
from styleda_fast.train import deeplab_clip as dc
from styleda_fast.train import steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--crop", type=int, default=768, help="crop size; crop/4 must divide by 3 (default 768)")
    lr_help = "head lr; the backbone gets lr/10 (default 0.1)"
    steps.add_step_arguments(p, recipe="famix", lr=0.1, lr_help=lr_help, total_iters=40_000)
    p.add_argument("--checkpoint", action="store_true", help="recompute layer4 in the backward pass")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (other numbers)")
    p.add_argument("--finetune", choices=["layer4", "layer4.2"], default="layer4", help="trained backbone part")
    args = p.parse_args(argv)
    if args.crop % 48:
        p.error("--crop must be a multiple of 48 (3x3 patches of the crop/4 layer1 map, output stride 16)")
    steps.check_step_arguments(p, args)
    return args


def build(args: argparse.Namespace, visual: nn.Module | None = None) -> steps.Job:
    """The model, augmentation, optimizer and a synthetic batch; ``visual`` (a CLIP image tower) is used as given
    (modified in place) instead of loading one."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if visual is None:
        visual = dc.load_visual(args.clip_weights, seed=args.seed)
    model = dc.SegmentationModel(visual, checkpoint_layer4=args.checkpoint)
    backbone = model.backbone
    frozen = [backbone.stem, backbone.layer1, backbone.layer2, backbone.layer3]
    if args.finetune == "layer4.2":
        frozen += [backbone.layer4[0], backbone.layer4[1]]
    dc.freeze(model, *frozen)
    model.to(device, dtype).train()

    bank = StyleBank.load(args.bank, map_location=device) if args.bank else dc.random_bank(True).to(device)
    aug = steps.attach_augmentation(model, bank, "famix", args)

    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": 0.1 * args.lr},
            {"params": model.classifier.parameters(), "lr": args.lr},
        ],
        lr=args.lr, momentum=0.9, weight_decay=1e-4,
    )  # fmt: skip
    scheduler = dc.poly_schedule(optimizer, args.total_iters)
    criterion = nn.CrossEntropyLoss(ignore_index=dc.IGNORE, label_smoothing=0.1)
    images, labels = dc.synthetic_batch(args.batch, args.crop, seed=args.seed, dtype=dtype)
    return steps.Job(model, aug, optimizer, scheduler, criterion, images.to(device), labels.to(device), args.bf16)


def forward_loss(job: steps.Job, saved: SavedBytes | None = None) -> Tensor:
    """The forward pass and the loss (``saved``: counts what autograd keeps for backward meanwhile)."""
    if job.aug is not None and hasattr(job.aug, "set_labels"):
        job.aug.set_labels(job.labels)
    device_type = job.images.device.type
    with contextlib.ExitStack() as stack:
        if saved is not None:
            stack.enter_context(saved)
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16, enabled=job.bf16))
        logits = job.model(job.images)
        loss = job.criterion(logits.float(), job.labels)
    return loss


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
