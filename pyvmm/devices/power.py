"""Power control: how a guest powers the VM off or resets it through ACPI.

Two devices, for two kinds of guest:

- `SleepControl`, the hardware-reduced ACPI registers the FADT advertises, for guests
  that read pyvmm's ACPI tables (Linux): sleep control (ACPI 6.4 §4.8.3.7) at I/O
  0x600, sleep status at 0x601, reset (§4.8.3.6) at 0x602, one byte each.
- `PowerControl`, the legacy PM1a control register (ACPI 6.4 §4.8.3.2.1) at I/O 0x604,
  2 bytes, where QEMU's q35 has it (PMBASE 0x600 + 4), for guests that power off
  without reading ACPI tables, such as tests/guests/hello.

Sleep control register (8 bits): SLP_TYPx in bits 2-4, SLP_EN in bit 5 (write-only).
Writing SLP_EN with SLP_TYP = 5, the value of the DSDT's ``\\_S5_`` object, powers off
(ACPI 6.4 §7.4.2 and §16.1.7): the VM stops with `ExitKind.POWEROFF`, exit status 0.
Other sleep types are ignored: pyvmm only advertises S5.

Sleep status register (8 bits): WAK_STS in bit 7, write 1 to clear. pyvmm never
sleeps, so it reads 0.

Reset register (8 bits): writing `RESET_VALUE` (the FADT's RESET_VALUE) resets the
machine: the VM stops with `ExitKind.REBOOT`. Other values are ignored.

PM1a control (16 bits): SLP_TYP in bits 10-12, SLP_EN in bit 13; SLP_EN and GBL_RLS
are write-only and read as 0; SCI_EN reads as 1, so the guest sees the platform
already in ACPI mode and never tries the SMI_CMD handshake.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.fadt import SLEEP_TYPE_MAX
from pyvmm.bus import all_ones
from pyvmm.outcome import ExitKind, GuestExit, StopRequest
from pyvmm.snapshot.checks import check_int, check_mask, check_type, fail
from pyvmm.snapshot.registry import saved_state

logger = logging.getLogger(__name__)

S5_SLEEP_TYPE = 5  # the SLP_TYP value pyvmm's ACPI tables advertise in \_S5_

# --- hardware-reduced ACPI registers (what the FADT advertises) ---------------------------

SLEEP_PORTS_BASE = 0x600
SLEEP_CONTROL_PORT = SLEEP_PORTS_BASE  # FADT SLEEP_CONTROL_REG
SLEEP_STATUS_PORT = SLEEP_PORTS_BASE + 1  # FADT SLEEP_STATUS_REG
RESET_PORT = SLEEP_PORTS_BASE + 2  # FADT RESET_REG
SLEEP_PORTS_LENGTH = 3
# What the guest writes to RESET_PORT to reset (FADT RESET_VALUE). 0x06 is the value a
# PC writes to its reset control register (0xCF9) for a hard reset; any value works
# as long as the FADT says the same, and an uncommon one keeps stray writes harmless.
RESET_VALUE = 0x06


# SLP_TYP's width (SLEEP_TYPE_MAX, 3 bits) is the spec's: arch's FADT module names it,
# where it checks the S5 sleep type it announces, and these registers read it there.
SLEEP_TYP_SHIFT = 2  # the sleep control register's SLP_TYP is bits 2-4


class SleepControlBits(enum.IntFlag):
    """Sleep control register bits (ACPI 6.4 §4.8.3.7)."""

    SLP_TYP_MASK = SLEEP_TYPE_MAX << SLEEP_TYP_SHIFT
    SLP_EN = 1 << 5  # write-only


class SleepStatusBits(enum.IntFlag):
    """Sleep status register bits (ACPI 6.4 §4.8.3.7)."""

    WAK_STS = 1 << 7  # write 1 to clear


@saved_state("acpi-sleep")
@dataclass(frozen=True)
class SleepControlState:
    """A `SleepControl`'s state: the SLP_TYP read back, and the sleep status register."""

    sleep_type: int
    status: int  # WAK_STS only


_SLEEP_CONTROL = SLEEP_CONTROL_PORT - SLEEP_PORTS_BASE
_SLEEP_STATUS = SLEEP_STATUS_PORT - SLEEP_PORTS_BASE
_RESET = RESET_PORT - SLEEP_PORTS_BASE


