"""A small ELF reader: headers, loadable segments and notes of little-endian x86 images.

Formats: System V ABI, generic ELF ("gABI", 4.1), chapter 4 "ELF Header" and
chapter 5 "Program Header" / "Note Section"; machine numbers from the same ABI.
Only what a boot loader needs: program headers, never sections. Every offset and
size read from the file is checked against the file before it is used.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pyvmm.boot.memory_map import align_up, describe_ram, inside, memory_map, overlaps, usable_ram
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
EV_CURRENT = 1
PN_XNUM = 0xFFFF  # e_phnum escape for more than 65534 program headers (unsupported)

# e_ident indexes (gABI §4 "ELF Identification")
EI_CLASS = 4
EI_DATA = 5
EI_VERSION = 6
EI_NIDENT = 16


class ElfClass(enum.IntEnum):
    ELF32 = 1
    ELF64 = 2


class ElfData(enum.IntEnum):
    LSB = 1  # two's complement, little-endian
    MSB = 2


class Machine(enum.IntEnum):
    I386 = 3
    X86_64 = 62


class SegmentType(enum.IntEnum):
    NULL = 0
    LOAD = 1
    DYNAMIC = 2
    INTERP = 3
    NOTE = 4


_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


def _ehdr_fields(word: type[ctypes._SimpleCData]) -> list[tuple[str, type]]:  # type: ignore[type-arg]
    """Elf32_Ehdr and Elf64_Ehdr (gABI §4) have the same fields in the same order; only
    the entry point and the two table offsets (Addr, Off) are `word` wide."""
    return [
        ("e_ident", _u8 * EI_NIDENT),
        ("e_type", _u16),
        ("e_machine", _u16),
        ("e_version", _u32),
        ("e_entry", word),
        ("e_phoff", word),
        ("e_shoff", word),
        ("e_flags", _u32),
        ("e_ehsize", _u16),
        ("e_phentsize", _u16),
        ("e_phnum", _u16),
        ("e_shentsize", _u16),
        ("e_shnum", _u16),
        ("e_shstrndx", _u16),
    ]


class Elf32Ehdr(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = _ehdr_fields(_u32)


class Elf64Ehdr(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = _ehdr_fields(_u64)


# The program headers differ in order, not only in width (p_flags moves up in Elf64_Phdr
# to keep the 64-bit fields aligned), so each is written out as the gABI gives it.
class Elf32Phdr(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("p_type", _u32),
        ("p_offset", _u32),
        ("p_vaddr", _u32),
        ("p_paddr", _u32),
        ("p_filesz", _u32),
        ("p_memsz", _u32),
        ("p_flags", _u32),
        ("p_align", _u32),
    ]


class Elf64Phdr(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("p_type", _u32),
        ("p_flags", _u32),
        ("p_offset", _u64),
        ("p_vaddr", _u64),
        ("p_paddr", _u64),
        ("p_filesz", _u64),
        ("p_memsz", _u64),
        ("p_align", _u64),
    ]


class ElfNhdr(ctypes.LittleEndianStructure):
    """Note header; the same three 4-byte words in both classes on x86."""

    _pack_ = 1
    _fields_ = [("n_namesz", _u32), ("n_descsz", _u32), ("n_type", _u32)]


_HEADERS: dict[ElfClass, tuple[type[Elf32Ehdr] | type[Elf64Ehdr], type[Elf32Phdr] | type[Elf64Phdr]]] = {
    ElfClass.ELF32: (Elf32Ehdr, Elf32Phdr),
    ElfClass.ELF64: (Elf64Ehdr, Elf64Phdr),
}
_MACHINE = {ElfClass.ELF32: Machine.I386, ElfClass.ELF64: Machine.X86_64}


@dataclass(frozen=True)
class Segment:
    """One program header, class-independent. `index` is its place in the table."""

    index: int
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int
    align: int = 0

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfFile:
    elf_class: ElfClass
    machine: Machine
    entry: int
    segments: list[Segment]

    def loadable(self) -> list[Segment]:
        """The PT_LOAD segments that occupy memory."""
        return [s for s in self.segments if s.type == SegmentType.LOAD and s.memsz > 0]


class ElfNote(NamedTuple):
    name: str
    type: int
    desc: bytes


# A guest range a loader keeps for itself: [start, end) and what it holds.
Reservation = tuple[int, int, str]


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def elf_class(data: bytes) -> int | None:
    """e_ident[EI_CLASS] of an ELF file (not validated), None when too short."""
    return data[EI_CLASS] if is_elf(data) and len(data) > EI_CLASS else None


def parse_elf(data: bytes, name: str) -> ElfFile:
    """Validate the ELF header and program header table of an x86 image (gABI §4, §5).

    32-bit files must be EM_386 and 64-bit files EM_X86_64, little-endian.
    """
    if not is_elf(data):
        raise ImageError(f"{name}: not an ELF file (bad magic {data[:4]!r})")
    if len(data) < EI_NIDENT:
        raise ImageError(f"{name}: truncated ELF identification ({len(data)} bytes)")
    try:
        klass = ElfClass(data[EI_CLASS])
    except ValueError:
        raise ImageError(f"{name}: unknown ELF class {data[EI_CLASS]}") from None
    if data[EI_DATA] != ElfData.LSB:
        raise ImageError(f"{name}: ELF data encoding {data[EI_DATA]} is not little-endian")
    if data[EI_VERSION] != EV_CURRENT:
        raise ImageError(f"{name}: ELF version {data[EI_VERSION]} is not {EV_CURRENT}")
    ehdr_type, phdr_type = _HEADERS[klass]
    if len(data) < ctypes.sizeof(ehdr_type):
        raise ImageError(f"{name}: truncated ELF header ({len(data)} bytes)")
    ehdr = ehdr_type.from_buffer_copy(data)
    if ehdr.e_machine != _MACHINE[klass]:
        raise ImageError(
            f"{name}: ELF machine {ehdr.e_machine} is not {_MACHINE[klass].name} "
            f"({_MACHINE[klass].value}), the only machine for a {klass.name} x86 image"
        )
    return ElfFile(klass, _MACHINE[klass], ehdr.e_entry, _program_headers(data, ehdr, phdr_type, name))


def _program_headers(
    data: bytes, ehdr: Elf32Ehdr | Elf64Ehdr, phdr_type: type[Elf32Phdr] | type[Elf64Phdr], name: str
) -> list[Segment]:
    phnum, phoff, entsize = ehdr.e_phnum, ehdr.e_phoff, ehdr.e_phentsize
    if phnum == PN_XNUM:
        raise ImageError(f"{name}: extended program header numbering (PN_XNUM) is not supported")
    if phnum and entsize < ctypes.sizeof(phdr_type):
        raise ImageError(f"{name}: program header size {entsize} is smaller than {ctypes.sizeof(phdr_type)}")
    if phoff + phnum * entsize > len(data):
        raise ImageError(
            f"{name}: truncated: {phnum} program headers at offset {phoff:#x} "
            f"run past the end of the file ({len(data)} bytes)"
        )
    segments = []
    for index in range(phnum):
        phdr = phdr_type.from_buffer_copy(data, phoff + index * entsize)
        segment = Segment(
            index, phdr.p_type, phdr.p_offset, phdr.p_paddr, phdr.p_filesz, phdr.p_memsz, phdr.p_align
        )
        if segment.offset + segment.filesz > len(data):
            raise ImageError(
                f"{name}: truncated: segment {index} needs file bytes "
                f"[{segment.offset:#x}, {segment.offset + segment.filesz:#x}) but the file has {len(data):#x}"
            )
        if segment.type == SegmentType.LOAD and segment.filesz > segment.memsz:
            raise ImageError(
                f"{name}: segment {index} has more file bytes ({segment.filesz:#x}) "
                f"than memory ({segment.memsz:#x})"
            )
        segments.append(segment)
    return segments


def load_segments(
    memory: GuestMemory, data: bytes, segments: Sequence[Segment], name: str, reserved: Sequence[Reservation]
) -> list[tuple[int, int, str]]:
    """Copy each segment to its physical address and zero its bss part (gABI §5,
    "p_memsz > p_filesz: the extra bytes ... follow the segment's initialized area").

    Every segment must lie in usable RAM of the memory map and clear of `reserved`;
    nothing is written unless all of them do. Returns the (start, end, what) ranges.
    """
    if not segments:
        raise ImageError(f"{name}: no loadable segments")
    ram = usable_ram(memory_map(memory))
    for segment in segments:
        what = f"segment {segment.index} [{segment.paddr:#x}, {segment.end:#x})"
        if not inside(ram, segment.paddr, segment.memsz):
            raise ImageError(f"{name}: {what} is outside guest RAM ({describe_ram(memory)})")
        for start, end, holds in reserved:
            if overlaps((segment.paddr, segment.end), (start, end)):
                raise ImageError(f"{name}: {what} overlaps [{start:#x}, {end:#x}), {holds}")
    loaded = []
    file = memoryview(data)  # slices of the file, not copies of them
    for segment in segments:
        memory.write(segment.paddr, file[segment.offset : segment.offset + segment.filesz])
        # In place: memsz comes from the file and may be gigabytes (GuestMemory.fill).
        memory.fill(segment.paddr + segment.filesz, segment.memsz - segment.filesz)
        loaded.append((segment.paddr, segment.end, f"{name} segment {segment.index}"))
    return loaded


def elf_notes(data: bytes, elf: ElfFile, name: str) -> list[ElfNote]:
    """Every note in the PT_NOTE segments, in file order (gABI §5 "Note Section").

    Name and descriptor are padded to 4 bytes, or to 8 in segments aligned to 8
    (as GNU property notes are). The name loses its terminating NUL.
    """
    notes = []
    header_size = ctypes.sizeof(ElfNhdr)
    for segment in elf.segments:
        if segment.type != SegmentType.NOTE:
            continue
        blob = data[segment.offset : segment.offset + segment.filesz]
        pad = 8 if segment.align == 8 else 4
        position = 0
        while position + header_size <= len(blob):
            nhdr = ElfNhdr.from_buffer_copy(blob, position)
            name_at = position + header_size
            desc_at = align_up(name_at + nhdr.n_namesz, pad)
            end = desc_at + nhdr.n_descsz
            if end > len(blob):
                at = segment.offset + position
                raise ImageError(f"{name}: truncated: note at offset {at:#x} runs past its segment")
            note_name = blob[name_at : name_at + nhdr.n_namesz].split(b"\0", 1)[0]
            notes.append(ElfNote(note_name.decode("ascii", "replace"), nhdr.n_type, blob[desc_at:end]))
            position = align_up(end, pad)
        if position < len(blob) and any(blob[position:]):
            raise ImageError(f"{name}: truncated note at offset {segment.offset + position:#x}")
    return notes
