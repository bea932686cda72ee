"""`MachineConfig`: everything a user chooses about a VM, checked once.

Each field has one `check_<field>` function here. `MachineConfig` runs them all when
it is made and again in `validate()` (attributes may change in between), and the CLI
builds its argument types on the same functions, so a value means the same thing and
is refused with the same words from Python and from the command line. Nothing here
touches KVM: every check runs before a VM resource is taken.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

from pyvmm.arch.x86.layout import MiB
from pyvmm.boot.entry import KERNEL_FORMATS, KernelDecompress, encode_text
from pyvmm.device_config import (
    CONSOLES,
    TRANSPORTS,
    DiskConfig,
    NetConfig,
    check_disks,
    check_nets,
    check_test_devices,
)
from pyvmm.errors import ConfigError

DEFAULT_MEMORY = 256 * MiB
MIN_MEMORY = 2 * MiB
MAX_MEMORY = 1 << 46  # 64 TiB: far beyond what a host gives, yet rules out typos
PAGE_SIZE = 4096

# Linux's KVM_MAX_VCPUS on x86 (arch/x86/include/asm/kvm_host.h, 1024 since 5.15): no
# host's KVM allows more, so a larger count is a typo. The host's own limit
# (KVM_CAP_MAX_VCPUS, possibly lower) is checked when the Machine is built.
MAX_CPUS = 1024

# Ten years: longer is a typo, and threading's waits refuse more than TIMEOUT_MAX
# (OverflowError) on any host, so the ceiling is whichever is smaller.
MAX_TIMEOUT = min(10 * 365 * 24 * 3600, threading.TIMEOUT_MAX)

_UNITS = {"": MiB, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only: `\d` would also take other scripts' digits, which int() accepts.
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([KMGT])(?:i?B)?|(B))?\s*", re.IGNORECASE | re.ASCII)
_MAX_SIZE_DIGITS = 20  # 64 TiB in bytes has 14; past 20 is no size, and int() stops at 4300


def _describe(value: object) -> str:
    """`value` for an error message, kept short: a user may pass anything, of any size."""
    try:
        text = repr(value)
    except Exception:  # an object's own __repr__ may fail; the message must not
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else f"{text[:40]}... ({type(value).__name__})"


def parse_size(text: str) -> int:
    """A memory size as QEMU's -m takes it: a number, MiB by default, or with B/K/M/G/T.

    Absurd sizes (more than `MAX_MEMORY`) are refused here, so that no caller carries
    a number with thousands of digits any further.
    """
    match = _SIZE.fullmatch(text)
    if not match:
        raise ConfigError(f"cannot read memory size {_describe(text)}: use e.g. 256M, 1G or 512 (MiB)")
    number, unit, byte_unit = match.groups()
    too_large = ConfigError(f"memory size {_describe(text)} is more than pyvmm gives a guest (64 TiB)")
    if len(number.lstrip("0")) > _MAX_SIZE_DIGITS:  # before int(): it takes long, then refuses
        raise too_large
    size = int(number) * _UNITS[(unit or byte_unit or "").upper()]
    if size > MAX_MEMORY:
        raise too_large
    return size


def _is_integer(value: object) -> TypeGuard[int]:
    """An int that is not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_path(value: object, what: str = "a file path") -> str | os.PathLike[str]:
    """A file name: str or os.PathLike giving str, not empty, no NUL, encodable.

    A str that came from the command line may hold surrogate escapes for bytes that
    are not UTF-8 (PEP 383); `os.fsencode` turns those back into the user's bytes, and
    refuses only what no file name can be (e.g. a lone surrogate such as U+D800).
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"expected {what} (str or os.PathLike), got {_describe(value)}")
    try:
        name = os.fspath(value)
    except TypeError:  # its __fspath__ gave neither str nor bytes
        name = None
    if not isinstance(name, str):  # a PathLike may give bytes, which Path() refuses
        raise ConfigError(f"expected {what} naming a str path, got {_describe(value)}")
    if not name:
        raise ConfigError(f"expected {what}, got an empty one")
    if "\0" in name:
        raise ConfigError(f"{what} may not contain NUL characters: {_describe(name)}")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise ConfigError(f"{what} cannot be encoded as a file name: {_describe(name)}") from None
    return value


def check_kernel(value: object) -> str | os.PathLike[str]:
    return check_path(value, "a kernel file path")


def check_initrd(value: object) -> str | os.PathLike[str] | None:
    return None if value is None else check_path(value, "an initrd file path or None")


def check_cmdline(value: object) -> str | bytes:
    """The kernel command line: bytes as given (as Linux takes them), or a str that
    `encode_text` can turn into the bytes the user typed (surrogate escapes included).

    Its length limit depends on the boot protocol and is checked by the loader.
    """
    if not isinstance(value, (str, bytes)):  # a bytearray could change after the check
        raise ConfigError(f"expected str or bytes, got {_describe(value)}")
    if b"\0" in encode_text(value, "the kernel command line"):
        raise ConfigError("the kernel command line may not contain NUL bytes")
    return value


def check_cpus(value: object) -> int:
    if not _is_integer(value):
        raise ConfigError(f"expected a whole number of vCPUs, got {_describe(value)}")
    if not 1 <= value <= MAX_CPUS:
        raise ConfigError(f"expected at least 1 and at most {MAX_CPUS} vCPUs, got {value}")
    return value


def check_memory(value: object) -> int:
    """The guest's RAM in bytes, from an int (bytes) or a size text (`parse_size`)."""
    if isinstance(value, str):
        size = parse_size(value)
    elif _is_integer(value):
        size = value
    else:  # a float (268435456.0) is refused: it would only fail later, in mmap
        raise ConfigError(f"expected a size in bytes (int) or a text such as '256M', got {_describe(value)}")
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ConfigError(f"memory size {size} bytes is out of range ({MIN_MEMORY // MiB} MiB to 64 TiB)")
    if size % PAGE_SIZE:
        raise ConfigError(f"memory size {size} bytes is not a whole number of 4 KiB pages")
    return size


