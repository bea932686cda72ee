"""The device manager and the PC platform table: the buses and the DSDT come from one
description of each device."""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest
from devices.rtc_harness import FakeClock
from pc_platform import MEMORY, pc_devices

from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.devices import CmosRtc, Serial16550
from pyvmm.devices.device import AddressSpace, DeviceState, PlacedDevice, ports
from pyvmm.devices.ports import PortSink, PortSinkState
from pyvmm.errors import StateError
from pyvmm.platform import pc
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER
from pyvmm.platform.resources import ResourceAllocator, ResourceError


def test_every_region_of_the_platform_is_on_its_bus() -> None:
    with pc_devices() as manager:
        for device in manager.devices:
            for region in device.regions():
                bus = manager.bus(region.space)
                found = bus.find(region.base, 1)
                assert (found.base, found.length, found.name) == (region.base, region.length, region.label)
        labels = {entry.name for entry in manager.ports.stats().ranges}
        assert {"serial (COM1)", "cmos-rtc", "fw_cfg", "i8042 data", "acpi-sleep"} <= labels


def io_descriptors(dsdt: bytes) -> list[tuple[int, int]]:
    """(minimum, length) of every IO descriptor (ACPI 6.4 §6.4.2.5: bytes 0x47, decode,
    min, max, align, length) in the _CRS buffers of `dsdt`, found by walking each
    template's items (a byte scan also matches AML that merely looks like one)."""
    found = []
    for match in re.finditer(rb"\x08_CRS\x11", dsdt):
        at = match.end()
        lead = dsdt[at]
        at += 1 + (lead >> 6)  # PkgLength
        assert dsdt[at] == 0x0A, "a _CRS buffer's size is a ByteConst here"
        size, at = dsdt[at + 1], at + 2
        end = at + size
        while at < end:
            tag = dsdt[at]
            if tag & 0x80:  # large item: 16-bit length
                at += 3 + int.from_bytes(dsdt[at + 1 : at + 3], "little")
                continue
            if tag == 0x47:
                found.append((int.from_bytes(dsdt[at + 2 : at + 4], "little"), dsdt[at + 7]))
            if tag >> 3 == 0x0F:  # end tag
                break
            at += 1 + (tag & 0x07)
    return found


def test_the_dsdt_describes_the_ports_the_buses_route() -> None:
    """Each I/O descriptor in the platform's AML names ports a device answers on."""
    with pc_devices() as manager:
        dsdt = build_acpi_tables(1, power=ACPI_POWER, devices=manager.aml()).table("DSDT").data
        descriptors = io_descriptors(dsdt)
        assert len(descriptors) >= 7  # COM1, 2 power, fw_cfg, 2 i8042, RTC, GED
        for base, length in descriptors:
            entry = manager.ports.find(base, 1)
            assert entry.name != "unclaimed", hex(base)
            last = manager.ports.find(base + length - 1, 1)
            assert last.name != "unclaimed", hex(base + length - 1)


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


def serial_of(manager: DeviceManager) -> Serial16550:
    uart = manager.model(Serial16550)
    assert uart is not None
    return uart


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The host clock of every RTC the platform table builds in this test, which moves
    only when the test moves it. On the real clock, register C's flags depend on when
    each RTC is saved: PF rises at every tick of the 1024 Hz divider, PIE or not
    (MC146818A, register C), so two RTCs saved a tick apart differ in PF."""
    fake = FakeClock()
    monkeypatch.setattr(pc, "CmosRtc", functools.partial(CmosRtc, clock=fake))
    return fake


def test_save_restore_goes_through_every_device_by_name(clock: FakeClock) -> None:
    with pc_devices() as source, pc_devices() as target:
        rtc = source.model(CmosRtc)
        assert rtc is not None and rtc.guest_time() == clock.now  # the RTCs read the test's clock
        serial_of(source).write(7, 1, 0x5A)  # SCR
        sink = source.ports.find(0x80, 1)
        source.ports.write(sink.base, 1, 0x42)  # a POST code on the first port sink
        source.ports.write(0xED, 1, 0x17)  # and the second
        states = source.save()
        assert set(states) == {d.name for d in source.devices}
        assert [type(s).__name__ for s in states["power"].models] == [
            "PowerControlState",
            "SleepControlState",
        ]
        assert states["port sinks"].models == (PortSinkState(0x42), PortSinkState(0x17))
        target.restore(states)
        assert target.save() == states
        assert serial_of(target).read(7, 1) == 0x5A
        target.reset()
        assert serial_of(target).read(7, 1) == 0
        # A reset keeps the VM generation ID (the same VM boots again); a fresh
        # machine draws its own.
        reset_states = dict(target.save())
        assert reset_states.pop("vmgenid") == states["vmgenid"]
        with pc_devices() as fresh:
            fresh_states = dict(fresh.save())
            assert fresh_states.pop("vmgenid") != states["vmgenid"]
            assert reset_states == fresh_states


def test_restore_needs_exactly_the_devices_names() -> None:
    with pc_devices() as manager:
        states = manager.save()
        serial_of(manager).write(7, 1, 0x11)
        missing = {name: state for name, state in states.items() if name != "i8042"}
        with pytest.raises(StateError, match=r"missing \['i8042'\]"):
            manager.restore(missing)
        with pytest.raises(StateError, match="unknown"):
            manager.restore({**states, "extra": states["i8042"]})
        with pytest.raises(StateError, match="not a mapping"):
            manager.restore(list(states.values()))
        assert serial_of(manager).read(7, 1) == 0x11


def test_a_refused_device_state_rolls_the_earlier_devices_back() -> None:
    with pc_devices() as manager:
        serial_of(manager).write(7, 1, 0x11)
        states = dict(manager.save())
        serial_state = states["serial (COM1)"].models[0]
        states["serial (COM1)"] = DeviceState((dataclasses.replace(serial_state, scr=0x22),))
        bad_rtc = dataclasses.replace(states["cmos-rtc"].models[0], index=0x100)
        states["cmos-rtc"] = DeviceState((bad_rtc,))
        with pytest.raises(StateError, match="cmos-rtc"):
            manager.restore(states)
        assert serial_of(manager).read(7, 1) == 0x11  # serial was restored, then rolled back
        power = states["power"]
        states["cmos-rtc"] = manager.save()["cmos-rtc"]
        states["power"] = DeviceState(power.models[:1])  # one of its two models
        with pytest.raises(StateError, match="power"):
            manager.restore(states)
        assert serial_of(manager).read(7, 1) == 0x11


def test_a_device_without_saved_state_is_named_not_skipped() -> None:
    with pc_devices() as manager:
        model = object()
        manager.add(PlacedDevice("stateless", model, ()))
        with pytest.raises(StateError, match="stateless"):
            manager.save()
        serial_of(manager).write(7, 1, 0x33)
        with pytest.raises(StateError, match="stateless"):
            manager.reset()
        assert serial_of(manager).read(7, 1) == 0  # the others were reset all the same
