from __future__ import annotations

from device_fakes import FakeStop

from pyvmm.devices import DebugExit
from pyvmm.outcome import ExitKind


def test_write_ends_the_vm_with_the_value(stop: FakeStop) -> None:
    device = DebugExit(stop)
    device.write(0, 1, 0x10)
    [outcome] = stop.outcomes
    assert outcome.kind is ExitKind.DEBUG_EXIT
    assert outcome.code == 0x10
    assert outcome.status == (0x10 << 1) | 1


def test_value_is_masked_to_the_access_width(stop: FakeStop) -> None:
    device = DebugExit(stop)
    device.write(0, 2, 0x12345)
    assert stop.outcomes[0].code == 0x2345
    device.write(0, 4, 0)
    assert stop.outcomes[1].status == 1


def test_reads_are_all_ones(stop: FakeStop) -> None:
    device = DebugExit(stop)
    assert device.read(0, 1) == 0xFF
    assert device.read(0, 4) == 0xFFFF_FFFF
    assert stop.outcomes == []
