"""The PC platform's devices built as a machine builds them, without KVM: for tests
that need what the devices contribute (their AML, their bus ranges)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyvmm.memory import GuestMemory
from pyvmm.outcome import GuestExit
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import PC_PLATFORM, PlatformContext
from pyvmm.platform.resources import ResourceAllocator

MEMORY = 64 << 20


class NoLine:
    def set_level(self, high: bool) -> None:
        pass


def _ignore_stop(outcome: GuestExit) -> None:
    pass


@contextmanager
def pc_devices() -> Iterator[DeviceManager]:
    memory = GuestMemory([(0, MEMORY)])
    manager = DeviceManager(ResourceAllocator(MEMORY))
    context = PlatformContext(memory, 1, _ignore_stop, lambda irq: NoLine(), lambda data: None)
    try:
        manager.add_all(row(context) for row in PC_PLATFORM)
        yield manager
    finally:
        manager.close()
        memory.close()
