"""The PC platform as a guest sees it: keyboard-controller reset, the CMOS clock."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from guest_code import HLT_LOOP, multiboot_image, write

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.machine import RunResult

pytestmark = pytest.mark.kvm


def boot(kernel: Path) -> RunResult:
    return Machine(MachineConfig(kernel=kernel, timeout=60)).run()


def test_keyboard_controller_reset_reboots(tmp_path: Path) -> None:
    code = bytes.fromhex("b0fee664") + HLT_LOOP  # mov al, 0xfe; out 0x64, al
    result = boot(write(tmp_path, "reset.img", multiboot_image(code)))
    assert result.exit.kind is ExitKind.REBOOT and result.status == 64


def test_cmos_clock_has_the_host_date(tmp_path: Path) -> None:
    """The guest reads day of month (0x07) and month (0x08) in BCD and exits with them."""
    code = bytes.fromhex(
        "b007" "e670" "e471" "88c3"  # mov al, 7; out 0x70, al; in al, 0x71; mov bl, al
        "b008" "e670" "e471" "88c7"  # mov al, 8; out 0x70, al; in al, 0x71; mov bh, al
        "89d8" "e7f4"  # mov eax, ebx; out 0xf4, eax
    ) + HLT_LOOP  # fmt: skip
    before = datetime.datetime.now(datetime.UTC)
    result = boot(write(tmp_path, "rtc.img", multiboot_image(code)))
    after = datetime.datetime.now(datetime.UTC)
    day, month = result.exit.code & 0xFF, (result.exit.code >> 8) & 0xFF
    seen = (int(f"{month:x}"), int(f"{day:x}"))
    assert seen in {(before.month, before.day), (after.month, after.day)}
