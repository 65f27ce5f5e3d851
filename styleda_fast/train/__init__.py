"""Segmentation training on top of the augmentation layers: the DeepLabv3+ / CLIP RN50 model of PODA and FAMix
(:mod:`.deeplab_clip`), one timed training step of each public recipe (:mod:`.poda_train_step`,
:mod:`.famix_train_step`, sharing :mod:`.steps`), and the Cityscapes -> ACDC study (:mod:`.study`: data folders,
training with checkpoints and torchrun, mIoU). Needs open_clip; ``examples/`` holds their command lines."""
