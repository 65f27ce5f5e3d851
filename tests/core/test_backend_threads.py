"""use_backend holds for the calling thread only and restores the previous choice exactly."""

from __future__ import annotations

import threading

import torch
from helpers import available_backends

from styleda_fast import (
    use_backend,
)
from styleda_fast.core.backend import select_backend

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


def test_use_backend_is_per_thread_and_restores_exactly():
    inside, other_thread = threading.Event(), []
    release = threading.Event()

    def forced():
        with use_backend("reference"):
            inside.set()
            release.wait(10)

    def observer():
        inside.wait(10)
        other_thread.append(select_backend(torch.device("cpu")))
        release.set()

    threads = [threading.Thread(target=forced), threading.Thread(target=observer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    default = select_backend(torch.device("cpu"))
    assert other_thread == [default], "a use_backend block in one thread changed another thread's backend"
    # two overlapping blocks on two threads leave nothing forced
    barrier = threading.Barrier(2)

    def overlapping(name):
        with use_backend(name):
            barrier.wait(10)
        barrier.wait(10)

    threads = [threading.Thread(target=overlapping, args=(n,)) for n in ("reference", KERNEL_BACKENDS[0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert select_backend(torch.device("cpu")) == default
