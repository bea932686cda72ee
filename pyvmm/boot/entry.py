"""The contract between loaders and the x86 setup code."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class CpuMode(enum.Enum):
    REAL16 = "16-bit real mode"
    PROTECTED32 = "32-bit protected mode, paging off"
    LONG64 = "64-bit long mode, identity-mapped"


@dataclass(frozen=True)
class BootImages:
    """What the user asked to boot."""

    kernel: Path
    initrd: Path | None = None
    cmdline: str = ""


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
