"""The capability chain (PCI Local Bus Specification 3.0 §6.7) as a guest walks it."""

from __future__ import annotations

import pytest

from pyvmm.pci.capabilities import CapabilityId, walk
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.registers import CAPABILITIES_POINTER, STATUS, Status

IDS = PciIds(0x1AF4, 0x1041, 0x02, 0x00)


def test_no_capabilities_no_list_bit() -> None:
    device = PciFunction(IDS)
    assert not device.config_read(STATUS, 2) & Status.CAPABILITIES_LIST
    assert device.config_read(CAPABILITIES_POINTER, 1) == 0
    assert walk(device.config) == []


def test_chain_links_every_capability_in_order_dword_aligned() -> None:
    device = PciFunction(IDS)
    first = device.capabilities.add_vendor(bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))  # 16 bytes
    second = device.capabilities.add(CapabilityId.MSIX, bytes(10))
    third = device.capabilities.add_vendor(b"\x05")  # 4 bytes
    assert (first, second, third) == (0x40, 0x50, 0x5C)
    assert device.config_read(STATUS, 2) & Status.CAPABILITIES_LIST
    assert walk(device.config) == [(0x40, 0x09), (0x50, 0x11), (0x5C, 0x09)]
    assert device.config_read(0x42, 1) == 16  # the vendor capability's length byte
    assert device.config_read(0x5E, 1) == 4
    assert device.config_read(0x5D, 1) == 0  # the end of the chain


def test_capabilities_are_read_only_unless_masked() -> None:
    device = PciFunction(IDS)
    offset = device.capabilities.add_vendor(b"\x01\x02\x03\x04\x05", writable=b"\x00\xff\x00\x00\x00")
    device.config_write(offset, 4, 0)  # ID, next, length: read-only
    device.config_write(offset + 4, 4, 0xFFFF_FFFF)
    assert walk(device.config) == [(offset, 0x09)]
    assert device.config_read(offset + 3, 1) == 1
    assert device.config_read(offset + 4, 4) == 0x0504_03FF  # data[1] writable, the rest not


def test_capabilities_must_fit_below_0x100() -> None:
    device = PciFunction(IDS)
    device.capabilities.add_vendor(bytes(180))
    with pytest.raises(PciError):
        device.capabilities.add_vendor(bytes(20))
    with pytest.raises(PciError):
        PciFunction(IDS).capabilities.add_vendor(bytes(0xFD))


def test_walk_stops_on_a_looping_chain() -> None:
    device = PciFunction(IDS)
    offset = device.capabilities.add_vendor(b"")
    device.config.set(offset + 1, 1, offset)  # points at itself
    assert len(walk(device.config)) == 48
