"""The vCPU exit loop on the real /dev/kvm: port I/O (single and string), MMIO,
fatal exits, and stopping a running guest from another thread."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest
from guest_code import HLT_LOOP, SPIN, multiboot_image, out_debug_exit32, write

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.machine import RunResult

pytestmark = pytest.mark.kvm


def run(path: Path, kernel_format: str = "auto") -> RunResult:
    return Machine(MachineConfig(kernel=path, timeout=60, kernel_format=kernel_format)).run()


def test_string_port_io_in_both_directions(tmp_path: Path) -> None:
    """Real mode: `rep insb` reads fw_cfg's signature, `rep outsb` prints it on COM1."""
    code = bytes.fromhex(
        "31c0"  # xor ax, ax
        "8ec0"  # mov es, ax
        "ba1005"  # mov dx, 0x510
        "ef"  # out dx, ax            ; select key 0 (signature)
        "bf0090"  # mov di, 0x9000
        "b90400"  # mov cx, 4
        "42"  # inc dx                 ; 0x511, the data port
        "f36c"  # rep insb
        "be0090"  # mov si, 0x9000
        "b90400"  # mov cx, 4
        "baf803"  # mov dx, 0x3f8
        "f36e"  # rep outsb
        "baf400"  # mov dx, 0xf4
        "66b811000000"  # mov eax, 0x11
        "66ef"  # out dx, eax
        "f4"  # hlt
    )
    result = run(write(tmp_path, "strio.bin", code), kernel_format="flat")
    assert result.console == b"QEMU"
    assert result.exit.kind is ExitKind.DEBUG_EXIT and result.exit.code == 0x11
    assert result.status == 0x23
    serial = next(r for r in result.stats.ranges if r.name == "serial (COM1)")
    assert serial.writes == 4  # one access per byte of the string
    assert result.stats.exits["IO"] >= 3


class Scratch:
    """A 16-byte MMIO device that remembers writes and reads them back."""

    def __init__(self) -> None:
        self.data = bytearray(16)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = value.to_bytes(size, "little")


def test_mmio_reaches_devices_and_unclaimed_reads_all_ones(tmp_path: Path) -> None:
    code = (
        b"\xc7\x05" + struct.pack("<II", 0xD000_0004, 0xCAFEF00D)  # mov dword [0xd0000004], 0xcafef00d
        + b"\x8b\x1d" + struct.pack("<I", 0xD000_0004)  # mov ebx, [0xd0000004]
        + b"\x8b\x0d" + struct.pack("<I", 0xF000_0000)  # mov ecx, [0xf0000000] (nothing there)
        + b"\x89\xd8"  # mov eax, ebx
        + b"\x31\xc8"  # xor eax, ecx  -> ~0xcafef00d
        + b"\xe7\xf4"  # out 0xf4, eax
        + HLT_LOOP
    )  # fmt: skip
    machine = Machine(MachineConfig(kernel=write(tmp_path, "mmio.img", multiboot_image(code)), timeout=60))
    scratch = Scratch()
    machine.mmio.insert(0xD000_0000, 16, scratch, "scratch")
    result = machine.run()
    assert scratch.data[4:8] == struct.pack("<I", 0xCAFEF00D)
    assert result.exit.code == (~0xCAFEF00D) & 0xFFFF_FFFF
    assert result.stats.exits["MMIO"] == 3
    ranges = {r.name: r for r in result.stats.ranges if r.bus == "mmio"}
    assert (ranges["scratch"].reads, ranges["scratch"].writes) == (1, 1)
    assert ranges["unclaimed"].reads == 1


def test_triple_fault_is_reported(tmp_path: Path) -> None:
    # The boot IDT is empty: ud2 -> #UD -> #GP -> #DF -> shutdown.
    result = run(write(tmp_path, "ud2.img", multiboot_image(b"\x0f\x0b")))
    assert result.exit.kind is ExitKind.TRIPLE_FAULT
    assert "0x100020" in result.exit.detail
    assert result.status == 71


@pytest.mark.parametrize("code", [SPIN, b"\xfa\xf4"], ids=["spinning", "cli-hlt"])
def test_stop_from_another_thread_ends_a_busy_or_halted_guest(tmp_path: Path, code: bytes) -> None:
    machine = Machine(MachineConfig(kernel=write(tmp_path, "spin.img", multiboot_image(code)), cpus=2))
    timer = threading.Timer(1.0, machine.stop)
    timer.start()
    started = time.monotonic()
    result = machine.run()
    assert result.exit.kind is ExitKind.STOPPED
    assert time.monotonic() - started < 20
    assert all(not runner.thread.is_alive() for runner in machine.runners)


def test_timeout_stops_the_guest(tmp_path: Path) -> None:
    machine = Machine(MachineConfig(kernel=write(tmp_path, "spin.img", multiboot_image(SPIN)), timeout=1.0))
    result = machine.run()
    assert result.exit.kind is ExitKind.STOPPED and "timed out" in result.exit.detail


def test_a_failing_device_stops_the_vm_with_an_error(tmp_path: Path) -> None:
    class Broken:
        def read(self, offset: int, size: int) -> int:
            raise RuntimeError("device bug")

        def write(self, offset: int, size: int, value: int) -> None:
            raise RuntimeError("device bug")

    machine = Machine(MachineConfig(kernel=write(tmp_path, "w.img", multiboot_image(b"\xe6\x99" + SPIN))))
    machine.ports.insert(0x99, 1, Broken(), "broken")
    result = machine.run()
    assert result.exit.kind is ExitKind.ERROR and "device bug" in result.exit.detail


def test_debug_exit_value_becomes_the_status(tmp_path: Path) -> None:
    result = run(write(tmp_path, "exit.img", multiboot_image(out_debug_exit32(0x20) + HLT_LOOP)))
    assert result.status == (0x20 << 1) | 1


def test_emulation_failure_is_reported_with_rip(tmp_path: Path) -> None:
    # Jump into MMIO space: KVM cannot fetch an instruction there and gives up.
    code = b"\xb8\x00\x00\x00\xd0\xff\xe0"  # mov eax, 0xd0000000; jmp eax
    result = run(write(tmp_path, "mmio-jump.img", multiboot_image(code)))
    assert result.exit.kind is ExitKind.ERROR
    assert "internal error (EMULATION)" in result.exit.detail
    assert "RIP 0xd0000000" in result.exit.detail
    assert result.status == 70


def test_console_input_before_and_after_the_run(tmp_path: Path) -> None:
    """Input typed before the UART exists is kept; input after the end is dropped."""
    # Real mode: poll LSR.DR, read one byte, exit with it as the debug-exit value.
    code = bytes.fromhex(
        "bafd03"  # mov dx, 0x3fd
        "ec"  # in al, dx
        "a801"  # test al, 1
        "74fb"  # jz back to `in`
        "baf803"  # mov dx, 0x3f8
        "ec"  # in al, dx
        "baf400"  # mov dx, 0xf4
        "ee"  # out dx, al
        "f4"  # hlt
    )
    machine = Machine(
        MachineConfig(kernel=write(tmp_path, "read.bin", code), timeout=60, kernel_format="flat")
    )
    machine.send_input(b"Z")
    result = machine.run()
    assert result.exit.code == ord("Z")
    machine.send_input(b"late")  # no error, nothing to deliver to
