"""A vCPU without KVM: the state ioctls the emulator uses, over plain structures,
and page-table builders for guest memory."""

from __future__ import annotations

import ctypes
import struct

from pyvmm.kvm import x86
from pyvmm.memory import GuestMemory

XSAVE_SIZE = 4096
P, RW, US, PS = 1, 2, 4, 0x80
XD = 1 << 63


def _copy(structure: ctypes.Structure) -> ctypes.Structure:
    return type(structure).from_buffer_copy(bytes(structure))


class FakeVcpu:
    """Keeps the structures; counts the set_* calls."""

    def __init__(self) -> None:
        self.regs = x86.kvm_regs(rflags=2)
        self.sregs = x86.kvm_sregs()
        self.xsave = x86.xsave_with(XSAVE_SIZE)()
        struct.pack_into("<H", self.xsave, 0, 0x37F)
        struct.pack_into("<II", self.xsave, 24, 0x1F80, 0xFFFF)
        self.xcrs = x86.kvm_xcrs(nr_xcrs=1)
        self.xcrs.xcrs[0].value = 7
        self.events = x86.kvm_vcpu_events()
        self.debugregs = x86.kvm_debugregs()
        self.sets: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.sets[name] = self.sets.get(name, 0) + 1

    def get_regs(self) -> x86.kvm_regs:
        return _copy(self.regs)  # type: ignore[return-value]

    def set_regs(self, regs: x86.kvm_regs) -> None:
        self._count("regs")
        self.regs = _copy(regs)  # type: ignore[assignment]

    def get_sregs(self) -> x86.kvm_sregs:
        return _copy(self.sregs)  # type: ignore[return-value]

    def set_sregs(self, sregs: x86.kvm_sregs) -> None:
        self._count("sregs")
        self.sregs = _copy(sregs)  # type: ignore[assignment]

    def get_xsave(self) -> ctypes.Structure:
        return _copy(self.xsave)

    def set_xsave(self, area: ctypes.Structure) -> None:
        self._count("xsave")
        self.xsave = _copy(area)

    def get_xcrs(self) -> x86.kvm_xcrs:
        return _copy(self.xcrs)  # type: ignore[return-value]

    def set_xcrs(self, xcrs: x86.kvm_xcrs) -> None:
        self._count("xcrs")
        self.xcrs = _copy(xcrs)  # type: ignore[assignment]

    def get_vcpu_events(self) -> x86.kvm_vcpu_events:
        return _copy(self.events)  # type: ignore[return-value]

    def set_vcpu_events(self, events: x86.kvm_vcpu_events) -> None:
        self._count("events")
        self.events = _copy(events)  # type: ignore[assignment]

    def get_debugregs(self) -> x86.kvm_debugregs:
        return _copy(self.debugregs)  # type: ignore[return-value]

    def set_debugregs(self, regs: x86.kvm_debugregs) -> None:
        self._count("debugregs")
        self.debugregs = _copy(regs)  # type: ignore[assignment]

    # --- convenient state ------------------------------------------------------------------

    def xsave_bytes(self) -> bytes:
        return bytes(self.xsave)

    def long_mode(self, cr3: int, *, cpl: int = 0, cr4: int = 0x20 | 0x200 | 0x40000) -> None:
        """64-bit mode with paging from `cr3`, flat segments of privilege `cpl`."""
        sregs = self.sregs
        sregs.cs = x86.kvm_segment(
            limit=0xFFFF_FFFF, selector=0x08 | cpl, type=0xB, present=1, dpl=cpl, s=1, l=1, g=1
        )
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, x86.kvm_segment(limit=0xFFFF_FFFF, selector=0x10 | cpl, type=3, present=1,
                                                 dpl=cpl, db=1, s=1, g=1))  # fmt: skip
        sregs.cr0 = 0x8005_0033
        sregs.cr3 = cr3
        sregs.cr4 = cr4
        sregs.efer = 0xD00
        sregs.idt.limit = 0xFFF

    def protected_mode(self, *, cpl: int = 0) -> None:
        """32-bit protected mode without paging, flat 4 GiB segments."""
        sregs = self.sregs
        sregs.cs = x86.kvm_segment(
            limit=0xFFFF_FFFF, selector=0x08, type=0xB, present=1, dpl=cpl, db=1, s=1, g=1
        )
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, x86.kvm_segment(limit=0xFFFF_FFFF, selector=0x10, type=3, present=1, dpl=cpl,
                                                 db=1, s=1, g=1))  # fmt: skip
        sregs.cr0 = 0x11 | 0x20
        sregs.cr4 = 0x200 | 0x40000
        sregs.efer = 0
        sregs.idt.limit = 0x7FF


class PageTables:
    """Builds 4-level (or 5-level) page tables in guest memory from a page pool."""

    def __init__(self, memory: GuestMemory, pool: int, *, levels: int = 4) -> None:
        self.memory = memory
        self.next = pool
        self.levels = levels
        self.root = self._table()

    def _table(self) -> int:
        address = self.next
        self.next += 4096
        self.memory.fill(address, 4096)
        return address

    def map(self, linear: int, physical: int, flags: int = P | RW | US, *, size: int = 4096,
            table_flags: int = P | RW | US) -> None:  # fmt: skip
        leaf_shift = {4096: 12, 2 << 20: 21, 1 << 30: 30}[size]
        table = self.root
        for shift in range(12 + 9 * (self.levels - 1), leaf_shift, -9):
            slot = table + ((linear >> shift) & 0x1FF) * 8
            entry = self.memory.read_u64(slot)
            if not entry & P:
                entry = self._table() | table_flags
                self.memory.write_u64(slot, entry)
            table = entry & 0x000F_FFFF_FFFF_F000
        leaf = physical | flags | (PS if size != 4096 else 0)
        self.memory.write_u64(table + ((linear >> leaf_shift) & 0x1FF) * 8, leaf)

    def entry(self, linear: int) -> int:
        """The 4 KiB leaf entry of `linear` (tables must exist)."""
        table = self.root
        for shift in range(12 + 9 * (self.levels - 1), 12, -9):
            table = self.memory.read_u64(table + ((linear >> shift) & 0x1FF) * 8) & 0x000F_FFFF_FFFF_F000
        return self.memory.read_u64(table + ((linear >> 12) & 0x1FF) * 8)
