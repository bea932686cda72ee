"""Power control: the hardware-reduced ACPI sleep/reset registers pyvmm's FADT
advertises (`SleepControl`), and the legacy PM1a control register (`PowerControl`)."""

from __future__ import annotations

from device_fakes import FakeStop
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import PowerControl
from pyvmm.devices.power import (
    RESET_PORT,
    RESET_VALUE,
    SLEEP_CONTROL_PORT,
    SLEEP_PORTS_BASE,
    SLEEP_PORTS_LENGTH,
    SLEEP_STATUS_PORT,
    Pm1Control,
    SleepControl,
    SleepControlBits,
    SleepStatusBits,
)
from pyvmm.outcome import ExitKind

# --- hardware-reduced sleep control, sleep status and reset registers ---------------------

CONTROL = SLEEP_CONTROL_PORT - SLEEP_PORTS_BASE
STATUS = SLEEP_STATUS_PORT - SLEEP_PORTS_BASE
RESET = RESET_PORT - SLEEP_PORTS_BASE
X_SLP_EN = int(SleepControlBits.SLP_EN)
WAK_STS = int(SleepStatusBits.WAK_STS)


def x_sleep_type(value: int) -> int:
    return value << 2


def test_ports_are_one_block_with_distinct_registers() -> None:
    ports = {SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT}
    assert len(ports) == 3
    assert all(SLEEP_PORTS_BASE <= port < SLEEP_PORTS_BASE + SLEEP_PORTS_LENGTH for port in ports)
    assert (X_SLP_EN, WAK_STS, int(SleepControlBits.SLP_TYP_MASK)) == (0x20, 0x80, 0x1C)


def test_linux_poweroff_sequence_powers_off(stop: FakeStop) -> None:
    # ACPICA's acpi_hw_extended_sleep: clear WAK_STS, then SLP_TYP | SLP_EN, byte writes.
    device = SleepControl(stop)
    device.write(STATUS, 1, WAK_STS)
    assert stop.outcomes == []
    device.write(CONTROL, 1, x_sleep_type(5) | X_SLP_EN)
    [outcome] = stop.outcomes
    assert outcome.kind is ExitKind.POWEROFF
    assert outcome.status == 0


def test_sleep_type_without_slp_en_only_stores(stop: FakeStop) -> None:
    device = SleepControl(stop)
    device.write(CONTROL, 1, x_sleep_type(5))
    assert stop.outcomes == []
    assert device.read(CONTROL, 1) == x_sleep_type(5)


def test_other_sleep_types_do_not_power_off(stop: FakeStop) -> None:
    device = SleepControl(stop)
    for other in (0, 1, 2, 3, 4, 6, 7):
        device.write(CONTROL, 1, x_sleep_type(other) | X_SLP_EN)
    assert stop.outcomes == []


def test_slp_en_reads_as_zero_and_reserved_bits_are_dropped(stop: FakeStop) -> None:
    device = SleepControl(stop)
    device.write(CONTROL, 1, 0xC3 | x_sleep_type(3) | X_SLP_EN)
    assert device.read(CONTROL, 1) == x_sleep_type(3)


def test_wake_status_reads_zero_and_clears(stop: FakeStop) -> None:
    device = SleepControl(stop)
    assert device.read(STATUS, 1) == 0
    device.write(STATUS, 1, 0xFF)
    assert device.read(STATUS, 1) == 0
    assert stop.outcomes == []


def test_reset_value_resets(stop: FakeStop) -> None:
    device = SleepControl(stop)
    device.write(RESET, 1, RESET_VALUE)
    [outcome] = stop.outcomes
    assert outcome.kind is ExitKind.REBOOT


def test_other_reset_values_are_ignored(stop: FakeStop) -> None:
    device = SleepControl(stop)
    for value in range(256):
        if value != RESET_VALUE:
            device.write(RESET, 1, value)
    assert stop.outcomes == []
    assert device.read(RESET, 1) == 0


def test_wide_accesses_reach_each_byte_register(stop: FakeStop) -> None:
    device = SleepControl(stop)
    device.write(CONTROL, 2, (WAK_STS << 8) | x_sleep_type(5))  # control, then status
    assert stop.outcomes == []
    assert device.read(CONTROL, 4) == 0xFF_00_00_00 | x_sleep_type(5)  # 4th byte: outside
    device.write(CONTROL, 4, (RESET_VALUE << 16) | x_sleep_type(5) | X_SLP_EN)
    assert [outcome.kind for outcome in stop.outcomes] == [ExitKind.POWEROFF, ExitKind.REBOOT]


def test_sleep_control_s5_value_is_a_parameter(stop: FakeStop) -> None:
    device = SleepControl(stop, s5_sleep_type=7)
    device.write(CONTROL, 1, x_sleep_type(5) | X_SLP_EN)
    assert stop.outcomes == []
    device.write(CONTROL, 1, x_sleep_type(7) | X_SLP_EN)
    assert [outcome.kind for outcome in stop.outcomes] == [ExitKind.POWEROFF]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(), st.integers(-4, 8), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)
        ),
        max_size=40,
    )
)
def test_sleep_control_never_raises(ops: list[tuple[bool, int, int, int]]) -> None:
    device = SleepControl(FakeStop())
    for is_write, offset, size, value in ops:
        if is_write:
            device.write(offset, size, value)
        else:
            assert 0 <= device.read(offset, size) < 1 << (8 * size)


# --- legacy PM1a control at 0x604 ---------------------------------------------------------

SLP_EN = int(Pm1Control.SLP_EN)
SCI_EN = int(Pm1Control.SCI_EN)


def sleep_type(value: int) -> int:
    return value << 10


def test_hello_guest_poweroff_value(stop: FakeStop) -> None:
    # tests/guests/hello writes 0x3400 (SLP_TYP 5 | SLP_EN) to port 0x604.
    PowerControl(stop).write(0, 2, 0x3400)
    assert [outcome.kind for outcome in stop.outcomes] == [ExitKind.POWEROFF]


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


def test_other_sleep_types_do_not_power_off_through_pm1a(stop: FakeStop) -> None:
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
