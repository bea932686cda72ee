"""One function's configuration space as the guest sees it: 256 bytes of conventional
space and 3840 of PCI Express extended space, with a write mask per bit (PCI Local
Bus Specification 3.0 §6.1-6.2).

Every byte has three things: its value, the bits a guest may write (`writable`) and
the bits a guest clears by writing 1 (RW1C, e.g. the Status register's error bits).
Everything else is read-only to the guest. Device code sets values with `set` (no
mask) and the guest goes through `read` / `write`.

Accesses a guest may make, and what they do (a hostile guest gets defined behaviour):

- 1, 2 or 4 bytes at any offset whose bytes lie in one aligned dword: a configuration
  transaction carries one dword address and byte enables (§3.2.2.3.2), so anything
  inside a dword is expressible, however unaligned. Reads return the bytes,
  little-endian; writes go through the masks.
- Anything else (crossing a dword boundary, other sizes, outside the space): reads
  return all ones, writes are dropped. Mechanism #1 cannot produce such an access at
  all; ECAM can, and PCIe base §7.2.2 leaves it undefined, so pyvmm defines it as the
  master abort it would be on a bus (§6.1: a master abort reads all ones).

A saved state is the bytes (`snapshot`); `restore` takes an image back only if its
read-only bits are this function's (bits the device itself drives are named with
`set_device_owned`), then tells every watcher, as a reset does.

Devices react to guest writes through `watch`: a callback after any write that
touches a range and changes a bit of it (BARs, Command, MSI-X Message Control), or,
with `always`, after every write that touches it (a BAR written again with the value
it holds: the platform tries again a range it refused). A range can instead be
`intercept`ed, handing reads and writes to a handler (e.g. virtio's PCI configuration
access capability window, virtio 1.2 §4.1.4.9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyvmm.pci.errors import PciError
from pyvmm.pci.registers import EXTENDED_CONFIG_SPACE_SIZE

Watcher = Callable[[], None]


class ConfigHandler(Protocol):
    """What an intercepted range needs: the BusDevice shape, offsets relative to it."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True)
class _Range:
    start: int
    end: int  # exclusive

    def overlaps(self, offset: int, size: int) -> bool:
        return offset < self.end and self.start < offset + size


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0


