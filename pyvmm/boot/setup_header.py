"""Reading a Linux x86 bzImage: its setup header and where its parts are.

Linux Documentation/arch/x86/boot.rst: "The Real-Mode Kernel Header" (fields and
offsets), "Details of Header Fields" (what each means and from which protocol
version it exists), "Loading The Rest of The Kernel" (the protected-mode part starts
at (setup_sects + 1) * 512, setup_sects 0 meaning 4). pyvmm needs protocol 2.06 or
newer (cmdline_size) and a bzImage (loadflags LOADED_HIGH), i.e. any kernel since
2.6.22. Every offset and size from the file is checked against the file.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from pyvmm.arch.x86.layout import GiB
from pyvmm.boot.zeropage import (
    BOOT_FLAG,
    HEADER_MAGIC,
    JUMP_OFFSET,
    SETUP_HEADER_OFFSET,
    LoadFlags,
    SetupHeader,
    XLoadFlags,
)
from pyvmm.errors import ImageError

SECTOR_SIZE = 512  # boot.rst: "a sector refers to 512 bytes"
DEFAULT_SETUP_SECTS = 4  # boot.rst: "if this field is 0, the real value is 4"
MIN_PROTOCOL = 0x0206  # cmdline_size exists from 2.06 on
PAYLOAD_PROTOCOL = 0x0208  # payload_offset and payload_length
XLOADFLAGS_PROTOCOL = 0x020C  # xloadflags
PREF_ADDRESS_PROTOCOL = 0x020A  # pref_address, init_size, min_alignment
BOOT_FLAG_OFFSET = 0x1FE
MAGIC_OFFSET = 0x202
HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)  # 0x26c, the end of protocol 2.15
ABOVE_4G = 1 << 32


def is_bzimage(data: bytes) -> bool:
    """The boot sector signature 0xAA55 and "HdrS": a Linux kernel with a setup header.

    A plain boot sector has the first but not the second, and stays a flat binary.
    """
    boot_flag = data[BOOT_FLAG_OFFSET : BOOT_FLAG_OFFSET + 2]
    magic = data[MAGIC_OFFSET : MAGIC_OFFSET + 4]
    return boot_flag == BOOT_FLAG.to_bytes(2, "little") and magic == HEADER_MAGIC.to_bytes(4, "little")


def protocol_text(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


@dataclass(frozen=True)
class BzImage:
    """A validated bzImage. `header_bytes` is the setup header as the file has it,
    from 0x1f1 to its end (0x202 + the byte at 0x201), for a boot loader to copy."""

    name: str
    header: SetupHeader
    header_bytes: bytes
    setup_size: int  # bytes before the protected-mode part
    kernel: bytes  # the protected-mode part: syssize paragraphs

    @property
    def version(self) -> int:
        return int(self.header.version)

    @property
    def protocol(self) -> str:
        return protocol_text(self.version)

    @property
    def xloadflags(self) -> XLoadFlags:
        return XLoadFlags(self.header.xloadflags if self.version >= XLOADFLAGS_PROTOCOL else 0)

    @property
    def relocatable(self) -> bool:
        return bool(self.header.relocatable_kernel)

    @property
    def kernel_alignment(self) -> int:
        return max(int(self.header.kernel_alignment), 1)

    @property
    def pref_address(self) -> int:
        return int(self.header.pref_address) if self.version >= PREF_ADDRESS_PROTOCOL else 0

    @property
    def init_size(self) -> int:
        """Memory from the runtime start the kernel needs before it reads the memory map;
        before protocol 2.10 only the protected-mode part is known."""
        size = int(self.header.init_size) if self.version >= PREF_ADDRESS_PROTOCOL else 0
        return max(size, len(self.kernel))

    @property
    def cmdline_limit(self) -> int:
        """The most command line bytes the kernel takes, without the NUL (cmdline_size)."""
        return int(self.header.cmdline_size)

    @property
    def initrd_limit(self) -> int:
        """The end of the range the initrd may occupy: initrd_addr_max is its highest
        byte, and a kernel without XLF_CAN_BE_LOADED_ABOVE_4G wants it below 4 GiB."""
        limit = int(self.header.initrd_addr_max) + 1
        if not self.xloadflags & XLoadFlags.CAN_BE_LOADED_ABOVE_4G:
            limit = min(limit, 4 * GiB)
        return limit

    def payload(self) -> bytes:
        """The compressed kernel inside the protected-mode part (protocol 2.08+)."""
        hdr = self.header
        if self.version < PAYLOAD_PROTOCOL or hdr.payload_length == 0:
            raise ImageError(
                f"{self.name}: boot protocol {self.protocol} does not say where the compressed "
                "kernel is (payload_offset, 2.08+); boot it with --kernel-decompress guest"
            )
        start, end = hdr.payload_offset, hdr.payload_offset + hdr.payload_length
        if end > len(self.kernel):
            raise ImageError(
                f"{self.name}: truncated: the payload [{start:#x}, {end:#x}) runs past the "
                f"protected-mode part ({len(self.kernel):#x} bytes)"
            )
        return self.kernel[start:end]


def parse_bzimage(data: bytes, name: str) -> BzImage:
    """Validate the setup header and cut the file into its parts (boot.rst)."""
    if len(data) < HEADER_END:
        raise ImageError(f"{name}: truncated: {len(data):#x} bytes cannot hold a Linux setup header")
    header = SetupHeader.from_buffer_copy(data, SETUP_HEADER_OFFSET)
    if header.boot_flag != BOOT_FLAG:
        raise ImageError(f"{name}: bad magic: boot_flag is {header.boot_flag:#06x}, not {BOOT_FLAG:#06x}")
    if header.header != HEADER_MAGIC:
        raise ImageError(f'{name}: bad magic: no "HdrS" at {MAGIC_OFFSET:#x}: a pre-2.00 zImage')
    if header.version < MIN_PROTOCOL:
        raise ImageError(
            f"{name}: Linux boot protocol {protocol_text(header.version)} is too old; "
            f"pyvmm needs {protocol_text(MIN_PROTOCOL)} or newer (Linux 2.6.22)"
        )
    if not header.loadflags & LoadFlags.LOADED_HIGH:
        raise ImageError(f"{name}: not a bzImage: loadflags LOADED_HIGH is clear (a zImage)")
    # boot.rst: "The end of setup header can be calculated as 0x0202 + byte value at 0x0201"
    header_end = min(MAGIC_OFFSET + data[JUMP_OFFSET + 1], HEADER_END)
    if header_end < SETUP_HEADER_OFFSET + SetupHeader.cmdline_size.offset + 4:
        raise ImageError(f"{name}: setup header ends at {header_end:#x}, before the fields of its protocol")
    setup_sects = header.setup_sects or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    kernel_size = header.syssize * 16
    if kernel_size == 0:
        raise ImageError(f"{name}: syssize is 0: no protected-mode kernel")
    if setup_size + kernel_size > len(data):
        raise ImageError(
            f"{name}: truncated: setup ({setup_sects} sectors) and kernel (syssize {kernel_size:#x} bytes) "
            f"need {setup_size + kernel_size:#x} bytes, the file has {len(data):#x}"
        )
    return BzImage(
        name,
        header,
        bytes(data[SETUP_HEADER_OFFSET:header_end]),
        setup_size,
        bytes(data[setup_size : setup_size + kernel_size]),
    )
