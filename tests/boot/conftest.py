"""Fixtures for the loader tests: a real 64 MiB guest memory (mmap only, no KVM)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyvmm.arch.x86.layout import MiB
from pyvmm.memory import GuestMemory

GUEST_RAM = 64 * MiB


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, GUEST_RAM)])
    yield guest
    guest.close()
