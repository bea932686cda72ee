"""The resource allocator: windows, alignment, fixed reservations, PCI slots."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86.layout import GiB, MiB
from pyvmm.platform.resources import MMIO32_WINDOW, AddressWindow, ResourceAllocator, ResourceError


def test_first_fit_respects_alignment_and_reservations() -> None:
    window = AddressWindow("w", 0x1000, 0x10000)
    assert window.reserve(0x1000, 0x100) == 0x1000
    assert window.allocate(0x1000, 0x1000) == 0x2000
    assert window.allocate(0x10, 0x10) == 0x1100  # fits in the gap before 0x2000
    with pytest.raises(ResourceError, match="already taken"):
        window.reserve(0x2800, 0x10)
    window.release(0x2000)
    assert window.reserve(0x2800, 0x10) == 0x2800


def test_a_full_window_and_bad_requests_are_errors() -> None:
    window = AddressWindow("w", 0, 0x100)
    window.allocate(0x100)
    with pytest.raises(ResourceError, match="no room"):
        window.allocate(1)
    for length, align in ((0, 1), (16, 3), (-1, 1)):
        with pytest.raises(ResourceError):
            window.allocate(length, align)
    with pytest.raises(ResourceError, match="outside"):
        window.reserve(0xF0, 0x20)


def test_windows_of_a_machine() -> None:
    resources = ResourceAllocator(6 * GiB + 5 * MiB)
    assert resources.mmio64.start == 7 * GiB  # above RAM, 1 GiB aligned
    bar = resources.mmio32.allocate(0x4000, 0x4000)
    assert MMIO32_WINDOW[0] <= bar < MMIO32_WINDOW[1]
    assert resources.pci_io.allocate(0x40, 0x40) == 0xC000
    assert ResourceAllocator(256 * MiB).mmio64.start == 4 * GiB


def test_pci_slots() -> None:
    resources = ResourceAllocator(256 * MiB)
    assert resources.pci_slot(0) == 0
    assert resources.pci_slot() == 1
    with pytest.raises(ResourceError, match="taken"):
        resources.pci_slot(1)
    for _ in range(30):
        resources.pci_slot()
    with pytest.raises(ResourceError, match="all 32"):
        resources.pci_slot()


def test_pci_takes_its_windows_and_ecam_once() -> None:
    resources = ResourceAllocator(6 * GiB)
    pci = resources.pci()
    assert (pci.mmio32.start, pci.mmio32.end) == (3 * GiB, 3 * GiB + 512 * MiB)
    assert (pci.ecam_base, pci.ecam_size) == (3 * GiB + 512 * MiB, MiB)
    assert pci.mmio64.start == resources.mmio64.start == 6 * GiB
    assert pci.mmio64.length == resources.mmio64.length // 2
    assert pci.io is resources.pci_io
    assert resources.pci() is pci
    # What PCI took is gone from the machine's windows: nobody else is given it.
    assert not pci.mmio32.start <= resources.mmio32.allocate(0x1000) < pci.ecam_base + pci.ecam_size
    assert resources.mmio64.allocate(GiB) >= pci.mmio64.end


def test_an_ecam_of_256_buses_is_aligned_to_its_size() -> None:
    pci = ResourceAllocator(256 * MiB).pci(256)
    assert pci.ecam_size == 256 * MiB and pci.ecam_base % (256 * MiB) == 0
    with pytest.raises(ResourceError, match="256 buses"):
        ResourceAllocator(256 * MiB).pci(0)


def test_pin_gsis_fixed_lines_are_shared_allocated_ones_are_not() -> None:
    gsis = ResourceAllocator(64 * MiB).gsis
    assert gsis.claim(4, "COM1") == 4
    assert gsis.claim(4, "a second user of the line") == 4  # a shared line, first holder named
    assert gsis.owner(4) == "COM1"
    assert gsis.free([3, 4, 5, 24]) == [3, 5]  # 24 is an MSI route, no pin
    assert gsis.allocate([4, 5, 6], "virtio-mmio 0") == 5
    assert gsis.allocate([4, 5, 6], "virtio-mmio 1") == 6
    with pytest.raises(ResourceError, match="virtio-mmio 2: no free GSI among 4, 5, 6"):
        gsis.allocate([4, 5, 6], "virtio-mmio 2")
    gsis.release(6)
    assert gsis.allocate([4, 5, 6], "virtio-mmio 2") == 6


@pytest.mark.parametrize("gsi", [-1, 24, 1 << 32])
def test_a_gsi_that_is_no_pin_cannot_be_claimed(gsi: int) -> None:
    with pytest.raises(ResourceError, match="no input of the irqchip"):
        ResourceAllocator(64 * MiB).gsis.claim(gsi, "x")
