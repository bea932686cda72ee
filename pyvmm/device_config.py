"""The devices a user asks for: disks, network cards, the entropy device, the virtio
console, the virtio transport and QEMU's test devices, and how the CLI spells them.

The option strings follow QEMU's `-drive`/`-netdev` style: a main value, then
`key=value` pairs separated by commas (`rootfs.ext4,readonly=on,serial=root`,
`tap=tap0,mac=52:54:00:12:34:56`). Each is checked here once, for the CLI and the
Python API alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pyvmm.errors import ConfigError

TRANSPORTS = ("pci", "mmio")
CONSOLES = ("serial", "virtio")
TEST_DEVICES = ("pci-testdev", "pc-testdev")
MAX_DISKS = 16
MAX_NETS = 8
SERIAL_MAX = 20  # virtio-blk's get-id answer is 20 bytes (virtio 1.2 §5.2.6.1)
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.IGNORECASE)
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1, no '/' or spaces
_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}


def _options(text: str, what: str) -> tuple[str, dict[str, str]]:
    """'main,key=value,...' → (main, {key: value}); a repeated or empty key is an error."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{what}: expected a non-empty option string")
    main, *pairs = text.split(",")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected key=value, got {pair!r}")
        if key in options:
            raise ConfigError(f"{what}: {key} is given twice")
        options[key] = value
    return main, options


def _switch(value: str, what: str) -> bool:
    if value.lower() not in _ON_OFF:
        raise ConfigError(f"{what}: expected on or off, got {value!r}")
    return _ON_OFF[value.lower()]


def _unknown(options: dict[str, str], known: tuple[str, ...], what: str) -> None:
    extra = sorted(set(options) - set(known))
    if extra:
        raise ConfigError(f"{what}: unknown option {extra[0]!r} (known: {', '.join(known)})")


@dataclass(frozen=True)
class DiskConfig:
    """A raw disk image as a virtio-blk device (`/dev/vda`, `/dev/vdb`, ... in order)."""

    path: str
    readonly: bool = False
    serial: str | None = None  # what VIRTIO_BLK_T_GET_ID answers (at most 20 bytes)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path or "\0" in self.path:
            raise ConfigError(f"disk: expected an image file path, got {self.path!r}")
        if not isinstance(self.readonly, bool):
            raise ConfigError(f"disk {self.path}: readonly must be True or False")
        if self.serial is not None and (
            not isinstance(self.serial, str) or len(os.fsencode(self.serial)) > SERIAL_MAX
        ):
            raise ConfigError(f"disk {self.path}: serial must be a text of at most {SERIAL_MAX} bytes")

    @classmethod
    def parse(cls, text: str) -> DiskConfig:
        """`--disk PATH[,readonly=on|off][,serial=ID]`."""
        path, options = _options(text, "--disk")
        _unknown(options, ("readonly", "serial"), f"--disk {path}")
        readonly = _switch(options["readonly"], f"--disk {path} readonly") if "readonly" in options else False
        return cls(path, readonly, options.get("serial"))


@dataclass(frozen=True)
class NetConfig:
    """A virtio-net device on a TAP device: an existing one (`tap`), or, with
    `tap=None`, one pyvmm creates (root only) and removes at exit."""

    tap: str | None = None
    mac: str | None = None  # None: a locally administered address pyvmm picks

    def __post_init__(self) -> None:
        if self.tap is not None and (not isinstance(self.tap, str) or not _IFNAME.fullmatch(self.tap)):
            allowed = "1-15 of A-Z a-z 0-9 _ . -"
            raise ConfigError(f"net: {self.tap!r} is not a network interface name ({allowed})")
        if self.mac is not None:
            if not isinstance(self.mac, str) or not _MAC.fullmatch(self.mac):
                raise ConfigError(f"net: {self.mac!r} is not a MAC address such as 52:54:00:12:34:56")
            if int(self.mac[:2], 16) & 1:
                raise ConfigError(f"net: {self.mac} is a multicast address, not a card's")

    @classmethod
    def parse(cls, text: str) -> NetConfig:
        """`--net tap[=NAME][,mac=MAC]`."""
        main, options = _options(text, "--net")
        kind, sep, name = main.partition("=")
        if kind != "tap":
            raise ConfigError(f"--net: only TAP networking is supported (tap or tap=NAME), got {main!r}")
        _unknown(options, ("mac",), "--net")
        return cls(name if sep else None, options.get("mac"))

    def mac_bytes(self, index: int) -> bytes:
        """The MAC as 6 bytes; without one, 52:54:00:12:34:(56 + index) as QEMU picks."""
        if self.mac is None:
            return bytes([0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF])
        return bytes(int(part, 16) for part in self.mac.split(":"))


def check_disks(value: object) -> tuple[DiskConfig, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, DiskConfig) for d in value):
        raise ConfigError("expected a sequence of DiskConfig")
    if len(value) > MAX_DISKS:
        raise ConfigError(f"at most {MAX_DISKS} disks, got {len(value)}")
    return tuple(value)


def check_nets(value: object) -> tuple[NetConfig, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(n, NetConfig) for n in value):
        raise ConfigError("expected a sequence of NetConfig")
    if len(value) > MAX_NETS:
        raise ConfigError(f"at most {MAX_NETS} network cards, got {len(value)}")
    return tuple(value)


def check_test_devices(value: object) -> tuple[str, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, str) for d in value):
        raise ConfigError("expected a sequence of device names")
    for name in value:
        if name not in TEST_DEVICES:
            raise ConfigError(f"unknown device {name!r} (known: {', '.join(TEST_DEVICES)})")
    if len(set(value)) != len(value):
        raise ConfigError("a test device is given twice")
    return tuple(value)
