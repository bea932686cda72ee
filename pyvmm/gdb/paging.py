"""Guest-virtual memory as the debugger sees it: translated through the vCPU's page
tables by the emulator's page walker (`pyvmm.arch.x86.emulator.pagewalk`, Intel SDM
Vol. 3A chapter 4: paging off, 32-bit, PAE, 4-level and 5-level), then read from or
written to `GuestMemory`.

A debugger is not an access of the guest: it may read supervisor pages, write
read-only ones (a breakpoint into kernel text) and ignore protection keys, so the
walk is done for a supervisor read with CR0.WP, SMEP, SMAP and PKE/PKS off, and it
sets no accessed or dirty flag. A page that is not mapped, or whose tables lie
outside RAM, is a `TranslationError`; no byte of a range is touched unless every
page of it translates.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.arch.x86.emulator.errors import EmulatorError, NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault
from pyvmm.arch.x86.emulator.pagewalk import PAGE_SIZE, Access, AccessKind, PagingContext, PagingMode, walk
from pyvmm.arch.x86.registers import Cr0, Cr4
from pyvmm.errors import GuestMemoryError, VmmError
from pyvmm.kvm.x86 import kvm_sregs
from pyvmm.memory import GuestMemory

_DEBUGGER_ACCESS = Access(AccessKind.READ, user=False)
_IGNORED_CR4 = Cr4.SMEP | Cr4.SMAP | Cr4.PKE | Cr4.PKS


class TranslationError(VmmError):
    """A guest-virtual address the debugger cannot reach. To move to pyvmm/errors.py."""

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(f"guest virtual address {address:#x}: {reason}")
        self.address = address


@dataclass(frozen=True)
class AddressSpace:
    """The paging registers of one vCPU at a stop, and the memory they map."""

    context: PagingContext
    memory: GuestMemory

    @classmethod
    def of(cls, sregs: kvm_sregs, memory: GuestMemory) -> AddressSpace:
        context = PagingContext(
            cr0=sregs.cr0 & ~Cr0.WP,
            cr3=sregs.cr3,
            cr4=sregs.cr4 & ~_IGNORED_CR4,
            efer=sregs.efer,
            cpl=0,
            rflags=0,
        )
        return cls(context, memory)

    @property
    def mode(self) -> PagingMode:
        return self.context.mode

    def translate(self, address: int) -> int:
        """The guest-physical address of `address`."""
        try:
            return walk(self.context, self.memory, address, _DEBUGGER_ACCESS).physical
        except InjectFault:
            raise TranslationError(address, "not mapped") from None
        except (EmulatorError, NotCovered) as exc:
            raise TranslationError(address, str(exc)) from None

    def _pieces(self, address: int, length: int) -> list[tuple[int, int]]:
        """(guest-physical address, length) per page of the range, each checked."""
        if length < 0 or not 0 <= address < 1 << 64 or address + length > 1 << 64:
            raise TranslationError(address, f"the range of {length} bytes leaves the address space")
        pieces = []
        while length:
            size = min(length, PAGE_SIZE - address % PAGE_SIZE)
            physical = self.translate(address)
            if not self.memory.contains(physical, size):
                raise TranslationError(address, f"maps to {physical:#x}, outside guest RAM")
            pieces.append((physical, size))
            address += size
            length -= size
        return pieces

    def read(self, address: int, length: int) -> bytes:
        try:
            return b"".join(self.memory.read(gpa, size) for gpa, size in self._pieces(address, length))
        except GuestMemoryError as exc:
            raise TranslationError(address, str(exc)) from None

    def write(self, address: int, data: bytes) -> None:
        pieces = self._pieces(address, len(data))
        offset = 0
        for gpa, size in pieces:
            self.memory.write(gpa, data[offset : offset + size])
            offset += size


__all__ = ["AddressSpace", "TranslationError"]
