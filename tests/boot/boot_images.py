"""Synthetic boot images for the loader tests, packed by hand from the specs
(ELF gABI §4-5, Multiboot 0.6.96 §3.1) so that the tests do not trust the reader
they test."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyvmm.memory import GuestMemory

MB_MAGIC = 0x1BADB002
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4

ELF32_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")  # 52 bytes
ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
ELF32_PHDR = struct.Struct("<IIIIIIII")  # type offset vaddr paddr filesz memsz flags align
ELF64_PHDR = struct.Struct("<IIQQQQQQ")  # type flags offset vaddr paddr filesz memsz align
MB_HEADER = struct.Struct("<III")
MB_ADDRESSES = struct.Struct("<IIIII")
NOTE_HEADER = struct.Struct("<III")


@dataclass
class Seg:
    """A segment to put in a synthetic ELF file."""

    paddr: int
    data: bytes
    memsz: int = -1  # -1: same as len(data)
    type: int = PT_LOAD
    align: int = 4

    @property
    def size(self) -> int:
        return len(self.data) if self.memsz < 0 else self.memsz


def multiboot_header(flags: int = 0x3, checksum: int | None = None, addresses: tuple[int, ...] = ()) -> bytes:
    """magic, flags, checksum (correct unless given), then the address fields if any."""
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFF_FFFF
    header = MB_HEADER.pack(MB_MAGIC, flags, checksum)
    return header + (MB_ADDRESSES.pack(*addresses) if addresses else b"")


@dataclass
class Elf:
    """An ELF file: headers, an optional blob right after the program headers (a
    Multiboot header, 4-byte aligned), then each segment's bytes."""

    segments: list[Seg]
    entry: int
    bits: int = 32
    machine: int = -1
    ident: bytes = b""
    after_headers: bytes = b""
    offsets: list[int] = field(default_factory=list)

    def build(self) -> bytes:
        ehdr, phdr = (ELF32_EHDR, ELF32_PHDR) if self.bits == 32 else (ELF64_EHDR, ELF64_PHDR)
        machine = self.machine if self.machine >= 0 else (EM_386 if self.bits == 32 else EM_X86_64)
        ident = self.ident or b"\x7fELF" + bytes([1 if self.bits == 32 else 2, 1, 1])
        phoff = ehdr.size
        blob_at = phoff + phdr.size * len(self.segments)
        position = blob_at + len(self.after_headers)
        body = bytearray(self.after_headers)
        self.offsets = []
        for seg in self.segments:
            pad = -position % 16
            body += bytes(pad)
            position += pad
            self.offsets.append(position)
            body += seg.data
            position += len(seg.data)
        header = ehdr.pack(
            ident.ljust(16, b"\0"), 2, machine, 1, self.entry, phoff, 0, 0, ehdr.size,
            phdr.size, len(self.segments), 0, 0, 0,
        )  # fmt: skip
        table = b""
        for seg, offset in zip(self.segments, self.offsets, strict=True):
            if self.bits == 32:
                table += phdr.pack(
                    seg.type, offset, seg.paddr, seg.paddr, len(seg.data), seg.size, 7, seg.align
                )
            else:
                table += phdr.pack(
                    seg.type, 7, offset, seg.paddr, seg.paddr, len(seg.data), seg.size, seg.align
                )
        return header + table + bytes(body)


def note(name: bytes, kind: int, desc: bytes, align: int = 4) -> bytes:
    """One ELF note: header, NUL-terminated name, descriptor, each padded to `align`."""
    name_z = name + b"\0"
    padded_name = name_z + bytes(-len(name_z) % align)
    return NOTE_HEADER.pack(len(name_z), len(desc), kind) + padded_name + desc + bytes(-len(desc) % align)


def code(size: int, seed: int = 1) -> bytes:
    """Recognisable non-zero bytes."""
    return bytes((seed + i * 7) % 255 + 1 for i in range(size))


def multiboot_elf(
    paddr: int = 0x100000,
    text: bytes = b"",
    bss: int = 0x2000,
    flags: int = 0x3,
    checksum: int | None = None,
) -> Elf:
    """A Multiboot ELF32 kernel: one segment with a bss tail, header after the phdrs."""
    text = text or code(0x300)
    return Elf(
        [Seg(paddr, text, memsz=len(text) + bss)],
        entry=paddr + 0x10,
        after_headers=multiboot_header(flags, checksum),
    )


def aout_kernel(load_addr: int = 0x100000, text_size: int = 0x400, bss: int = 0x1000, lead: int = 0) -> bytes:
    """A non-ELF Multiboot kernel using the address fields (flags bit 16).

    `lead` bytes come before the loaded part of the file; the header is the first
    thing loaded, at load_addr.
    """
    header_size = MB_HEADER.size + MB_ADDRESSES.size
    load_end = load_addr + header_size + text_size
    addresses = (load_addr, load_addr, load_end, load_end + bss if bss else 0, load_addr + header_size)
    return bytes(lead) + multiboot_header(0x10003, addresses=addresses) + code(text_size, seed=5)


MBI = struct.Struct("<7I16s9I4H")  # §3.3, 88 bytes
MBI_FIELDS = [
    *("flags", "mem_lower", "mem_upper", "boot_device", "cmdline", "mods_count", "mods_addr", "syms"),
    *("mmap_length", "mmap_addr", "drives_length", "drives_addr", "config_table", "boot_loader_name"),
    *("apm_table", "vbe_control_info", "vbe_mode_info"),
    *("vbe_mode", "vbe_interface_seg", "vbe_interface_off", "vbe_interface_len"),
]
MMAP_ENTRY = struct.Struct("<IQQI")
MODULE = struct.Struct("<IIII")


def c_string(memory: GuestMemory, address: int, limit: int = 4096) -> bytes:
    raw = memory.read(address, limit)
    assert b"\0" in raw, "unterminated string"
    return raw.split(b"\0", 1)[0]


def read_mbi(memory: GuestMemory, address: int) -> dict[str, int]:
    return dict(zip(MBI_FIELDS, MBI.unpack(memory.read(address, MBI.size)), strict=True))
