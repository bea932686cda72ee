"""QEMU's firmware configuration device, x86 I/O port flavour (QEMU docs/specs/fw_cfg.rst).

The guest selects an item by writing its 16-bit key to the selector port, then streams
the item's bytes from the data port, or has the device copy them into RAM with the DMA
interface ("Guest-side DMA Interface"). The ports sit together at 0x510: selector
(0x510, 16-bit), data (0x511, 8-bit), DMA address (0x514, 64-bit big-endian, the
transfer starts on the write of its low half at 0x518). The device takes the whole
window 0x510-0x51b and decodes offsets itself.

Items are read only: data port writes are ignored (as since QEMU 2.4) and DMA writes end
with the error bit. Named files live at keys 0x0020 and up, numbered in name order as
QEMU does, and are listed in the file directory at key 0x0019.

Every guest address goes through the guest memory object; an address outside RAM ends
the transfer with the error bit and never raises to the vCPU loop.
"""

from __future__ import annotations

import enum
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Protocol

from pyvmm.bus import all_ones
from pyvmm.errors import ConfigError, GuestMemoryError
from pyvmm.snapshot.checks import check_int, check_type
from pyvmm.snapshot.registry import saved_state

logger = logging.getLogger(__name__)

FW_CFG_PORT = 0x510
FW_CFG_LENGTH = 0x0C  # selector, data, two unused ports, 8-byte DMA address


class Port(enum.IntEnum):
    """Offsets from FW_CFG_PORT."""

    SELECTOR = 0x0
    DATA = 0x1
    DMA_ADDRESS = 0x4  # most significant half of the DMA address (big-endian)
    DMA_ADDRESS_LOW = 0x8  # least significant half; writing it starts the transfer


class Key(enum.IntEnum):
    """Selector keys of the items this device provides ("Firmware Configuration Items")."""

    SIGNATURE = 0x0000
    ID = 0x0001
    RAM_SIZE = 0x0003
    NB_CPUS = 0x0005
    MAX_CPUS = 0x000F
    FILE_DIR = 0x0019
    FILE_FIRST = 0x0020


class SelectorFlag(enum.IntFlag):
    """Selector bits that are not part of an item's index ("Selector (Control) Register")."""

    WRITE_CHANNEL = 0x4000  # writes through the data port; ignored since QEMU 2.4
    ARCH_LOCAL = 0x8000  # architecture-specific item


class Feature(enum.IntFlag):
    """The FW_CFG_ID item's feature bits."""

    TRADITIONAL = 0x1
    DMA = 0x2


class DmaControl(enum.IntFlag):
    """The control word of an FWCfgDmaAccess; bits 16-31 carry the key for SELECT."""

    ERROR = 0x01
    READ = 0x02
    SKIP = 0x04
    SELECT = 0x08
    WRITE = 0x10


SIGNATURE = b"QEMU"
DMA_SIGNATURE = b"QEMU CFG"  # what reading the DMA address register returns
FILE_NAME_SIZE = 56  # including the terminating NUL
FILE_LIMIT = 0x4000  # file keys stay below the write-channel bit

_DMA_ACCESS = struct.Struct(">IIQ")  # FWCfgDmaAccess: control, length, address
_DMA_CONTROL = struct.Struct(">I")
_FILE_COUNT = struct.Struct(">I")
_FILE_ENTRY = struct.Struct(">IHH56s")  # FWCfgFile: size, select, reserved, name
_ZEROS = bytes(64 * 1024)


class DmaMemory(Protocol):
    """The guest RAM access the DMA interface needs (`pyvmm.memory.GuestMemory` fits).

    Each method raises `GuestMemoryError` when the range is not wholly inside RAM.
    """

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, length: int) -> memoryview: ...


_U64 = (1 << 64) - 1


@saved_state("fw-cfg")
@dataclass(frozen=True)
class FwCfgState:
    """What the guest can change in fw_cfg: the selected item, how far it has read it,
    and the DMA address register (its high half is kept between two 32-bit writes).
    The items and files are the machine's configuration, not state: a restored device
    serves the items its own machine gave it."""

    selector: int  # 16 bits, the write-channel and architecture bits included
    offset: int  # bytes of the item read or skipped so far
    dma_address: int


