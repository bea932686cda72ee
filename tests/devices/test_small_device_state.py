"""reset(), save() and restore() of fw_cfg, the power registers, debug-exit and the port sinks."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import pytest
from device_fakes import FakeStop

from pyvmm.devices import DebugExit, FwCfg, PortSink, PowerControl
from pyvmm.devices.debug_exit import DebugExitState
from pyvmm.devices.fw_cfg import FwCfgState, Key, Port
from pyvmm.devices.ports import PortSinkState
from pyvmm.devices.power import PowerControlState, SleepControl, SleepControlState
from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory

RAM = 1 << 20


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, RAM)])
    yield ram
    ram.close()


def fw_cfg(memory: GuestMemory) -> FwCfg:
    device = FwCfg(memory, ram_size=RAM, cpus=1, max_cpus=2)
    device.add_file("etc/one", b"0123456789")
    return device


def be32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def test_fw_cfg_restored_mid_item_reads_on(memory: GuestMemory) -> None:
    source = fw_cfg(memory)
    source.write(Port.SELECTOR, 2, Key.FILE_FIRST)
    assert source.read(Port.DATA, 4) == int.from_bytes(b"0123", "little")
    source.write(Port.DMA_ADDRESS, 4, be32(0x1))  # the high half, kept until the low one
    state = source.save()
    assert state == FwCfgState(Key.FILE_FIRST, 4, 1 << 32)
    target = fw_cfg(memory)
    target.restore(state)
    assert target.read(Port.DATA, 4) == source.read(Port.DATA, 4) == int.from_bytes(b"4567", "little")
    # The low half completes the saved high half: 0x1_0000_1000 is outside RAM, so
    # nothing is written at 0x1000 in guest RAM.
    memory.write(0x1000, struct.pack(">IIQ", 0x02, 4, 0x2000))
    target.write(Port.DMA_ADDRESS_LOW, 4, be32(0x1000))
    assert memory.read(0x1000, 4) == b"\0\0\0\x02"
    target.reset()
    assert target.save() == FwCfgState(0, 0, 0)
    assert target.read(Port.DATA, 4) == int.from_bytes(b"QEMU", "little")


@pytest.mark.parametrize(
    "state",
    [
        FwCfgState(0x10000, 0, 0),
        FwCfgState(0, -1, 0),
        FwCfgState(0, 0, 1 << 64),
        FwCfgState(0, True, 0),
        None,
    ],
)
def test_fw_cfg_refuses_a_bad_state(memory: GuestMemory, state: object) -> None:
    device = fw_cfg(memory)
    device.write(Port.SELECTOR, 2, Key.ID)
    with pytest.raises(StateError):
        device.restore(state)
    assert device.save() == FwCfgState(Key.ID, 0, 0)


def test_power_registers_save_restore_and_reset() -> None:
    control, sleep = PowerControl(FakeStop()), SleepControl(FakeStop())
    control.write(0, 2, 3 << 10 | 1 << 1)  # SLP_TYP 3 without SLP_EN, BM_RLD
    sleep.write(0, 1, 2 << 2)
    control2, sleep2 = PowerControl(FakeStop()), SleepControl(FakeStop())
    control2.restore(control.save())
    sleep2.restore(sleep.save())
    assert control2.read(0, 2) == control.read(0, 2) == 3 << 10 | 1 << 1 | 1
    assert sleep2.read(0, 3) == sleep.read(0, 3)
    control2.reset()
    sleep2.reset()
    assert control2.read(0, 2) == 1 and sleep2.read(0, 1) == 0
    for device, bad in (
        (control2, PowerControlState(0)),  # SCI_EN always reads 1
        (control2, PowerControlState(1 | 1 << 13)),  # SLP_EN is write only
        (control2, PowerControlState(0x10001)),
        (sleep2, SleepControlState(8, 0)),
        (sleep2, SleepControlState(0, 0x01)),
        (sleep2, PowerControlState(1)),
    ):
        with pytest.raises(StateError):
            device.restore(bad)
    assert control2.read(0, 2) == 1 and sleep2.read(0, 1) == 0


def test_debug_exit_and_port_sinks() -> None:
    exit_port = DebugExit(FakeStop())
    exit_port.restore(exit_port.save())
    assert exit_port.save() == DebugExitState()
    with pytest.raises(StateError):
        exit_port.restore(PortSinkState(0))
    sink = PortSink()
    sink.write(0, 1, 0x42)
    other = PortSink(0)
    other.restore(sink.save())
    assert other.last_value == 0x42 and other.read(0, 1) == 0  # the fill is configuration
    for bad in (PortSinkState(1 << 64), PortSinkState(-1), dataclasses.replace(sink.save(), last_value="x")):
        with pytest.raises(StateError):
            other.restore(bad)
    other.reset()
    assert other.last_value == 0
