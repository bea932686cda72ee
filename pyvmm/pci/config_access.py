"""The two ways software reaches configuration space, both over one `PciBus`.

Configuration mechanism #1 (PCI Local Bus Specification 3.0 §3.2.2.3.2) on ports
0xCF8-0xCFF, one `ConfigIo` BusDevice of 8 ports:

    0xCF8  CONFIG_ADDRESS, 32 bits: bit 31 enable, 23:16 bus, 15:11 device,
           10:8 function, 7:2 register dword; 30:24 and 1:0 reserved, read 0.
           Only a 32-bit access at 0xCF8 reaches it; any other access to 0xCF8-0xCFB
           is "a normal I/O access" (§3.2.2.3.2) that nothing here claims: reads all
           ones, writes dropped (on a PC, 0xCF9 may be a reset register: a platform
           that wants one puts it in front of this device).
    0xCFC  CONFIG_DATA: 1, 2 or 4 bytes at 0xCFC-0xCFF reach the bytes at that offset
           of the addressed dword. With the enable bit clear, reads are all ones and
           writes dropped.

The Enhanced Configuration Access Mechanism (PCIe base §7.2.2; PCI Firmware
Specification 3.2 §4.1 describes it to the OS through the MCFG table), one `Ecam`
BusDevice on the MMIO bus: 1 MiB per bus, the offset is
bus << 20 | device << 15 | function << 12 | register, which reaches all 4 KiB of a
function's space. Accesses larger than 4 bytes, or crossing a dword, read all ones
and are dropped (§7.2.2 leaves them undefined; see `config_space`).
"""

from __future__ import annotations

from pyvmm.bus import all_ones
from pyvmm.pci.bus import PciBus
from pyvmm.pci.errors import PciError

CONFIG_IO_PORT = 0xCF8
CONFIG_IO_LENGTH = 8
CONFIG_DATA_OFFSET = 4  # 0xCFC
CONFIG_ADDRESS_ENABLE = 1 << 31
# bus, device, function, register dword: the bits CONFIG_ADDRESS keeps.
CONFIG_ADDRESS_MASK = CONFIG_ADDRESS_ENABLE | 0x00FF_FFFC

ECAM_BUS_SIZE = 1 << 20
ECAM_MAX_BUSES = 256


def _split(address: int) -> tuple[int, int, int, int]:
    """(bus, device, function, register) of a CONFIG_ADDRESS value or ECAM offset."""
    return address >> 20 & 0xFF, address >> 15 & 0x1F, address >> 12 & 0x7, address & 0xFFF


class ConfigIo:
    """Ports 0xCF8-0xCFF: configuration mechanism #1."""

    def __init__(self, bus: PciBus) -> None:
        self._bus = bus
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        if offset >= CONFIG_DATA_OFFSET and self.address & CONFIG_ADDRESS_ENABLE:
            byte = offset - CONFIG_DATA_OFFSET
            if byte + size <= 4:
                bus, device, function, register = self._target(byte)
                return self._bus.config_read(bus, device, function, register, size)
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & CONFIG_ADDRESS_MASK
            return
        if offset >= CONFIG_DATA_OFFSET and self.address & CONFIG_ADDRESS_ENABLE:
            byte = offset - CONFIG_DATA_OFFSET
            if byte + size <= 4:
                bus, device, function, register = self._target(byte)
                self._bus.config_write(bus, device, function, register, size, value & all_ones(size))

    def _target(self, byte: int) -> tuple[int, int, int, int]:
        # CONFIG_ADDRESS bits 23:8 sit where ECAM has them, 8 bits lower.
        bus, device, function, _ = _split(self.address << 4 & 0xFFF_F000)
        return bus, device, function, (self.address & 0xFC) + byte


class Ecam:
    """An ECAM window of `buses` buses (1 MiB each), starting at bus `start_bus`."""

    def __init__(self, bus: PciBus, buses: int = 1, start_bus: int = 0) -> None:
        if not 1 <= buses <= ECAM_MAX_BUSES or not 0 <= start_bus < ECAM_MAX_BUSES - buses + 1:
            raise PciError(f"an ECAM window covers 1-256 buses from 0-255, not {buses} from {start_bus}")
        self._bus = bus
        self.buses = buses
        self.start_bus = start_bus

    @property
    def size(self) -> int:
        return self.buses * ECAM_BUS_SIZE

    def read(self, offset: int, size: int) -> int:
        if size > 4 or not 0 <= offset < self.size:
            return all_ones(size)
        bus, device, function, register = _split(offset)
        return self._bus.config_read(self.start_bus + bus, device, function, register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size > 4 or not 0 <= offset < self.size:
            return
        bus, device, function, register = _split(offset)
        self._bus.config_write(self.start_bus + bus, device, function, register, size, value & all_ones(size))
