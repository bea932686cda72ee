"""Whole guests (tests/guests/, built from source) booted through the Python API on
the real /dev/kvm; assertions are on what each guest printed and how it ended."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.machine import RunResult

pytestmark = pytest.mark.kvm

MiB = 1 << 20


def boot(kernel: Path, **options: object) -> RunResult:
    options.setdefault("timeout", 300)
    return Machine(MachineConfig(kernel=kernel, **options)).run()  # type: ignore[arg-type]


def facts(console: str) -> dict[str, str]:
    """`key=value` lines a guest printed."""
    return dict(re.findall(r"^(\w+)=(.*?)\r?$", console, re.MULTILINE))


def test_demo_guest_greets_and_powers_off(guests: Path) -> None:
    streamed: list[bytes] = []
    result = boot(guests / "hello.elf", console=streamed.append)
    assert "Hello from the pyvmm demo guest!" in result.console_text
    assert b"".join(streamed) == result.console
    assert result.exit.kind is ExitKind.POWEROFF and result.status == 0


def test_a_console_sink_that_never_returns_does_not_hold_the_guest(guests: Path) -> None:
    """A library user's console callable that blocks (a write to a pipe nobody reads)
    must not stop the vCPU printing: the guest powers off as usual, its output is in
    the result, and run() returns without waiting for the sink."""
    never = threading.Event()
    started = time.monotonic()
    result = boot(guests / "hello.elf", console=lambda data: never.wait(), timeout=30)
    assert result.exit.kind is ExitKind.POWEROFF, result.exit
    assert "Hello from the pyvmm demo guest!" in result.console_text
    assert time.monotonic() - started < 15  # the sink is abandoned after a second


@pytest.fixture(scope="module")
def multiboot_run(guests: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, bytes]:
    initrd = tmp_path_factory.mktemp("mb") / "initrd.img"
    payload = bytes(range(256)) * 17
    initrd.write_bytes(payload)
    result = boot(guests / "mbinfo.elf", cmdline="exit=3 console=ttyS0", initrd=initrd, memory="128M")
    return result, payload


def test_multiboot_handoff(multiboot_run: tuple[RunResult, bytes], guests: Path) -> None:
    result, _ = multiboot_run
    info = facts(result.console_text)
    assert info["magic"] == "0x2badb002"
    assert info["cmdline"] == f"{guests / 'mbinfo.elf'} exit=3 console=ttyS0"
    assert info["boot_loader_name"] == "pyvmm"
    assert info["mem_lower"] == "639"
    assert int(info["mem_upper"]) == (128 * MiB - MiB) // 1024
    assert info["mbi_overlaps_kernel"] == "0"
    assert int(info["mbi"], 16) >= 0x1000  # never in page 0
    assert result.exit.code == 3 and result.status == 7


def test_multiboot_memory_map_covers_ram(multiboot_run: tuple[RunResult, bytes]) -> None:
    result, _ = multiboot_run
    entries = [
        (int(base, 16), int(length, 16), int(kind))
        for base, length, kind in re.findall(r"mmap base=(\w+) len=(\w+) type=(\d+)", result.console_text)
    ]
    usable = sum(length for _, length, kind in entries if kind == 1)
    assert (0x100000, 128 * MiB - 0x100000, 1) in entries
    assert usable == 0x9FC00 + 128 * MiB - 0x100000


def test_multiboot_initrd_is_module_zero(multiboot_run: tuple[RunResult, bytes]) -> None:
    result, payload = multiboot_run
    match = re.search(r"mod0 start=(\w+) end=(\w+) string=(\S+) head=(\w+)", result.console_text)
    assert match, result.console_text
    start, end = int(match[1], 16), int(match[2], 16)
    assert end - start == len(payload) and start % 4096 == 0
    assert match[3].endswith("initrd.img")
    assert bytes.fromhex(match[4]) == payload[:16]
    kernel_end = int(facts(result.console_text)["kernel_end"], 16)
    assert start >= kernel_end


def test_real_mode_flat_binary(guests: Path) -> None:
    result = boot(guests / "realmode.bin", kernel_format="flat")
    assert "hello from real mode" in result.console_text
    assert result.exit.code == 0x2A and result.status == 0x55


def test_long_mode_elf(guests: Path) -> None:
    result = boot(guests / "long64.elf", cmdline="exit=9 hello", memory="64M")
    info = facts(result.console_text)
    assert "hello from long mode" in result.console_text
    assert int(info["efer"], 16) & 0x500 == 0x500  # LME | LMA
    assert info["cmdline"] == "exit=9 hello"
    assert re.search(r"e820 addr=0x100000 size=0x3f00000 type=1", result.console_text)
    assert result.exit.code == 9


@pytest.mark.parametrize("cpus", [2, 3])
def test_every_cpu_reports_in(guests: Path, cpus: int) -> None:
    result = boot(guests / "smp.elf", cpus=cpus)
    text = result.console_text
    ids = sorted(int(m) for m in re.findall(r"cpu \d+ online apic_id=(\d+)", text))
    assert ids == list(range(cpus)), text
    assert f"all {cpus} cpus online" in text
    assert result.exit.code == 0
    assert len(result.stats.per_vcpu) == cpus


def test_memory_walker_writes_and_checks_all_ram(guests: Path) -> None:
    machine = Machine(MachineConfig(kernel=guests / "memwalk.elf", memory="256M", timeout=300))
    result = machine.run()
    match = re.search(r"memwalk pages=(\d+) bytes=(\d+) top=(\w+)", result.console_text)
    assert match and "memwalk ok" in result.console_text, result.console_text
    assert int(match[3], 16) == 256 * MiB
    assert int(match[2]) > 250 * MiB
    assert result.exit.code == 0


def test_triple_fault_guest(guests: Path) -> None:
    started = time.monotonic()
    result = boot(guests / "triple.elf")
    assert "about to triple fault" in result.console_text
    assert result.exit.kind in (ExitKind.TRIPLE_FAULT,)
    assert result.status == 71
    assert time.monotonic() - started < 60
