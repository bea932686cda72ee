"""QEMU's `pci-testdev` (hw/misc/pci-testdev.c), the PCI device kvm-unit-tests'
`pci_testdev()` (lib/pci-testdev.c; arm/pci-test.c and other ports run it) drives to
check that writes to a PCI BAR reach the VMM, in memory and in I/O space.

Identity: Red Hat 1b36:0005, class ff/00 ("other"), revision 0, no interrupt pin.
BAR 0: 4 KiB of 32-bit MMIO; BAR 1: 256 I/O ports. Both show the header of the
test selected last (all offsets in bytes, little-endian):

    0   test    write n to select test n of this BAR's kind (n >= 3: none);
                reads back the test's global number (0-2 MMIO, 3-5 I/O)
    1   width   1: tests write single bytes
    4   offset  where the test's writes go: 2048 + n (MMIO), 128 + n (I/O)
    8   data    the byte to write: 0xFA (a "datamatch" value) or 0xCE
    12  count   the writes counted since the test was selected
    16  name    NUL-terminated: mmio-no-eventfd, mmio-wildcard-eventfd,
                mmio-datamatch-eventfd, portio-... (the same three)

A write to the test's offset counts if the test takes any value (wildcard) or if it
is the data byte (no-eventfd, datamatch). In QEMU the two "eventfd" tests bind a KVM
ioeventfd to the offset, so their writes never reach QEMU and the count stays 0;
kvm-unit-tests accepts a count of 0 or of every write. pyvmm has no ioeventfds here
and counts every matching write, which is QEMU's no-eventfd behaviour for all six.

QEMU splits every access into single bytes (impl.max_access_size = 1): a wider
write is a write of each of its bytes at consecutive offsets, and so is a read; the
test register takes only a write's first byte. Reads with no test selected, or at or
past the header's last byte (the name's NUL), return 0. The `membar` option (a
64-bit prefetchable BAR 2 with nothing behind it) is not implemented.

Saved state (`PciTestdevState`): the function's configuration space (BARs, Command;
`PciFunction.save`), the test selected last and its count. A selection clears the
count, so the other tests' counts are never seen again and are not saved.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.devices.testdev_state import PciTestdevState
from pyvmm.pci.bar import BarKind, BarSpec
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.snapshot.checks import check_int, check_type

REDHAT_VENDOR = 0x1B36
PCI_TESTDEV_DEVICE = 0x0005
CLASS_OTHER = 0xFF
PCI_TESTDEV_IDS = PciIds(REDHAT_VENDOR, PCI_TESTDEV_DEVICE, CLASS_OTHER, 0x00)

MMIO_BAR = 0
IO_BAR = 1
MMIO_SIZE = 2048  # IOTEST_MEMSIZE: the tests' offsets start here; the BAR is twice this
IO_SIZE = 128  # IOTEST_IOSIZE
MMIO_BAR_SIZE = 2 * MMIO_SIZE
IO_BAR_SIZE = 2 * IO_SIZE

TEST_REGISTER = 0
DATAMATCH = 0xFA
NOMATCH = 0xCE
WIDTH = 1
HEADER = struct.Struct("<BB2xIB3xI")  # test, width, offset, data, count; the name follows

TESTS_PER_KIND = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
KINDS = ("mmio", "portio")


@dataclass
class _Test:
    number: int  # 0-5
    name: str
    offset: int
    match_data: bool
    count: int = 0

    @property
    def data(self) -> int:
        return DATAMATCH if self.match_data else NOMATCH

    def header(self) -> bytes:
        fields = HEADER.pack(self.number, WIDTH, self.offset, self.data, self.count & 0xFFFF_FFFF)
        return fields + self.name.encode("ascii") + b"\0"


def _tests() -> list[_Test]:
    tests = []
    for kind_index, kind in enumerate(KINDS):
        base = MMIO_SIZE if kind == "mmio" else IO_SIZE
        for test_index, test in enumerate(TESTS_PER_KIND):
            number = kind_index * len(TESTS_PER_KIND) + test_index
            tests.append(_Test(number, f"{kind}-{test}", base + number * WIDTH, test != "wildcard-eventfd"))
    return tests


class PciTestdev:
    """The device: `function` goes on the PCI bus; its BARs answer as above."""

    def __init__(self) -> None:
        self.function = PciFunction(
            PCI_TESTDEV_IDS,
            bars={
                MMIO_BAR: BarSpec(BarKind.MEMORY32, MMIO_BAR_SIZE),
                IO_BAR: BarSpec(BarKind.IO, IO_BAR_SIZE),
            },
        )
        self._tests = _tests()
        self._current: _Test | None = None
        self.function.set_bar_handler(MMIO_BAR, _Window(self, 0))
        self.function.set_bar_handler(IO_BAR, _Window(self, 1))
        self.function.on_reset(self._deselect)

    def _deselect(self) -> None:
        self._current = None

    # --- state ----------------------------------------------------------------------

    def reset(self) -> None:
        """Function-level reset: the header's guest bits (BARs, Command) and the test."""
        self.function.reset()

    def save(self) -> PciTestdevState:
        current = self._current
        if current is None:
            return PciTestdevState(self.function.save(), None, 0)
        return PciTestdevState(self.function.save(), current.number, current.count & 0xFFFF_FFFF)

    def restore(self, state: object) -> None:
        """The test and count are checked before the function restores its space (which
        checks its own part first), so a refusal changes nothing."""
        name = "pci-testdev"
        checked = check_type(name, state, PciTestdevState)
        selected = checked.selected
        if selected is not None:
            selected = check_int(name, "selected", selected, 0, len(self._tests) - 1)
        count = check_int(name, "count", checked.count, 0, 0xFFFF_FFFF if selected is not None else 0)
        self.function.restore(checked.function)
        self._current = None if selected is None else self._tests[selected]
        if self._current is not None:
            self._current.count = count

    def _write_byte(self, kind: int, offset: int, byte: int) -> None:
        if offset == TEST_REGISTER:
            self._current = None
            if byte < len(TESTS_PER_KIND):
                self._current = self._tests[kind * len(TESTS_PER_KIND) + byte]
                self._current.count = 0
            return
        test = self._current
        if test is None or offset != test.offset:
            return
        if test.match_data and byte != test.data:
            return
        test.count += 1

    def _read_byte(self, offset: int) -> int:
        if self._current is None:
            return 0
        header = self._current.header()
        # QEMU's bound is addr + size >= bufsize: the last byte (the NUL) reads 0 too.
        return header[offset] if offset + 1 < len(header) else 0

    def read(self, kind: int, offset: int, size: int) -> int:
        return int.from_bytes(bytes(self._read_byte(offset + index) for index in range(size)), "little")

    def write(self, kind: int, offset: int, size: int, value: int) -> None:
        for index in range(size):
            self._write_byte(kind, offset + index, (value >> (8 * index)) & 0xFF)


class _Window:
    """One BAR's view of the device (kind 0 = MMIO, 1 = I/O)."""

    def __init__(self, device: PciTestdev, kind: int) -> None:
        self._device = device
        self._kind = kind

    def read(self, offset: int, size: int) -> int:
        return self._device.read(self._kind, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._device.write(self._kind, offset, size, value)
