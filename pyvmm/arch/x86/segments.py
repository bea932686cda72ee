"""Segment descriptors and the boot GDT (Intel SDM Vol. 3A §3.4.5)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.kvm.x86 import kvm_segment

# Descriptor type field values (SDM Vol. 3A §3.4.5.1).
TYPE_DATA_READ_WRITE_ACCESSED = 0x3
TYPE_CODE_EXEC_READ_ACCESSED = 0xB
TYPE_TSS_BUSY_32 = 0xB
TYPE_LDT = 0x2

# The boot GDT: index 2 is the code segment (selector 0x10, Linux's __BOOT_CS) and
# index 3 the data segment (0x18, __BOOT_DS), as the Linux boot protocol expects.
CODE_SELECTOR = 0x10
DATA_SELECTOR = 0x18
TSS_SELECTOR = 0x20
GDT_ENTRIES = 5


@dataclass(frozen=True)
class Segment:
    """The fields of a segment descriptor that pyvmm sets."""

    base: int
    limit: int
    type: int
    selector: int = 0
    code_or_data: bool = True  # the S bit: 1 for code/data, 0 for system segments
    dpl: int = 0
    present: bool = True
    long_mode: bool = False  # L
    default_32: bool = False  # D/B
    granularity_4k: bool = False  # G

    def descriptor(self) -> int:
        """The 8-byte GDT entry."""
        limit = self.limit >> 12 if self.granularity_4k else self.limit
        access = self.type | (self.code_or_data << 4) | (self.dpl << 5) | (self.present << 7)
        flags = (self.long_mode << 1) | (self.default_32 << 2) | (self.granularity_4k << 3)
        return (
            (limit & 0xFFFF)
            | ((self.base & 0xFFFFFF) << 16)
            | (access << 40)
            | (((limit >> 16) & 0xF) << 48)
            | (flags << 52)
            | (((self.base >> 24) & 0xFF) << 56)
        )

    def to_kvm(self) -> kvm_segment:
        return kvm_segment(
            base=self.base,
            limit=self.limit,
            selector=self.selector,
            type=self.type,
            present=int(self.present),
            dpl=self.dpl,
            db=int(self.default_32),
            s=int(self.code_or_data),
            l=int(self.long_mode),
            g=int(self.granularity_4k),
        )


def flat_code(long_mode: bool, selector: int = CODE_SELECTOR, dpl: int = 0) -> Segment:
    return Segment(
        0, 0xFFFF_FFFF, TYPE_CODE_EXEC_READ_ACCESSED, selector, dpl=dpl,
        long_mode=long_mode, default_32=not long_mode, granularity_4k=True,
    )  # fmt: skip


def flat_data(selector: int = DATA_SELECTOR, dpl: int = 0) -> Segment:
    return Segment(
        0, 0xFFFF_FFFF, TYPE_DATA_READ_WRITE_ACCESSED, selector, dpl=dpl,
        default_32=True, granularity_4k=True,
    )  # fmt: skip


def boot_tss() -> Segment:
    """A busy 32-bit TSS: VMX entry requires a usable TR in protected mode."""
    return Segment(0, 0x67, TYPE_TSS_BUSY_32, TSS_SELECTOR, code_or_data=False)


def real_mode(selector: int = 0) -> Segment:
    """A real-mode segment: base = selector * 16, 64 KiB limit."""
    code = TYPE_CODE_EXEC_READ_ACCESSED
    return Segment(selector << 4, 0xFFFF, code, selector)


def gdt_bytes(code: Segment, data: Segment, tss: Segment) -> bytes:
    """The boot GDT: null, null, code, data, TSS."""
    entries = [0, 0, code.descriptor(), data.descriptor(), tss.descriptor()]
    return struct.pack(f"<{GDT_ENTRIES}Q", *entries)
