"""The capability list (PCI Local Bus Specification 3.0 §6.7): a chain of structures
in the device-specific part of configuration space, found through the Capabilities
Pointer at 0x34 and the Status register's Capabilities List bit.

Each capability starts with its ID and the offset of the next one (0 ends the chain),
is dword aligned (§6.7: the bottom two bits of every pointer are reserved and read
0) and lies in [0x40, 0x100). Capabilities are laid out in the order they are added,
from 0x40 upward. `walk` follows the chain as a guest does, with the same bound on
its length as Linux (48 entries), so a corrupted chain cannot loop it.

The vendor-specific capability (ID 0x09) carries its length in its third byte; virtio
uses it for its common, notify, ISR, device and PCI-configuration-access structures
(virtio 1.2 §4.1.4).
"""

from __future__ import annotations

import enum

from pyvmm.pci.config_space import ConfigSpace
from pyvmm.pci.errors import PciError
from pyvmm.pci.registers import CAPABILITIES_POINTER, CONFIG_SPACE_SIZE, HEADER_END, STATUS, Status

CAPABILITY_HEADER = 2  # ID, next pointer
VENDOR_HEADER = 3  # ID, next pointer, length
MAX_CHAIN = 48  # (0x100 - 0x40) / 4: the most dword-aligned capabilities there can be


class CapabilityId(enum.IntEnum):
    """Capability IDs (PCI Code and ID Assignment Specification, §2)."""

    POWER_MANAGEMENT = 0x01
    MSI = 0x05
    VENDOR_SPECIFIC = 0x09
    PCI_EXPRESS = 0x10
    MSIX = 0x11


class CapabilityList:
    """Builds the chain in one function's configuration space."""

    def __init__(self, config: ConfigSpace) -> None:
        self.config = config
        self._next_free = HEADER_END
        self._last: int | None = None

    def add(self, capability_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability: `body` follows the ID and next-pointer bytes; `writable`
        (same length as `body`) gives the guest-writable bits of each body byte. Returns
        the capability's offset."""
        if not 0 <= capability_id <= 0xFF:
            raise PciError(f"capability ID {capability_id:#x} is not a byte")
        if writable is not None and len(writable) != len(body):
            raise PciError("a capability's writable mask must be as long as its body")
        offset = self._next_free
        length = CAPABILITY_HEADER + len(body)
        if offset + length > CONFIG_SPACE_SIZE:
            raise PciError(
                f"capability {capability_id:#x} of {length} bytes does not fit at {offset:#x} "
                f"(capabilities end at {CONFIG_SPACE_SIZE:#x})"
            )
        self.config.set(offset, 1, capability_id)
        self.config.set(offset + 1, 1, 0)
        for index, byte in enumerate(body):
            self.config.set(offset + CAPABILITY_HEADER + index, 1, byte)
            if writable is not None:
                self.config.set_writable(offset + CAPABILITY_HEADER + index, 1, writable[index])
        if self._last is None:
            self.config.set(CAPABILITIES_POINTER, 1, offset)
            self.config.set(STATUS, 2, self.config.get(STATUS, 2) | Status.CAPABILITIES_LIST)
        else:
            self.config.set(self._last + 1, 1, offset)
        self._last = offset
        self._next_free = -(-(offset + length) // 4) * 4
        return offset

    def add_vendor(self, data: bytes, writable: bytes | None = None) -> int:
        """A vendor-specific capability (ID 0x09): its length byte, then `data`."""
        length = VENDOR_HEADER + len(data)
        if length > 0xFF:
            raise PciError(f"a vendor-specific capability of {length} bytes does not fit its length byte")
        mask = None if writable is None else bytes(1) + writable
        return self.add(CapabilityId.VENDOR_SPECIFIC, bytes((length,)) + data, mask)


def walk(config: ConfigSpace) -> list[tuple[int, int]]:
    """(offset, ID) of every capability, following the chain as a guest reads it."""
    if not config.read(STATUS, 2) & Status.CAPABILITIES_LIST:
        return []
    found: list[tuple[int, int]] = []
    pointer = config.read(CAPABILITIES_POINTER, 1) & ~3
    while pointer and len(found) < MAX_CHAIN:
        found.append((pointer, config.read(pointer, 1)))
        pointer = config.read(pointer + 1, 1) & ~3
    return found
