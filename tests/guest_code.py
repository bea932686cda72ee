"""Tiny guests assembled in the test itself, for exits the C guests don't cover.

Each is a real boot image: a flat binary (real mode at 0x7C00) or a Multiboot image
using the a.out kludge (protected mode, loaded at 1 MiB); or, for the tests of the KVM
binding and of what sits right on it, a few instructions run in real mode at 0x1000 on
a vCPU of a bare VM (`real_mode_guest`), with no loader and no machine.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyvmm.kvm import Kvm, Vcpu, Vm
from pyvmm.memory import GuestMemory

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
LOAD_ADDRESS = 0x100000
HEADER_SIZE = 32


def multiboot_image(code: bytes) -> bytes:
    """A Multiboot image whose entry point is `code`, loaded at 1 MiB (a.out kludge)."""
    flags = MULTIBOOT_AOUT_KLUDGE
    checksum = (-(MULTIBOOT_MAGIC + flags)) & 0xFFFF_FFFF
    end = LOAD_ADDRESS + HEADER_SIZE + len(code)
    header = struct.pack(
        "<8I",
        MULTIBOOT_MAGIC, flags, checksum,
        LOAD_ADDRESS,  # header_addr
        LOAD_ADDRESS,  # load_addr
        end,  # load_end_addr
        end,  # bss_end_addr
        LOAD_ADDRESS + HEADER_SIZE,  # entry_addr
    )  # fmt: skip
    return header + code


def write(tmp_path: Path, name: str, image: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(image)
    return path


# 32-bit code fragments (protected mode, flat segments).
def out_debug_exit32(code: int) -> bytes:
    """mov eax, code; out 0xf4, eax"""
    return b"\xb8" + struct.pack("<I", code) + b"\xe7\xf4"


HLT_LOOP = b"\xf4\xeb\xfd"  # hlt; jmp $-1
SPIN = b"\xeb\xfe"  # jmp $


# --- real mode on a bare VM ------------------------------------------------------------

REAL_MODE_CODE = 0x1000  # where real_mode_guest puts the code and starts the vCPU
REAL_MODE_RAM = 0x10000  # 64 KiB: what segment 0 reaches
MMIO_ADDRESS = 0xF0000  # real-mode reachable (segment 0xF000), outside the 64 KiB of RAM

# mov al, 0x7a; out 0x42, al; out 0x43, al; hlt
PORT_WRITES = bytes.fromhex("b07a e642 e643 f4")
# mov ax, 0xf000; mov ds, ax; mov word [0], 0x1234; mov word [0], 0x5678; hlt
MMIO_WRITES = bytes.fromhex("b800f0 8ed8 c7060000 3412 c7060000 7856 f4")


def enter_real_mode(vcpu: Vcpu, rip: int = REAL_MODE_CODE) -> None:
    """Start `vcpu` (again) at 0000:`rip`. A new vCPU is in real mode already, at the
    reset vector F000:FFF0 (Intel SDM vol. 3 §9.1.4): only CS, DS and RIP change, and
    RFLAGS is 2 (bit 1 is reserved and reads as 1), so no earlier flag carries over."""
    sregs = vcpu.get_sregs()
    for segment in (sregs.cs, sregs.ds):
        segment.base, segment.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = rip, 2
    vcpu.set_regs(regs)


@contextmanager
def real_mode_guest(
    code: bytes, *, irqchip: bool = False, memory: GuestMemory | None = None, log_dirty: bool = False
) -> Iterator[tuple[Vm, Vcpu]]:
    """A VM of its own and vCPU 0 about to run `code` at 0x1000 in real mode, in
    `memory` (64 KiB of its own when None, unmapped after the VM is closed). With
    `irqchip` the VM has the in-kernel irqchip, made before the vCPU as KVM requires."""
    ram = GuestMemory([(0, REAL_MODE_RAM)]) if memory is None else memory
    try:
        ram.write(REAL_MODE_CODE, code)
        with Kvm() as kvm, kvm.create_vm() as vm:
            ram.register(vm, log_dirty=log_dirty)
            if irqchip:
                vm.create_irqchip()
            vcpu = vm.create_vcpu(0)
            try:
                enter_real_mode(vcpu)
                yield vm, vcpu
            finally:
                vcpu.close()
    finally:
        if memory is None:
            ram.close()
