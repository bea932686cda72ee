"""The device manager and the PC platform table: the buses and the DSDT come from one
description of each device."""

from __future__ import annotations

import re

import pytest
from pc_platform import MEMORY, pc_devices

from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.device_manager import DeviceManager
from pyvmm.devices import Serial16550
from pyvmm.devices.device import AddressSpace, PlacedDevice, ports
from pyvmm.devices.ports import PortSink
from pyvmm.resources import ResourceAllocator, ResourceError


def test_every_region_of_the_platform_is_on_its_bus() -> None:
    with pc_devices() as manager:
        for device in manager.devices:
            for region in device.regions():
                bus = manager.bus(region.space)
                found = bus.find(region.base, 1)
                assert (found.base, found.length, found.name) == (region.base, region.length, region.label)
        labels = {entry.name for entry in manager.ports.stats().ranges}
        assert {"serial (COM1)", "cmos-rtc", "fw_cfg", "i8042 data", "acpi-sleep"} <= labels


def test_the_dsdt_describes_the_ports_the_buses_route() -> None:
    """Each I/O descriptor in the platform's AML (IO(Decode16, min, max, align, len):
    bytes 0x47, 1, min, max, align, len) names ports a device answers on."""
    with pc_devices() as manager:
        dsdt = build_acpi_tables(1, devices=manager.aml()).table("DSDT").data
        descriptors = re.findall(rb"\x47\x01(..)(..)(.)(.)", dsdt, re.DOTALL)
        assert len(descriptors) >= 6
        for minimum, _, _, length in descriptors:
            base = int.from_bytes(minimum, "little")
            entry = manager.ports.find(base, 1)
            assert entry.name != "unclaimed", hex(base)
            last = manager.ports.find(base + length[0] - 1, 1)
            assert last.name != "unclaimed", hex(base + length[0] - 1)


def test_the_manager_finds_models_and_refuses_overlaps() -> None:
    with pc_devices() as manager:
        assert isinstance(manager.model(Serial16550), Serial16550)
        sink = PortSink()
        clash = PlacedDevice("clash", sink, (ports(0x3F8, 1, sink, "clash"),))
        with pytest.raises(ResourceError):
            manager.add(clash)


def test_close_goes_on_past_a_failing_device() -> None:
    closed: list[str] = []

    def failing() -> None:
        closed.append("failing")
        raise RuntimeError("boom")

    manager = DeviceManager(ResourceAllocator(MEMORY))
    sink = PortSink()
    manager.add(PlacedDevice("first", sink, (), on_close=lambda: closed.append("first")))
    manager.add(PlacedDevice("second", sink, (), on_close=failing))
    manager.close()
    assert closed == ["failing", "first"]
    assert manager.bus(AddressSpace.MMIO) is manager.mmio
