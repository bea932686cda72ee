"""Power control: the ACPI PM1a control register (ACPI 6.4 §4.8.3.2.1, "PM1 Control Registers").

A guest powers off by writing SLP_TYP = the S5 value from the DSDT's \\_S5 object
together with SLP_EN (ACPI 6.4 §7.4.2 and §16.1.7). pyvmm puts the register where
QEMU's q35 does (PMBASE 0x600 + 4) so guests and firmware that expect that layout work.

SLP_EN and GBL_RLS are write-only and read as 0; SCI_EN reads as 1, so the guest sees
the platform already in ACPI mode and never tries the SMI_CMD handshake.
"""

from __future__ import annotations

import enum
import logging

from pyvmm.outcome import ExitKind, GuestExit, StopRequest

logger = logging.getLogger(__name__)

PM1A_CNT_PORT = 0x604
PM1A_CNT_LENGTH = 2

S5_SLEEP_TYPE = 5  # the SLP_TYP value pyvmm's ACPI tables advertise in \_S5


class Pm1Control(enum.IntFlag):
    """PM1 control register bits (ACPI 6.4 Table 4.16)."""

    SCI_EN = 1 << 0
    BM_RLD = 1 << 1
    GBL_RLS = 1 << 2  # write-only
    SLP_TYP_MASK = 0b111 << 10
    SLP_EN = 1 << 13  # write-only


SLP_TYP_SHIFT = 10
_WRITE_ONLY = Pm1Control.SLP_EN | Pm1Control.GBL_RLS


class PowerControl:
    """PM1a_CNT: powers the VM off when the guest enters S5."""

    def __init__(self, stop: StopRequest, s5_sleep_type: int = S5_SLEEP_TYPE) -> None:
        self._stop = stop
        self._s5_sleep_type = s5_sleep_type
        self._value = int(Pm1Control.SCI_EN)

    def read(self, offset: int, size: int) -> int:
        data = self._value.to_bytes(PM1A_CNT_LENGTH, "little")
        chunk = data[offset : offset + size] if offset >= 0 else b""
        # Bytes beyond the register read as all ones, like an empty port.
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < PM1A_CNT_LENGTH:
            return
        data = bytearray(self._value.to_bytes(PM1A_CNT_LENGTH, "little"))
        written = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        end = min(offset + size, PM1A_CNT_LENGTH)
        data[offset:end] = written[: end - offset]
        register = int.from_bytes(data, "little")
        # SCI_EN stays set: the platform is always in ACPI mode.
        self._value = register & ~int(_WRITE_ONLY) | int(Pm1Control.SCI_EN)
        if register & Pm1Control.SLP_EN:
            self._sleep((register & Pm1Control.SLP_TYP_MASK) >> SLP_TYP_SHIFT)

    def _sleep(self, sleep_type: int) -> None:
        if sleep_type == self._s5_sleep_type:
            logger.debug("guest entered S5")
            self._stop(GuestExit(ExitKind.POWEROFF, "guest powered off"))
        else:
            # Only S5 is advertised; a guest asking for another state stays running.
            logger.warning("guest asked for unsupported sleep type %d; ignored", sleep_type)
