"""Linear-to-physical translation the way the processor does it, for the vCPU's
current paging mode (Intel SDM Vol. 3A chapter 4):

- paging off (§4.1.1): the linear address is the physical address;
- 32-bit paging (§4.3), with 4 MiB pages when CR4.PSE = 1 (PSE-36);
- PAE paging (§4.4);
- 4-level and 5-level paging (§4.5; 5-level when CR4.LA57 = 1).

Access rights follow §4.6 (U/S, R/W, XD with IA32_EFER.NXE, CR0.WP, CR4.SMEP,
CR4.SMAP with RFLAGS.AC); a violation becomes a #PF whose error code is built as in
§4.7. Accessed and dirty flags are set as §4.8 describes, once the translation has
succeeded. Protection keys (CR4.PKE/PKS) are not modelled: `walk` refuses them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pyvmm.arch.x86.emulator.errors import EmulatorError, NotCovered
from pyvmm.arch.x86.emulator.faults import (
    PF_FETCH,
    PF_PRESENT,
    PF_RESERVED,
    PF_USER,
    PF_WRITE,
    InjectFault,
    page_fault,
)
from pyvmm.arch.x86.registers import Cr0, Cr4, Efer, Rflags
from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory

PAGE_SIZE = 4096

# Paging-structure entry bits (SDM Vol. 3A Tables 4-4 ... 4-20).
P = 1 << 0
RW = 1 << 1
US = 1 << 2
ACCESSED = 1 << 5
DIRTY = 1 << 6
PS = 1 << 7
XD = 1 << 63

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class AccessKind(enum.Enum):
    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


class PagingMode(enum.Enum):
    NONE = "paging off"
    BIT32 = "32-bit paging"
    PAE = "PAE paging"
    LEVEL4 = "4-level paging"
    LEVEL5 = "5-level paging"


@dataclass(frozen=True)
class Access:
    """One access to translate. `user` is True for a user-mode access (CPL 3 and not
    an implicit supervisor access such as a descriptor-table read; §4.6)."""

    kind: AccessKind
    user: bool

    @property
    def write(self) -> bool:
        return self.kind is AccessKind.WRITE

    @property
    def fetch(self) -> bool:
        return self.kind is AccessKind.FETCH


@dataclass(frozen=True)
class PagingContext:
    """The registers a translation depends on."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    cpl: int
    rflags: int
    maxphyaddr: int = 52

    @property
    def mode(self) -> PagingMode:
        if not self.cr0 & Cr0.PG:
            return PagingMode.NONE
        if not self.cr4 & Cr4.PAE:
            return PagingMode.BIT32
        if not self.efer & Efer.LMA:
            return PagingMode.PAE
        return PagingMode.LEVEL5 if self.cr4 & Cr4.LA57 else PagingMode.LEVEL4

    @property
    def nxe(self) -> bool:
        return bool(self.efer & Efer.NXE)


@dataclass(frozen=True)
class Translation:
    """Where a linear address lands, and the paging-structure entries used to get there
    (guest-physical address and entry width), leaf last."""

    physical: int
    page_size: int
    entries: tuple[tuple[int, int], ...] = ()

    @property
    def page_offset_mask(self) -> int:
        return self.page_size - 1


class _Walk:
    """Accumulates the access rights of the entries on the way down (§4.6: U/S and R/W
    must allow the access at every level; XD at any level forbids fetches)."""

    def __init__(self) -> None:
        self.user = True
        self.writable = True
        self.executable = True
        self.entries: list[tuple[int, int]] = []

    def take(self, address: int, width: int, entry: int) -> None:
        """Go down through `entry` (read at `address`): record it, narrow the rights."""
        self.entries.append((address, width))
        self.user &= bool(entry & US)
        self.writable &= bool(entry & RW)


def _read_entry(memory: GuestMemory, gpa: int, width: int) -> int:
    try:
        data = memory.read(gpa, width)
    except GuestMemoryError as exc:
        raise EmulatorError(f"a paging-structure entry lies outside guest RAM ({exc})") from None
    return int((_U64 if width == 8 else _U32).unpack(data)[0])


