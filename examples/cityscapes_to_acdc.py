"""Cityscapes -> ACDC with a style augmentation: the command line of ``styleda_fast.train.study``.

    python examples/cityscapes_to_acdc.py --cityscapes data/cityscapes --acdc data/acdc \
        --aug zero-shot-local --bank night_local.safetensors --out runs/zsl
    torchrun --nproc-per-node 4 examples/cityscapes_to_acdc.py ...   # DistributedDataParallel

Options, the augmentations and the layouts: ``python examples/cityscapes_to_acdc.py --help`` and docs/experiments.md.
"""

import sys

from styleda_fast.train.study import main

if __name__ == "__main__":
    sys.exit(main())
