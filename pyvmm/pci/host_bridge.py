"""The PCI host bridge: function 00.0 of bus 0, and the access mechanisms in front of
the bus.

Its IDs are Red Hat's "QEMU PCIe Host bridge", 1b36:0008 (class 06/00, host bridge),
the one QEMU gives its generic ECAM host (`gpex`). Linux has no quirks for it, so it
probes as a plain host bridge; an Intel chipset ID (QEMU's q35 uses 8086:29c0) would
make Linux's chipset quirks poke at registers (MCHBAR, SMRAM, ...) pyvmm does not
have. Like a real host bridge it has no BARs and no interrupt pin.

`PciHost` is what a platform builds: the bus with the bridge on it, a `ConfigIo` for
ports 0xCF8-0xCFF and an `Ecam` for the MMIO window the MCFG table describes:

    host = PciHost()
    port_bus.insert(CONFIG_IO_PORT, CONFIG_IO_LENGTH, host.config_io, "pci-config")
    mmio_bus.insert(ecam_base, host.ecam.size, host.ecam, "pci-ecam")
    host.bus.add(device.function, host.bus.free_slot())
"""

from __future__ import annotations

from pyvmm.pci.bus import PciBus
from pyvmm.pci.config_access import ConfigIo, Ecam
from pyvmm.pci.function import PciFunction, PciIds

REDHAT_VENDOR = 0x1B36
HOST_BRIDGE_DEVICE = 0x0008  # QEMU PCIe Host bridge
CLASS_BRIDGE = 0x06
SUBCLASS_HOST_BRIDGE = 0x00
HOST_BRIDGE_SLOT = 0

HOST_BRIDGE_IDS = PciIds(REDHAT_VENDOR, HOST_BRIDGE_DEVICE, CLASS_BRIDGE, SUBCLASS_HOST_BRIDGE)


def host_bridge_function() -> PciFunction:
    """Function 00.0: the host bridge's own configuration header."""
    return PciFunction(HOST_BRIDGE_IDS)


class PciHost:
    """Bus 0 with its host bridge, reachable through mechanism #1 and ECAM."""

    def __init__(self, ecam_buses: int = 1) -> None:
        self.bus = PciBus()
        self.bridge = host_bridge_function()
        self.bus.add(self.bridge, HOST_BRIDGE_SLOT)
        self.config_io = ConfigIo(self.bus)
        self.ecam = Ecam(self.bus, ecam_buses)
