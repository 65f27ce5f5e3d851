"""Test set-up: run the Triton kernels through the interpreter on machines without a GPU."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported; the Triton backend then runs on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")