def check_console(value: object) -> Callable[[bytes], object] | None:
    if value is not None and not callable(value):
        raise ConfigError(f"expected a callable taking bytes, or None, got {_describe(value)}")
    return value


def check_timeout(value: object) -> float | None:
    """None (no timeout) or a finite number of seconds, above 0, at most `MAX_TIMEOUT`."""
    if value is None:
        return None
    expected = "expected a positive finite number of seconds"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{expected}, got {_describe(value)}")
    # nan compares false with everything, so it is tested by name; math.isfinite is
    # for floats only (it cannot convert an int past 1e308), ints are compared exactly.
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ConfigError(f"{expected}, got {_describe(value)}")
    if value > MAX_TIMEOUT:
        raise ConfigError(f"{expected} of at most {MAX_TIMEOUT} (10 years), got {_describe(value)}")
    return value


def check_kvm_device(value: object) -> str | os.PathLike[str]:
    return check_path(value, "a KVM device path")


def _check_choice(value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"expected one of {', '.join(map(repr, choices))}, got {_describe(value)}")
    return value


def check_kernel_decompress(value: object) -> str:
    return _check_choice(value, tuple(mode.value for mode in KernelDecompress))


def check_kernel_format(value: object) -> str:
    return _check_choice(value, KERNEL_FORMATS)


def check_transport(value: object) -> str:
    return _check_choice(value, TRANSPORTS)


def check_console_device(value: object) -> str:
    return _check_choice(value, CONSOLES)


def check_switch(value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected True or False, got {_describe(value)}")
    return value


@dataclass
class MachineConfig:
    """A VM to build: what to boot, how many vCPUs, how much RAM, where the console goes.

    `console` receives the guest's serial output as it is produced (for example
    ``sys.stdout.buffer.write``); the output is also kept in `RunResult.console`.
    `timeout` (seconds) stops the VM if it has not ended by then. `cmdline` may be
    bytes, given to the kernel as they are. Every field is
    checked when the config is made and again by `validate()`: a wrong one raises
    `ConfigError` naming it, before any KVM resource is taken.
    """

    kernel: str | os.PathLike[str]
    initrd: str | os.PathLike[str] | None = None
    cmdline: str | bytes = ""
    cpus: int = 1
    memory: int | str = DEFAULT_MEMORY
    console: Callable[[bytes], object] | None = None
    timeout: float | None = None
    kvm_device: str | os.PathLike[str] = "/dev/kvm"
    kernel_decompress: str = "host"  # bzImages: "host" (pyvmm unpacks) or "guest"
    kernel_format: str = "auto"  # "auto" (detect the format) or "flat" (raw real-mode binary)
    disks: tuple[DiskConfig, ...] = ()  # virtio-blk: /dev/vda, /dev/vdb, ...
    nets: tuple[NetConfig, ...] = ()  # virtio-net on TAP devices: eth0, eth1, ...
    rng: bool = False  # virtio-rng from the host's os.urandom
    console_device: str = "serial"  # the interactive console: COM1, or virtio-console (hvc0)
    transport: str = "pci"  # the virtio devices' transport: "pci" or "mmio"
    test_devices: tuple[str, ...] = ()  # QEMU's "pci-testdev" and "pc-testdev"

    def __post_init__(self) -> None:
        self.validate()

    def memory_bytes(self) -> int:
        """The guest's RAM in bytes."""
        size: int = _checked(self, "memory", check_memory)
        return size

    def validate(self) -> None:
        """Raise `ConfigError` on anything wrong that can be seen without KVM."""
        for field in fields(self):
            _checked(self, field.name, _CHECKS[field.name])


def _checked(config: MachineConfig, name: str, check: Callable[[Any], Any]) -> Any:
    """`check` applied to one field; its error names the field."""
    try:
        return check(getattr(config, name))
    except ConfigError as exc:
        raise ConfigError(f"MachineConfig.{name}: {exc}") from None


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "kernel": check_kernel,
    "initrd": check_initrd,
    "cmdline": check_cmdline,
    "cpus": check_cpus,
    "memory": check_memory,
    "console": check_console,
    "timeout": check_timeout,
    "kvm_device": check_kvm_device,
    "kernel_decompress": check_kernel_decompress,
    "kernel_format": check_kernel_format,
    "disks": check_disks,
    "nets": check_nets,
    "rng": check_switch,
    "console_device": check_console_device,
    "transport": check_transport,
    "test_devices": check_test_devices,
}