def check_fw_cfg_state(state: object) -> FwCfgState:
    """`state` as a `FwCfgState` whose fields are in range; else `StateError`."""
    state = check_type("fw_cfg", state, FwCfgState)
    check_int("fw_cfg", "selector", state.selector, 0, 0xFFFF)
    check_int("fw_cfg", "offset", state.offset, 0, _U64)
    check_int("fw_cfg", "dma_address", state.dma_address, 0, _U64)
    return state


def _from_big_endian(value: int, size: int) -> int:
    """The number a guest meant when it wrote a big-endian quantity through a port."""
    return int.from_bytes((value & all_ones(size)).to_bytes(size, "little"), "big")


class FwCfg:
    """The fw_cfg device: selector, data and DMA ports over a table of read-only items."""

    def __init__(self, memory: DmaMemory, ram_size: int, cpus: int, max_cpus: int) -> None:
        if not 0 <= ram_size < 1 << 64 or not 0 < cpus <= max_cpus <= 0xFFFF:
            raise ConfigError(f"fw_cfg cannot describe {ram_size:#x} bytes, {cpus}/{max_cpus} CPUs")
        self._memory = memory
        self._lock = threading.Lock()
        self._items: dict[int, bytes] = {}
        self._files: dict[bytes, bytes] = {}
        self._entries: dict[int, bytes] = {}
        self._selector = 0
        self._offset = 0
        self._dma_address = 0
        self.add_item(Key.SIGNATURE, SIGNATURE)
        self.add_item(Key.ID, (Feature.TRADITIONAL | Feature.DMA).to_bytes(4, "little"))
        self.add_item(Key.RAM_SIZE, ram_size.to_bytes(8, "little"))
        self.add_item(Key.NB_CPUS, cpus.to_bytes(2, "little"))
        self.add_item(Key.MAX_CPUS, max_cpus.to_bytes(2, "little"))

    # --- host side -------------------------------------------------------------------

    def add_item(self, key: int, data: bytes) -> None:
        """Provide (or replace) the item at `key`, outside the file range."""
        if not 0 <= key <= 0xFFFF or key & SelectorFlag.WRITE_CHANNEL:
            raise ConfigError(f"fw_cfg key {key:#x} is not a valid item key")
        if key == Key.FILE_DIR or Key.FILE_FIRST <= key < FILE_LIMIT:
            raise ConfigError(f"fw_cfg key {key:#x} is reserved for files; use add_file")
        with self._lock:
            self._items[key] = bytes(data)
            self._rebuild()

    def add_file(self, name: str, data: bytes) -> None:
        """Provide a named file; files are numbered from 0x0020 in name order."""
        encoded = name.encode()
        if not encoded or len(encoded) >= FILE_NAME_SIZE or b"\0" in encoded:
            raise ConfigError(f"fw_cfg file name {name!r} must be 1-{FILE_NAME_SIZE - 1} bytes")
        if len(data) > 0xFFFF_FFFF:
            raise ConfigError(f"fw_cfg file {name!r} is larger than 4 GiB")
        with self._lock:
            if encoded in self._files:
                raise ConfigError(f"fw_cfg file {name!r} added twice")
            if Key.FILE_FIRST + len(self._files) >= FILE_LIMIT:
                raise ConfigError(f"too many fw_cfg files for {name!r}")
            self._files[encoded] = bytes(data)
            self._rebuild()

    def _rebuild(self) -> None:
        """Number the files by name and regenerate the directory item."""
        entries = dict(self._items)
        directory = [_FILE_COUNT.pack(len(self._files))]
        for index, name in enumerate(sorted(self._files)):
            key = Key.FILE_FIRST + index
            entries[key] = self._files[name]
            directory.append(_FILE_ENTRY.pack(len(self._files[name]), key, 0, name))
        entries[Key.FILE_DIR] = b"".join(directory)
        self._entries = entries

    # --- reset and saved state --------------------------------------------------------

    def reset(self) -> None:
        """Item 0 (the signature) selected from its start, the DMA address cleared."""
        with self._lock:
            self._select(int(Key.SIGNATURE))
            self._dma_address = 0

    def save(self) -> FwCfgState:
        with self._lock:
            # Past an item's end every read gives zeros, so an offset beyond 64 bits (a
            # guest can skip 4 GiB at a time) reads exactly as the largest one does.
            return FwCfgState(self._selector, min(self._offset, _U64), self._dma_address)

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes)."""
        checked = check_fw_cfg_state(state)
        with self._lock:
            self._selector = checked.selector
            self._offset = checked.offset
            self._dma_address = checked.dma_address

    # --- guest side ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == Port.DATA:
                return int.from_bytes(self._read_data(size), "little")
            start = offset - Port.DMA_ADDRESS
            if start >= 0 and start + size <= len(DMA_SIGNATURE):
                return int.from_bytes(DMA_SIGNATURE[start : start + size], "little")
            return all_ones(size)  # the selector is write only; the gap is empty

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if offset == Port.SELECTOR:
                self._select(value & 0xFFFF)
            elif offset == Port.DMA_ADDRESS and size == 4:
                high = _from_big_endian(value, 4)
                self._dma_address = (high << 32) | (self._dma_address & 0xFFFF_FFFF)
            elif offset == Port.DMA_ADDRESS and size == 8:
                self._start_dma(_from_big_endian(value, 8))
            elif offset == Port.DMA_ADDRESS_LOW and size == 4:
                low = _from_big_endian(value, 4)
                self._start_dma((self._dma_address & ~0xFFFF_FFFF) | low)
            else:
                # Data port writes are ignored, as in QEMU since 2.4; so is anything else.
                logger.debug("ignored fw_cfg write of %#x (%d bytes) at +%#x", value, size, offset)

    def _select(self, selector: int) -> None:
        self._selector = selector
        self._offset = 0

    def _current(self) -> bytes:
        # The write-channel bit does not change which item is read.
        return self._entries.get(self._selector & ~int(SelectorFlag.WRITE_CHANNEL), b"")

    def _read_data(self, length: int) -> bytes:
        """The next `length` bytes of the selected item; bytes past its end read as 0."""
        data = self._current()[self._offset : self._offset + length]
        self._offset += length
        return data.ljust(length, b"\0")

    # --- DMA -------------------------------------------------------------------------

    def _start_dma(self, address: int) -> None:
        """Run the FWCfgDmaAccess at `address` and write its resulting control word back."""
        self._dma_address = 0  # the register reads 0 after an operation
        try:
            control, length, target = _DMA_ACCESS.unpack(self._memory.read(address, _DMA_ACCESS.size))
        except GuestMemoryError as exc:
            logger.debug("fw_cfg DMA access structure unreadable: %s", exc)
            return
        status = self._dma_execute(control, length, target)
        try:
            self._memory.write(address, _DMA_CONTROL.pack(status))
        except GuestMemoryError as exc:
            logger.debug("fw_cfg DMA status not written: %s", exc)

    def _dma_execute(self, control: int, length: int, target: int) -> int:
        if control & DmaControl.SELECT:
            self._select(control >> 16)
        if control & DmaControl.READ:
            return self._dma_read(length, target)
        if control & DmaControl.WRITE:
            logger.debug("fw_cfg DMA write to key %#x refused: items are read only", self._selector)
            return DmaControl.ERROR
        if control & DmaControl.SKIP:
            self._offset += length
        return 0

    def _dma_read(self, length: int, target: int) -> int:
        """Copy `length` bytes of the selected item to guest RAM at `target`."""
        try:
            destination = self._memory.view(target, length)
        except GuestMemoryError as exc:
            logger.debug("fw_cfg DMA read refused: %s", exc)
            return DmaControl.ERROR
        with destination:
            data = self._current()[self._offset : self._offset + length]
            destination[: len(data)] = data
            # Past the item's end the guest gets zeros; fill in bounded pieces so a
            # huge guest-supplied length never becomes one huge host allocation.
            for start in range(len(data), length, len(_ZEROS)):
                end = min(start + len(_ZEROS), length)
                destination[start:end] = _ZEROS[: end - start]
        self._offset += length
        return 0
