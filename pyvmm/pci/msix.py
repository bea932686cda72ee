"""MSI-X (PCI Local Bus Specification 3.0 §6.8.2): the capability in configuration
space, and the vector table and Pending Bit Array that live in a BAR.

The capability (§6.8.2.1-6.8.2.5) is 12 bytes: Message Control (table size N-1,
read-only; Function Mask and MSI-X Enable, read/write), then the BAR indicator and
offset of the table and of the PBA (read-only). Each table entry (§6.8.2.6-6.8.2.9)
is 16 bytes: Message Address (bits 1:0 read 0: messages are dword aligned), Message
Upper Address, Message Data, Vector Control (bit 0 Mask, set at reset; the rest
reserved, read 0). The PBA is read-only, one bit per vector.

Accesses: §6.8.2 only defines aligned dword and qword accesses; pyvmm takes any 1, 2,
4 or 8 bytes inside the table or PBA, byte by byte through the entry masks (what a
guest sees for an aligned access is what the spec says; an odd one is still defined).
Anything reaching past the end reads all ones and is dropped.

The platform turns vectors into interrupts through an `MsixSink`:

- `vector_changed(index, vector)` whenever an entry's address, data or effective
  mask (its own Mask bit, the Function Mask, or MSI-X being disabled) changes: time
  to update a KVM MSI route;
- `deliver(index, vector)` when a device `signal`s an unmasked vector, and when a
  vector with its pending bit set is unmasked (§6.8.2.9: the function then sends the
  pending message and clears the bit).

Devices signal from their own threads (the I/O thread, block workers) while a vCPU
thread rewrites the table: one lock orders the two, and `signal` goes by the vector
as last reported to the sink, so a vector is only delivered once its route is in
place, and one masked after `signal` looked is pending rather than lost.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Protocol

from pyvmm.pci.capabilities import CapabilityId, CapabilityList
from pyvmm.pci.errors import PciError
from pyvmm.pci.registers import BAR_COUNT
from pyvmm.pci.state import MsixState
from pyvmm.snapshot.checks import check_bool, check_bytes, check_type, fail

MAX_VECTORS = 2048  # an 11-bit Table Size
ENTRY_SIZE = 16
ENTRY_ADDRESS = 0
ENTRY_UPPER_ADDRESS = 4
ENTRY_DATA = 8
ENTRY_CONTROL = 12
ENTRY_MASKED = 1  # Vector Control bit 0
# Writable bits of one entry, byte by byte: address bits 31:2, the upper address, data,
# and the Mask bit of Vector Control.
ENTRY_WRITABLE = bytes((0xFC, 0xFF, 0xFF, 0xFF)) + b"\xff" * 8 + bytes((ENTRY_MASKED, 0, 0, 0))

CONTROL_OFFSET = 2  # Message Control, from the capability's start
CONTROL_FUNCTION_MASK = 1 << 14
CONTROL_ENABLE = 1 << 15
BIR_MASK = 0b111
TABLE_ALIGNMENT = 8  # the offset field's bits 2:0 are the BIR


@dataclass(frozen=True)
class MsixVector:
    """One vector as the platform routes it: the message, and whether it may be sent."""

    address: int  # 64-bit
    data: int
    masked: bool  # its Mask bit, the Function Mask, or MSI-X disabled


class MsixSink(Protocol):
    """Where the platform hears about vectors (see the module docstring)."""

    def vector_changed(self, index: int, vector: MsixVector) -> None: ...

    def deliver(self, index: int, vector: MsixVector) -> None: ...


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0


class MsixTable:
    """The vector table, the PBA and the two Message Control bits that gate them."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_VECTORS:
            raise PciError(f"an MSI-X table has 1 to {MAX_VECTORS} vectors, not {count}")
        self.count = count
        self.sink: MsixSink | None = None
        self.enabled = False
        self.function_masked = False
        self._entries = bytearray(count * ENTRY_SIZE)
        self._pending = bytearray(self.pba_size)
        self._reported: list[MsixVector | None] = [None] * count
        self._lock = threading.RLock()  # signal() against table and control changes
        self.table = _TableRegion(self)
        self.pba = _PbaRegion(self)
        self.reset()

    @property
    def table_size(self) -> int:
        return self.count * ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        """The PBA in bytes: whole qwords (§6.8.2.7)."""
        return -(-self.count // 64) * 8

    def reset(self) -> None:
        """§6.8.2.9: every vector masked, nothing pending, MSI-X disabled."""
        with self._lock:
            self._entries[:] = bytes(len(self._entries))
            for index in range(self.count):
                self._entries[index * ENTRY_SIZE + ENTRY_CONTROL] = ENTRY_MASKED
            self._pending[:] = bytes(len(self._pending))
            self.enabled = False
            self.function_masked = False
            self._update(range(self.count))

    def vector(self, index: int) -> MsixVector:
        if not 0 <= index < self.count:
            raise PciError(f"MSI-X vector {index} is outside the table of {self.count}")
        address, upper, data, control = struct.unpack_from("<IIII", self._entries, index * ENTRY_SIZE)
        masked = bool(control & ENTRY_MASKED) or self.function_masked or not self.enabled
        return MsixVector(upper << 32 | address, data, masked)

    def pending(self, index: int) -> bool:
        return bool(self._pending[index // 8] >> (index % 8) & 1)

    def _set_pending(self, index: int, value: bool) -> None:
        bit = 1 << (index % 8)
        if value:
            self._pending[index // 8] |= bit
        else:
            self._pending[index // 8] &= ~bit & 0xFF

    def signal(self, index: int) -> bool:
        """A device raises vector `index`: delivered now (True), or left pending because
        it is masked, or dropped because MSI-X is off (False: the device may use INTx)."""
        if not 0 <= index < self.count:
            raise PciError(f"MSI-X vector {index} is outside the table of {self.count}")
        with self._lock:
            if not self.enabled:
                return False
            vector = self._reported[index]
            if vector is None or vector.masked:
                self._set_pending(index, True)
                return False
            if self.sink is not None:
                self.sink.deliver(index, vector)
            return True

    def set_control(self, enabled: bool, function_masked: bool) -> None:
        """The capability's Message Control bits changed."""
        with self._lock:
            if (enabled, function_masked) == (self.enabled, self.function_masked):
                return
            self.enabled, self.function_masked = enabled, function_masked
            self._update(range(self.count))

    def _update(self, indexes: range) -> None:
        """Report vectors whose routing changed; send the pending ones just unmasked."""
        with self._lock:
            for index in indexes:
                vector = self.vector(index)
                if vector == self._reported[index]:
                    continue
                self._reported[index] = vector
                if self.sink is not None:
                    self.sink.vector_changed(index, vector)
                if not vector.masked and self.pending(index):
                    self._set_pending(index, False)
                    if self.sink is not None:
                        self.sink.deliver(index, vector)

    # --- saved state (state.py) ----------------------------------------------------

    def save(self) -> MsixState:
        with self._lock:
            return MsixState(bytes(self._entries), bytes(self._pending), self.enabled, self.function_masked)

    def restore(self, state: object) -> None:
        """Take a saved table, checked first (`StateError`, nothing changed): the
        entries' read-only bits are 0, no pending bit past the last vector, and a
        vector is pending only while it is masked (§6.8.2.9: unmasking sends it). The
        sink then hears of every vector whose routing changed, as after a guest write."""
        name = "msix"
        checked = check_type(name, state, MsixState)
        entries = check_bytes(name, "entries", checked.entries, self.table_size, self.table_size)
        pending = check_bytes(name, "pending", checked.pending, self.pba_size, self.pba_size)
        enabled = check_bool(name, "enabled", checked.enabled)
        function_masked = check_bool(name, "function_masked", checked.function_masked)
        for where, byte in enumerate(entries):
            if byte & ~ENTRY_WRITABLE[where % ENTRY_SIZE]:
                raise fail(
                    name, f"entry {where // ENTRY_SIZE} has read-only bits set at byte {where % ENTRY_SIZE}"
                )
        for index in range(8 * len(pending)):
            if not pending[index // 8] >> (index % 8) & 1:
                continue
            if index >= self.count:
                raise fail(name, f"vector {index} is pending in a table of {self.count}")
            masked = entries[index * ENTRY_SIZE + ENTRY_CONTROL] & ENTRY_MASKED
            if enabled and not function_masked and not masked:
                raise fail(name, f"vector {index} is pending but not masked")
        with self._lock:
            self._entries[:] = entries
            self._pending[:] = pending
            self.enabled, self.function_masked = enabled, function_masked
            self._update(range(self.count))

    # --- guest accesses, through the regions below ---------------------------------

    def _table_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or offset < 0 or offset + size > self.table_size:
            return _ones(size)
        return int.from_bytes(self._entries[offset : offset + size], "little")

    def _table_write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8) or offset < 0 or offset + size > self.table_size:
            return
        for index in range(size):
            where = offset + index
            mask = ENTRY_WRITABLE[where % ENTRY_SIZE]
            byte = (value >> (8 * index)) & 0xFF
            self._entries[where] = self._entries[where] & ~mask | byte & mask
        self._update(range(offset // ENTRY_SIZE, (offset + size - 1) // ENTRY_SIZE + 1))

    def _pba_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or offset < 0 or offset + size > self.pba_size:
            return _ones(size)
        return int.from_bytes(self._pending[offset : offset + size], "little")


class _TableRegion:
    """The table as a BusDevice, offsets from the table's start."""

    def __init__(self, owner: MsixTable) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        return self._owner._table_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._owner._table_write(offset, size, value)


class _PbaRegion:
    """The PBA as a BusDevice: read-only, writes dropped (§6.8.2.7)."""

    def __init__(self, owner: MsixTable) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        return self._owner._pba_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class MsixCapability:
    """The MSI-X capability of one function, wired to its `MsixTable`."""

    def __init__(
        self,
        capabilities: CapabilityList,
        table: MsixTable,
        *,
        table_bar: int,
        table_offset: int,
        pba_bar: int,
        pba_offset: int,
    ) -> None:
        for bar, offset, what in ((table_bar, table_offset, "table"), (pba_bar, pba_offset, "PBA")):
            if not 0 <= bar < BAR_COUNT or offset % TABLE_ALIGNMENT or not 0 <= offset < 1 << 32:
                raise PciError(f"MSI-X {what} at BAR {bar} offset {offset:#x}: needs BAR 0-5, 8-byte aligned")
        self.table = table
        self.table_bar, self.table_offset = table_bar, table_offset
        self.pba_bar, self.pba_offset = pba_bar, pba_offset
        body = struct.pack("<HII", table.count - 1, table_offset | table_bar, pba_offset | pba_bar)
        writable = struct.pack("<HII", CONTROL_ENABLE | CONTROL_FUNCTION_MASK, 0, 0)
        self.offset = capabilities.add(CapabilityId.MSIX, body, writable)
        self._config = capabilities.config
        self._config.watch(self.offset + CONTROL_OFFSET, 2, self._control_written)

    def _control_written(self) -> None:
        control = self._config.get(self.offset + CONTROL_OFFSET, 2)
        self.table.set_control(bool(control & CONTROL_ENABLE), bool(control & CONTROL_FUNCTION_MASK))