class ConfigSpace:
    """Values, write masks and RW1C masks of one function's configuration space."""

    def __init__(self, size: int = EXTENDED_CONFIG_SPACE_SIZE) -> None:
        self.size = size
        self._data = bytearray(size)
        self._writable = bytearray(size)
        self._w1c = bytearray(size)
        self._device_owned = bytearray(size)  # read-only bits the device changes (INTx status)
        self._watches: list[tuple[_Range, Watcher, bool]] = []  # (range, watcher, always)
        self._intercepts: list[tuple[_Range, ConfigHandler]] = []

    # --- the device's side: no masks -----------------------------------------------

    def _check(self, offset: int, size: int) -> None:
        if size < 1 or offset < 0 or offset + size > self.size:
            raise PciError(f"configuration register {offset:#x}+{size} is outside the {self.size:#x} bytes")

    def get(self, offset: int, size: int) -> int:
        """The current value of `size` bytes at `offset` (little-endian)."""
        self._check(offset, size)
        return int.from_bytes(self._data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        """Set a register's value, whatever its masks (device-side initialisation and state)."""
        self._check(offset, size)
        self._data[offset : offset + size] = (value & _ones(size)).to_bytes(size, "little")

    def set_writable(self, offset: int, size: int, mask: int) -> None:
        """The bits of a register the guest may write."""
        self._check(offset, size)
        self._writable[offset : offset + size] = (mask & _ones(size)).to_bytes(size, "little")

    def set_w1c(self, offset: int, size: int, mask: int) -> None:
        """The bits of a register the guest clears by writing 1 (RW1C)."""
        self._check(offset, size)
        self._w1c[offset : offset + size] = (mask & _ones(size)).to_bytes(size, "little")

    def set_device_owned(self, offset: int, size: int, mask: int) -> None:
        """Read-only bits the device itself changes while it runs (Status' Interrupt
        Status): a saved image may differ from the current one there."""
        self._check(offset, size)
        self._device_owned[offset : offset + size] = (mask & _ones(size)).to_bytes(size, "little")

    def writable(self, offset: int, size: int) -> int:
        self._check(offset, size)
        return int.from_bytes(self._writable[offset : offset + size], "little")

    def watch(self, offset: int, size: int, watcher: Watcher, *, always: bool = False) -> None:
        """Call `watcher()` after every guest write that changes a bit of [offset,
        offset + size); with `always`, after every write that touches it, changed or not."""
        self._check(offset, size)
        self._watches.append((_Range(offset, offset + size), watcher, always))

    def intercept(self, offset: int, size: int, handler: ConfigHandler) -> None:
        """Send guest accesses to [offset, offset + size) to `handler` instead of the
        stored bytes. Whole dwords only, so that a valid access (which never crosses a
        dword) is either wholly inside an intercepted range or wholly outside."""
        self._check(offset, size)
        if offset % 4 or size % 4:
            raise PciError(f"an intercepted configuration range must be whole dwords, not {offset:#x}+{size}")
        if any(existing.overlaps(offset, size) for existing, _ in self._intercepts):
            raise PciError(f"configuration range {offset:#x}+{size} is already intercepted")
        self._intercepts.append((_Range(offset, offset + size), handler))

    def clear_guest_bits(self) -> None:
        """Reset: every guest-writable or RW1C bit back to 0, then tell the watchers."""
        for index, mask in enumerate(self._writable):
            if mask or self._w1c[index]:
                self._data[index] &= ~(mask | self._w1c[index]) & 0xFF
        for _, watcher, _always in self._watches:
            watcher()

    def snapshot(self) -> bytes:
        """Every byte's current value, for a saved state."""
        return bytes(self._data)

    def mismatch(self, image: bytes) -> str | None:
        """Why `image` (a `snapshot`) cannot be this space's, or None: its length, or a
        read-only bit the guest could not have changed and the device did not."""
        if len(image) != self.size:
            return f"{len(image)} bytes of configuration space, not {self.size}"
        # All bytes at once, as integers: a byte-by-byte loop cost a restore 2 ms a function.
        changeable = (
            int.from_bytes(self._writable, "little")
            | int.from_bytes(self._w1c, "little")
            | int.from_bytes(self._device_owned, "little")
        )
        differing = (int.from_bytes(self._data, "little") ^ int.from_bytes(image, "little")) & ~changeable
        if not differing:
            return None
        index = ((differing & -differing).bit_length() - 1) // 8  # the first byte that differs
        fixed = ~(self._writable[index] | self._w1c[index] | self._device_owned[index]) & 0xFF
        saved, current = image[index] & fixed, self._data[index] & fixed
        return f"read-only bits of byte {index:#x} are {saved:#04x}, not {current:#04x}"

    def restore(self, image: bytes) -> None:
        """Take a saved image (`mismatch` must find nothing), then tell every watcher,
        so BARs, INTx and MSI-X follow it as they follow a guest's writes."""
        problem = self.mismatch(image)
        if problem is not None:
            raise PciError(problem)
        self._data[:] = image
        for _, watcher, _always in self._watches:
            watcher()

    # --- the guest's side ----------------------------------------------------------

    def valid(self, offset: int, size: int) -> bool:
        """Whether a guest access reaches the registers (see the module docstring)."""
        return size in (1, 2, 4) and offset >= 0 and offset + size <= self.size and (offset & 3) + size <= 4

    def _handler(self, offset: int, size: int) -> tuple[_Range, ConfigHandler] | None:
        for entry in self._intercepts:
            if entry[0].overlaps(offset, size):
                return entry
        return None

    def read(self, offset: int, size: int) -> int:
        """A guest read: the bytes, or all ones for an access that reaches nothing."""
        if not self.valid(offset, size):
            return _ones(size)
        if self._intercepts:
            found = self._handler(offset, size)
            if found is not None:
                return found[1].read(offset - found[0].start, size) & _ones(size)
        return int.from_bytes(self._data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write through the masks; watchers of the touched bytes run after it."""
        if not self.valid(offset, size):
            return
        if self._intercepts:
            found = self._handler(offset, size)
            if found is not None:
                found[1].write(offset - found[0].start, size, value & _ones(size))
                return
        changed = False
        for index in range(size):
            byte = (value >> (8 * index)) & 0xFF
            where = offset + index
            old = self._data[where]
            mask = self._writable[where]
            new = (old & ~mask | byte & mask) & ~(byte & self._w1c[where])
            if new != old:
                self._data[where] = new
                changed = True
        # Watchers recompute from the stored bytes: an unchanged write is news only to
        # those that asked for every write.
        for watched, watcher, always in self._watches:
            if (changed or always) and watched.overlaps(offset, size):
                watcher()
