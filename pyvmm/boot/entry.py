"""The contract between loaders and the x86 setup code."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import ConfigError


class CpuMode(enum.Enum):
    REAL16 = "16-bit real mode"
    PROTECTED32 = "32-bit protected mode, paging off"
    LONG64 = "64-bit long mode, identity-mapped"


class KernelDecompress(enum.StrEnum):
    """Who unpacks a compressed Linux bzImage.

    HOST: pyvmm decompresses the payload and boots the vmlinux inside it (PVH when the
    kernel has the Xen PVH note, else the 64-bit entry with a zero page).
    GUEST: the bzImage is loaded whole and its own decompressor runs in the guest
    (Linux boot.rst, "64-bit Boot Protocol").
    """

    HOST = "host"
    GUEST = "guest"


# "auto": detect bzImage, Multiboot, ELF64 (a 512-byte boot sector counts as flat);
# "flat": the user says the file is a raw real-mode binary (QEMU has no such mode).
KERNEL_FORMATS = ("auto", "flat")


def encode_text(text: str | bytes, what: str) -> bytes:
    """The bytes a guest gets for a command line or file name: bytes as given, as
    Linux takes them; a str as the user typed it (command-line arguments reach
    Python decoded with the file system encoding and surrogateescape, and
    os.fsencode gives the original bytes back, even when they are not UTF-8)."""
    if isinstance(text, bytes):
        return text
    try:
        return os.fsencode(text)
    except UnicodeEncodeError as exc:  # a lone surrogate that no byte stands for
        raise ConfigError(f"{what} cannot be encoded as bytes: {exc.reason} at index {exc.start}") from None


@dataclass(frozen=True)
class BootImages:
    """What the user asked to boot.

    `kernel_decompress` matters only for bzImages ("host" or "guest", see
    `KernelDecompress`). `cmdline` is str or bytes; every loader uses
    `cmdline_bytes`. `rsdp_address`, when the machine wrote ACPI tables, is handed
    to Linux (zero page `acpi_rsdp_addr`, PVH `rsdp_paddr`).
    """

    kernel: Path
    initrd: Path | None = None
    cmdline: str | bytes = ""
    kernel_decompress: str = KernelDecompress.HOST
    rsdp_address: int | None = None
    kernel_format: str = "auto"  # "auto" (detect) or "flat" (a raw real-mode binary)
    # [start, end) ranges outside RAM the memory map reports reserved (the PCI ECAM window)
    reserved: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        choices = [mode.value for mode in KernelDecompress]
        if self.kernel_decompress not in choices:
            raise ConfigError(
                f"kernel decompression {self.kernel_decompress!r} is not one of {', '.join(choices)}"
            )
        if self.kernel_format not in KERNEL_FORMATS:
            formats = ", ".join(KERNEL_FORMATS)
            raise ConfigError(f"kernel format {self.kernel_format!r} is not one of {formats}")
        if self.rsdp_address is not None and not 0 < self.rsdp_address < 1 << 64:
            raise ConfigError(f"RSDP address {self.rsdp_address:#x} is not a 64-bit physical address")
        for start, end in self.reserved:
            if not 0 <= start < end <= 1 << 64:
                raise ConfigError(f"reserved range [{start:#x}, {end:#x}) is not a physical address range")
        self.cmdline_bytes  # noqa: B018 (refuse an unencodable command line here, once)

    @property
    def cmdline_bytes(self) -> bytes:
        """The command line as the guest gets it (before any loader adds its NUL)."""
        return encode_text(self.cmdline, "kernel command line")


@dataclass
class EntryPoint:
    """How the bootstrap CPU starts after a loader ran.

    `registers` names general registers to set (``"rax"``, ``"rbx"``, ``"rsi"``, ...);
    everything else is the mode's documented default (see docs/boot.md).
    `loaded` lists the guest ranges the loader filled, for diagnostics.
    """

    mode: CpuMode
    rip: int
    registers: dict[str, int] = field(default_factory=dict)
    loaded: list[tuple[int, int, str]] = field(default_factory=list)
    description: str = ""
