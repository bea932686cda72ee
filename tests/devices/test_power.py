from __future__ import annotations

from device_fakes import FakeStop

from pyvmm.devices import PowerControl
from pyvmm.devices.power import Pm1Control
from pyvmm.outcome import ExitKind

SLP_EN = int(Pm1Control.SLP_EN)
SCI_EN = int(Pm1Control.SCI_EN)


def sleep_type(value: int) -> int:
    return value << 10


def test_s5_with_slp_en_powers_off(stop: FakeStop) -> None:
    device = PowerControl(stop)
    device.write(0, 2, SCI_EN | sleep_type(5) | SLP_EN)
    [outcome] = stop.outcomes
    assert outcome.kind is ExitKind.POWEROFF
    assert outcome.status == 0


def test_s5_without_slp_en_only_stores(stop: FakeStop) -> None:
    device = PowerControl(stop)
    device.write(0, 2, SCI_EN | sleep_type(5))
    assert stop.outcomes == []
    assert device.read(0, 2) == SCI_EN | sleep_type(5)


def test_other_sleep_types_do_not_power_off(stop: FakeStop) -> None:
    device = PowerControl(stop)
    for other in (0, 1, 3, 4, 6, 7):
        device.write(0, 2, sleep_type(other) | SLP_EN)
    assert stop.outcomes == []


def test_reads_never_show_slp_en_and_always_show_sci_en(stop: FakeStop) -> None:
    device = PowerControl(stop)
    assert device.read(0, 2) == SCI_EN
    device.write(0, 2, sleep_type(3) | SLP_EN)
    assert device.read(0, 2) == SCI_EN | sleep_type(3)
    assert device.read(1, 1) == sleep_type(3) >> 8


def test_byte_write_of_the_high_half_powers_off(stop: FakeStop) -> None:
    device = PowerControl(stop)
    device.write(1, 1, (sleep_type(5) | SLP_EN) >> 8)
    assert [outcome.kind for outcome in stop.outcomes] == [ExitKind.POWEROFF]


def test_s5_value_is_a_parameter(stop: FakeStop) -> None:
    device = PowerControl(stop, s5_sleep_type=7)
    device.write(0, 2, sleep_type(5) | SLP_EN)
    assert stop.outcomes == []
    device.write(0, 2, sleep_type(7) | SLP_EN)
    assert [outcome.kind for outcome in stop.outcomes] == [ExitKind.POWEROFF]