class SleepControl:
    """The hardware-reduced ACPI sleep control, sleep status and reset registers:
    powers the VM off on S5 and resets it on the reset value."""

    def __init__(self, stop: StopRequest, s5_sleep_type: int = S5_SLEEP_TYPE) -> None:
        self._stop = stop
        self._s5_sleep_type = s5_sleep_type
        self.reset()

    def reset(self) -> None:
        self._sleep_type = 0  # last SLP_TYP written, read back
        self._status = 0  # WAK_STS: never set, pyvmm does not wake from sleep

    def save(self) -> SleepControlState:
        return SleepControlState(int(self._sleep_type), int(self._status))

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes)."""
        checked = check_type("acpi-sleep", state, SleepControlState)
        check_int("acpi-sleep", "sleep_type", checked.sleep_type, 0, SLEEP_TYPE_MAX)
        check_mask("acpi-sleep", "status", checked.status, SleepStatusBits.WAK_STS)
        self._sleep_type, self._status = checked.sleep_type, checked.status

    def read(self, offset: int, size: int) -> int:
        # Each register is one byte; wider reads see neighbours, and bytes beyond the
        # block read as all ones, like an empty port.
        return int.from_bytes(bytes(self._read_byte(offset + i) for i in range(size)), "little")

    def _read_byte(self, offset: int) -> int:
        if offset == _SLEEP_CONTROL:
            return self._sleep_type << SLEEP_TYP_SHIFT
        if offset == _SLEEP_STATUS:
            return self._status
        if offset == _RESET:
            return 0
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == _SLEEP_CONTROL:
            self._sleep_type = (value & SleepControlBits.SLP_TYP_MASK) >> SLEEP_TYP_SHIFT
            if value & SleepControlBits.SLP_EN:
                self._sleep(self._sleep_type)
        elif offset == _SLEEP_STATUS:
            self._status &= ~(value & SleepStatusBits.WAK_STS)
        elif offset == _RESET:
            if value == RESET_VALUE:
                logger.debug("guest reset through the ACPI reset register")
                self._stop(GuestExit(ExitKind.REBOOT, "guest reset (ACPI reset register)"))
            else:
                logger.warning("guest wrote %#x to the ACPI reset register; ignored", value)

    def _sleep(self, sleep_type: int) -> None:
        _enter_sleep_state(self._stop, sleep_type, self._s5_sleep_type)


# --- legacy PM1a control (guests that assume QEMU's port layout) --------------------------

PM1A_CNT_PORT = 0x604
PM1A_CNT_LENGTH = 2
SLP_TYP_SHIFT = 10  # PM1 control's SLP_TYP is bits 10-12


class Pm1Control(enum.IntFlag):
    """PM1 control register bits (ACPI 6.4 §4.8.3.2.1)."""

    SCI_EN = 1 << 0
    BM_RLD = 1 << 1
    GBL_RLS = 1 << 2  # write-only
    SLP_TYP_MASK = SLEEP_TYPE_MAX << SLP_TYP_SHIFT
    SLP_EN = 1 << 13  # write-only


_WRITE_ONLY = Pm1Control.SLP_EN | Pm1Control.GBL_RLS


@saved_state("power-control")
@dataclass(frozen=True)
class PowerControlState:
    """A `PowerControl`'s state: the PM1a control register as it reads."""

    value: int


class PowerControl:
    """The legacy PM1a_CNT register: powers the VM off when the guest enters S5."""

    def __init__(self, stop: StopRequest, s5_sleep_type: int = S5_SLEEP_TYPE) -> None:
        self._stop = stop
        self._s5_sleep_type = s5_sleep_type
        self.reset()

    def reset(self) -> None:
        self._value = int(Pm1Control.SCI_EN)

    def save(self) -> PowerControlState:
        return PowerControlState(self._value)

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes)."""
        checked = check_type("pm1a-control", state, PowerControlState)
        value = check_int("pm1a-control", "value", checked.value, 0, 0xFFFF)
        # What a write leaves: SCI_EN set, the write-only bits clear.
        if not value & Pm1Control.SCI_EN or value & _WRITE_ONLY:
            raise fail("pm1a-control", f"value {value:#x} is not one a write can leave")
        self._value = value

    def read(self, offset: int, size: int) -> int:
        data = self._value.to_bytes(PM1A_CNT_LENGTH, "little")
        chunk = data[offset : offset + size] if offset >= 0 else b""
        # Bytes beyond the register read as all ones, like an empty port.
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < PM1A_CNT_LENGTH:
            return
        data = bytearray(self._value.to_bytes(PM1A_CNT_LENGTH, "little"))
        written = (value & all_ones(size)).to_bytes(size, "little")
        end = min(offset + size, PM1A_CNT_LENGTH)
        data[offset:end] = written[: end - offset]
        register = int.from_bytes(data, "little")
        # SCI_EN stays set: the platform is always in ACPI mode.
        self._value = register & ~int(_WRITE_ONLY) | int(Pm1Control.SCI_EN)
        if register & Pm1Control.SLP_EN:
            _enter_sleep_state(
                self._stop, (register & Pm1Control.SLP_TYP_MASK) >> SLP_TYP_SHIFT, self._s5_sleep_type
            )


def _enter_sleep_state(stop: StopRequest, sleep_type: int, s5_sleep_type: int) -> None:
    if sleep_type == s5_sleep_type:
        logger.debug("guest entered S5")
        stop(GuestExit(ExitKind.POWEROFF, "guest powered off"))
    else:
        # Only S5 is advertised; a guest asking for another state stays running.
        logger.warning("guest asked for unsupported sleep type %d; ignored", sleep_type)
