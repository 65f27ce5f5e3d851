"""Many classes (more than the Triton kernels keep): every backend gives the same dominant classes and statistics."""

from __future__ import annotations

import torch
from helpers import assert_close, available_backends, backend_device, random_labels

from styleda_fast import (
    class_mean_std,
    patch_dominant_class,
    use_backend,
)

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


def test_many_classes_agree_on_every_backend():
    labels = random_labels((1, 9, 9), num_classes=20000, ignore=-1, ignore_frac=0.1, seed=4)
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    results = {}
    for backend in BACKENDS:
        device = backend_device(backend)
        with use_backend(backend):
            results[backend] = (
                patch_dominant_class(labels.to(device), 3, num_classes=20000, ignore_index=-1).cpu(),
                [t.cpu() for t in class_mean_std(x.to(device), labels.to(device), 20000, ignore_index=-1)],
            )
    first = results[BACKENDS[0]]
    for backend, (dominant, stats) in results.items():
        assert torch.equal(dominant, first[0]), backend
        for a, b in zip(stats, first[1]):
            assert_close(a, b, 1e-12, f"{backend} class statistics")
