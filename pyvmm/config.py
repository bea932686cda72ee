"""`MachineConfig`: everything a user chooses about a VM, checked once."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyvmm.arch.x86.layout import MiB
from pyvmm.errors import ConfigError

DEFAULT_MEMORY = 256 * MiB
MIN_MEMORY = 2 * MiB
MAX_MEMORY = 1 << 46  # 64 TiB: far beyond what a host gives, yet rules out typos

_UNITS = {"": MiB, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([KMGT])(?:i?B)?|(B))?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A memory size as QEMU's -m takes it: a number, MiB by default, or with B/K/M/G/T."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"cannot read memory size {text!r}: use e.g. 256M, 1G or 512 (MiB)")
    number, unit, byte_unit = match.groups()
    return int(number) * _UNITS[(unit or byte_unit or "").upper()]


@dataclass
class MachineConfig:
    """A VM to build: what to boot, how many vCPUs, how much RAM, where the console goes.

    `console` receives the guest's serial output as it is produced (for example
    ``sys.stdout.buffer.write``); the output is also kept in `RunResult.console`.
    `timeout` (seconds) stops the VM if it has not ended by then.
    """

    kernel: Path | str
    initrd: Path | str | None = None
    cmdline: str = ""
    cpus: int = 1
    memory: int | str = DEFAULT_MEMORY
    console: Callable[[bytes], object] | None = None
    timeout: float | None = None
    kvm_device: str = "/dev/kvm"
    kernel_decompress: str = "host"  # bzImages: "host" (pyvmm unpacks) or "guest"
    kernel_format: str = "auto"  # "auto" (detect the format) or "flat" (raw real-mode binary)

    def memory_bytes(self) -> int:
        size = parse_size(self.memory) if isinstance(self.memory, str) else self.memory
        if not MIN_MEMORY <= size <= MAX_MEMORY:
            raise ConfigError(f"memory size {size} bytes is out of range ({MIN_MEMORY // MiB} MiB to 64 TiB)")
        if size % (4096):
            raise ConfigError(f"memory size {size} bytes is not a whole number of 4 KiB pages")
        return size

    def validate(self) -> None:
        """Raise `ConfigError` on anything wrong that can be seen without KVM."""
        self.memory_bytes()
        if not isinstance(self.cpus, int) or self.cpus < 1:
            raise ConfigError(f"the number of vCPUs must be at least 1, not {self.cpus!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("the timeout must be a positive number of seconds")
        if "\0" in self.cmdline:
            raise ConfigError("the kernel command line may not contain NUL bytes")
