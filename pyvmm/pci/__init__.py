"""PCI for pyvmm guests: configuration space, BARs, capabilities, bus 0 and its host
bridge (PCI Local Bus Specification 3.0; PCIe base §7.2.2 for ECAM).

| module | job |
| --- | --- |
| `registers` | header offsets and bits, named once |
| `config_space` | 4 KiB of registers with per-bit write and RW1C masks; guest accesses never raise |
| `bar` | BAR sizing and placement; `on_bar_change(index, old, new)` tells the platform |
| `capabilities` | the capability chain; vendor-specific capabilities (virtio) |
| `msix` | the MSI-X capability, vector table and PBA; `MsixSink` tells the platform |
| `regions` | sub-ranges behind one BAR (registers, MSI-X table, PBA) |
| `function` | one function: IDs, Command/Status, INTx, BAR handlers, reset |
| `bus` | bus 0: 32 slots x 8 functions, absent ones read all ones |
| `config_access` | mechanism #1 (ports 0xCF8-0xCFF) and ECAM, over one bus |
| `host_bridge` | function 00.0 and `PciHost`, what a platform builds |

The ACPI side (MCFG, the ``\\_SB.PCI0`` host bridge with _CRS and _PRT) is in
`pyvmm.arch.x86.acpi.mcfg` and `pyvmm.arch.x86.acpi.pci_host`.
"""

from pyvmm.pci.bar import BarChange, BarKind, BarRange, BarSpec, Space
from pyvmm.pci.bus import PciBus
from pyvmm.pci.config_access import CONFIG_IO_LENGTH, CONFIG_IO_PORT, ConfigIo, Ecam
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.host_bridge import PciHost
from pyvmm.pci.msix import MsixCapability, MsixSink, MsixTable, MsixVector
from pyvmm.pci.regions import BarRegions
from pyvmm.pci.registers import InterruptPin

__all__ = [
    "CONFIG_IO_LENGTH",
    "CONFIG_IO_PORT",
    "BarChange",
    "BarKind",
    "BarRange",
    "BarRegions",
    "BarSpec",
    "ConfigIo",
    "Ecam",
    "InterruptPin",
    "MsixCapability",
    "MsixSink",
    "MsixTable",
    "MsixVector",
    "PciBus",
    "PciError",
    "PciFunction",
    "PciHost",
    "PciIds",
    "Space",
]
