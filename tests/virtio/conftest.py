"""Fixtures for the virtqueue tests: a real GuestMemory and a queue programmed by the
test driver (tests/virtio/driver.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from virtio.blk_harness import IMAGE_SIZE
from virtio.driver import Driver

from pyvmm.memory import GuestMemory
from pyvmm.virtio import Feature, Virtqueue

RAM = 1 << 20  # 1 MiB: rings at 0x1000, buffers from 0x10000


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, RAM)])
    yield ram
    ram.close()


@pytest.fixture
def ram() -> Iterator[GuestMemory]:
    """16 MiB: room for a block device's rings (`BlockHarness`) and large requests."""
    memory = GuestMemory([(0, 16 << 20)])
    yield memory
    memory.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A raw disk image of `IMAGE_SIZE` random bytes, for virtio-blk."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return path


QueueFactory = Callable[..., tuple[Driver, Virtqueue]]


def program(
    memory: GuestMemory, size: int, *, indirect: bool = False, event_idx: bool = False, **limits: int
) -> tuple[Driver, Virtqueue]:
    """A driver's rings in `memory` and a queue programmed and enabled as a transport
    would: size and addresses written, then `enable` with the negotiated features."""
    driver = Driver(memory, size, indirect=indirect, event_idx=event_idx)
    queue = Virtqueue(memory, max_size=max(size, 256), **limits)
    queue.size = size
    queue.desc_table, queue.avail_ring, queue.used_ring = driver.desc, driver.avail, driver.used
    features = int(Feature.VERSION_1)
    if indirect:
        features |= Feature.INDIRECT_DESC
    if event_idx:
        features |= Feature.EVENT_IDX
    queue.enable(features)
    return driver, queue


@pytest.fixture
def make_queue(memory: GuestMemory) -> QueueFactory:
    """(driver, queue) with the queue programmed and enabled as a transport would."""

    def make(size: int = 8, **options: int) -> tuple[Driver, Virtqueue]:
        return program(memory, size, **options)  # type: ignore[arg-type]

    return make
