"""Guest accesses by linear address: each page of the range is translated (and
checked) before any byte is touched, so an access that straddles a page boundary
either faults on its first bad page with nothing written or reaches every page
(Intel SDM Vol. 3A §4.10.2.3 leaves the order open; this is one allowed order).
Ranges that are not RAM go to an optional MMIO handler, in naturally sized pieces.

An `Mmu` lives for one emulation (an instruction and those run ahead after it) and
keeps the translations it walked, as the processor's TLB does (SDM Vol. 3A §4.10.2):
per 4 KiB page, access kind and privilege, dropped when a register the walk depends
on changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pyvmm.arch.x86.emulator.cpu_state import MASK64, CpuState
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.pagewalk import (
    PAGE_SIZE,
    Access,
    AccessKind,
    PagingContext,
    set_accessed_dirty,
    walk,
)
from pyvmm.arch.x86.registers import Efer, Rflags
from pyvmm.memory import GuestMemory

_EFER_LMA = int(Efer.LMA)  # plain ints: tested on every access
_RFLAGS_AC = int(Rflags.AC)  # SMAP: supervisor access rights depend on it


class MmioAccess(Protocol):
    """Guest-physical accesses outside RAM (`pyvmm.bus.MmioBus` fits)."""

    def read(self, address: int, size: int) -> int: ...
    def write(self, address: int, size: int, value: int) -> None: ...


def _pieces(address: int, length: int) -> list[tuple[int, int]]:
    """Split [address, address + length) into naturally aligned 1/2/4/8-byte pieces."""
    out = []
    while length:
        size = 8
        while size > length or address % size:
            size //= 2
        out.append((address, size))
        address += size
        length -= size
    return out


@dataclass
class Span:
    """A translated linear range: guest-physical pieces, one per page touched."""

    memory: GuestMemory
    mmio: MmioAccess | None
    pieces: list[tuple[int, int]]

    @property
    def size(self) -> int:
        return sum(length for _, length in self.pieces)

    def read(self) -> bytes:
        out = bytearray()
        for gpa, length in self.pieces:
            if self.memory.contains(gpa, length):
                out += self.memory.read(gpa, length)
            else:
                for address, size in _pieces(gpa, length):
                    out += self._mmio(address, size).read(address, size).to_bytes(size, "little")
        return bytes(out)

    def write(self, data: bytes | bytearray) -> None:
        if len(data) != self.size:
            raise ValueError(f"writing {len(data)} bytes to a span of {self.size}")
        offset = 0
        for gpa, length in self.pieces:
            chunk = data[offset : offset + length]
            offset += length
            if self.memory.contains(gpa, length):
                self.memory.write(gpa, chunk)
                continue
            for address, size in _pieces(gpa, length):
                start = address - gpa
                value = int.from_bytes(chunk[start : start + size], "little")
                self._mmio(address, size).write(address, size, value)

    def _mmio(self, address: int, size: int) -> MmioAccess:
        if self.mmio is None:
            raise NotCovered(f"guest-physical {address:#x}+{size} is not RAM and no MMIO handler was given")
        return self.mmio

    @property
    def in_ram(self) -> bool:
        return all(self.memory.contains(gpa, length) for gpa, length in self.pieces)


class Mmu:
    """Linear-address reads and writes for the emulated instruction."""

    def __init__(
        self, state: CpuState, memory: GuestMemory, *, maxphyaddr: int = 52, mmio: MmioAccess | None = None
    ) -> None:
        self.state = state
        self.memory = memory
        self.maxphyaddr = maxphyaddr
        self.mmio = mmio
        # (linear page, kind, user) -> physical page, valid for `_tlb_registers`.
        self._tlb: dict[tuple[int, AccessKind, bool], int] = {}
        self._tlb_registers: tuple[int, ...] = ()

    def paging_context(self) -> PagingContext:
        sregs = self.state.sregs
        return PagingContext(
            cr0=int(sregs.cr0),
            cr3=int(sregs.cr3),
            cr4=int(sregs.cr4),
            efer=int(sregs.efer),
            cpl=self.state.cpl,
            rflags=self.state.rflags,
            maxphyaddr=self.maxphyaddr,
        )

    def span(self, linear: int, size: int, kind: AccessKind, *, user: bool | None = None) -> Span:
        """Translate `size` bytes at `linear` for `kind`, every page before any byte is
        accessed. `user` defaults to CPL == 3 (an explicit access)."""
        state = self.state
        sregs = state.sregs
        cpl = state.cpl
        registers = (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, cpl, state.rflags & _RFLAGS_AC)
        if registers != self._tlb_registers:
            self._tlb.clear()
            self._tlb_registers = registers
        user = cpl == 3 if user is None else user
        wrap = MASK64 if sregs.efer & _EFER_LMA else 0xFFFF_FFFF
        pieces = []
        address, remaining = linear & wrap, size
        while remaining:
            offset = address & (PAGE_SIZE - 1)
            length = min(remaining, PAGE_SIZE - offset)
            page = address - offset
            physical_page = self._tlb.get((page, kind, user))
            if physical_page is None:
                translation = walk(self.paging_context(), self.memory, address, Access(kind, user))
                # Flags are set page by page, as a walk would: a fault on the second page
                # leaves the first one accessed (observed on hardware).
                set_accessed_dirty(self.memory, translation, write=kind is AccessKind.WRITE)
                physical_page = translation.physical - offset
                self._tlb[(page, kind, user)] = physical_page
            pieces.append((physical_page + offset, length))
            address = (address + length) & wrap
            remaining -= length
        return Span(self.memory, self.mmio, pieces)

    def read(self, linear: int, size: int, *, user: bool | None = None) -> bytes:
        return self.span(linear, size, AccessKind.READ, user=user).read()

    def write(self, linear: int, data: bytes | bytearray, *, user: bool | None = None) -> None:
        self.span(linear, len(data), AccessKind.WRITE, user=user).write(data)

    def fetch(self, linear: int, size: int) -> bytes:
        return self.span(linear, size, AccessKind.FETCH).read()