def _present_entry(
    context: PagingContext, memory: GuestMemory, access: Access, linear: int, address: int, width: int
) -> int:
    """The entry at `address`; a not-present #PF for `linear` when its P bit is clear."""
    entry = _read_entry(memory, address, width)
    if not entry & P:
        raise page_fault(linear, _fault_code(context, access, present=False))
    return entry


def _fault_code(context: PagingContext, access: Access, *, present: bool, reserved: bool = False) -> int:
    code = 0
    if present:
        code |= PF_PRESENT
    if access.write:
        code |= PF_WRITE
    if access.user:
        code |= PF_USER
    if reserved:
        code |= PF_RESERVED
    if access.fetch and (context.cr4 & Cr4.SMEP or (context.cr4 & Cr4.PAE and context.nxe)):
        code |= PF_FETCH
    return code


def _check_rights(context: PagingContext, access: Access, linear: int, walk: _Walk) -> None:
    """§4.6.1: the access rights of a supervisor-mode or user-mode access."""
    smap_blocks = bool(context.cr4 & Cr4.SMAP) and (context.cpl == 3 or not context.rflags & Rflags.AC)
    if access.fetch:
        allowed = walk.executable and (
            walk.user if access.user else not (walk.user and context.cr4 & Cr4.SMEP)
        )
    elif access.user:
        allowed = walk.user and (walk.writable or not access.write)
    else:
        allowed = not (walk.user and smap_blocks)
        if access.write and not walk.writable and context.cr0 & Cr0.WP:
            allowed = False
    if not allowed:
        raise page_fault(linear, _fault_code(context, access, present=True))


def walk(context: PagingContext, memory: GuestMemory, linear: int, access: Access) -> Translation:
    """Translate `linear` for `access`, without setting accessed or dirty flags.

    Raises `InjectFault` (#PF, CR2 = `linear`) when the translation fails or the access
    is not allowed.
    """
    if context.cr4 & (Cr4.PKE | Cr4.PKS) and context.mode in (PagingMode.LEVEL4, PagingMode.LEVEL5):
        raise NotCovered("protection keys (CR4.PKE/PKS) are not modelled by the page walker")
    mode = context.mode
    if mode is PagingMode.NONE:
        return Translation(linear & 0xFFFF_FFFF, PAGE_SIZE)
    if mode is PagingMode.BIT32:
        return _walk_32bit(context, memory, linear & 0xFFFF_FFFF, access)
    if mode is PagingMode.PAE:
        linear &= 0xFFFF_FFFF
    return _walk_64bit_entries(context, memory, linear, access)


def _walk_32bit(context: PagingContext, memory: GuestMemory, linear: int, access: Access) -> Translation:
    """32-bit paging (§4.3): a page directory and page tables of 4-byte entries."""
    state = _Walk()
    pde_address = (context.cr3 & 0xFFFF_F000) | ((linear >> 22) << 2)
    pde = _present_entry(context, memory, access, linear, pde_address, 4)
    state.take(pde_address, 4, pde)
    if pde & PS and context.cr4 & Cr4.PSE:
        # PSE-36: PDE bits 20:13 hold physical-address bits 39:32 (up to MAXPHYADDR).
        high_bits = min(context.maxphyaddr, 40) - 32
        reserved = (((1 << 9) - 1) << 13) & ~(((1 << high_bits) - 1) << 13)
        if pde & reserved:
            raise page_fault(linear, _fault_code(context, access, present=True, reserved=True))
        _check_rights(context, access, linear, state)
        physical = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32) | (linear & 0x3F_FFFF)
        return Translation(physical, 4 << 20, tuple(state.entries))
    pte_address = (pde & 0xFFFF_F000) | (((linear >> 12) & 0x3FF) << 2)
    pte = _present_entry(context, memory, access, linear, pte_address, 4)
    state.take(pte_address, 4, pte)
    _check_rights(context, access, linear, state)
    return Translation((pte & 0xFFFF_F000) | (linear & 0xFFF), PAGE_SIZE, tuple(state.entries))


def _walk_64bit_entries(
    context: PagingContext, memory: GuestMemory, linear: int, access: Access
) -> Translation:
    """PAE (§4.4), 4-level and 5-level paging (§4.5): 8-byte entries, 9 bits a level."""
    mode = context.mode
    address_mask = ((1 << context.maxphyaddr) - 1) & ~0xFFF
    # Bits maxphyaddr..51 are reserved at every level; bit 63 too when NXE is off.
    reserved_high = ((1 << 52) - 1) & ~((1 << context.maxphyaddr) - 1)
    if not context.nxe:
        reserved_high |= XD
    state = _Walk()
    if mode is PagingMode.PAE:
        # The PDPTEs: 4 entries at CR3[31:5] (the processor loads them with CR3; they
        # are read here at walk time). They have no R/W, U/S, XD or accessed flag.
        pdpte_address = (context.cr3 & 0xFFFF_FFE0) | (((linear >> 30) & 3) << 3)
        pdpte = _present_entry(context, memory, access, linear, pdpte_address, 8)
        if pdpte & (((1 << 64) - 1) & ~((1 << context.maxphyaddr) - 1) | 0x1E6):
            raise page_fault(linear, _fault_code(context, access, present=True, reserved=True))
        table = pdpte & address_mask
        levels = [(21, False), (12, True)]  # (shift, last level)
    else:
        table = context.cr3 & address_mask
        first = 48 if mode is PagingMode.LEVEL5 else 39
        levels = [(shift, shift == 12) for shift in range(first, 11, -9)]
    for shift, last in levels:
        entry_address = table | (((linear >> shift) & 0x1FF) << 3)
        entry = _present_entry(context, memory, access, linear, entry_address, 8)
        large = not last and bool(entry & PS)
        reserved = reserved_high
        if shift >= 39 and not last:
            reserved |= PS  # PML4E and PML5E: PS is reserved
        elif large:
            if shift == 30:
                reserved |= ((1 << 30) - 1) & ~((1 << 13) - 1)  # 1 GiB page: bits 29:13
            else:
                reserved |= ((1 << 21) - 1) & ~((1 << 13) - 1)  # 2 MiB page: bits 20:13
        if entry & reserved:
            raise page_fault(linear, _fault_code(context, access, present=True, reserved=True))
        state.take(entry_address, 8, entry)
        if context.nxe and entry & XD:
            state.executable = False
        if large or last:
            _check_rights(context, access, linear, state)
            size = 1 << shift
            physical = (entry & address_mask & ~(size - 1)) | (linear & (size - 1))
            return Translation(physical, size, tuple(state.entries))
        table = entry & address_mask
    raise AssertionError("unreachable: the last level always returns")


def set_accessed_dirty(memory: GuestMemory, translation: Translation, *, write: bool) -> None:
    """§4.8: set the accessed flag of every entry used and, for a write, the dirty flag
    of the entry that maps the page.

    Only the entry's low byte (which holds both flags) is rewritten, and only when a
    flag is missing, so a concurrent change of the rest of the entry by another vCPU
    is not undone; the update is not a locked read-modify-write as the processor's is.
    """
    last = len(translation.entries) - 1
    for index, (gpa, _width) in enumerate(translation.entries):
        wanted = ACCESSED | (DIRTY if write and index == last else 0)
        low = memory.read_u8(gpa)
        if low & wanted != wanted:
            memory.write_u8(gpa, low | wanted)


def translate(context: PagingContext, memory: GuestMemory, linear: int, access: Access) -> int:
    """The physical address of `linear` for `access`, with accessed/dirty flags set."""
    translation = walk(context, memory, linear, access)
    set_accessed_dirty(memory, translation, write=access.write)
    return translation.physical


__all__ = [
    "Access",
    "AccessKind",
    "InjectFault",
    "PagingContext",
    "PagingMode",
    "Translation",
    "set_accessed_dirty",
    "translate",
    "walk",
]
