"""QEMU's test devices as `--device` builds them (`MachineConfig.test_devices`), so test
suites written against QEMU (kvm-unit-tests) run under pyvmm unchanged:

    pci-testdev   a function on the PCI bus (`pyvmm.devices.pci_testdev`), BARs placed
                  by the PCI platform like every other function's
    pc-testdev    its ISA ports and its 64 KiB "iomem" at 0xFF000000
                  (`pyvmm.devices.pc_testdev`); its IRQ lines are the ISA/IOAPIC
                  inputs 0-23

The flush-page port is recorded (`PcTestdev.last_flushed`) but does not make KVM drop
its mapping of the page: QEMU does that by mprotect()ing the page away and back,
which in pyvmm would race with device threads touching guest RAM (a host fault), so
pyvmm leaves the page mapped.

Both reset, save and restore what a guest sees of them (`pyvmm.devices.testdev_state`):
pc-testdev its scratch register, iomem and IRQ line levels; pci-testdev its PCI
function (configuration space, so its BARs) and the selected test with its count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyvmm.devices.device import Device, PlacedDevice, mmio, ports
from pyvmm.devices.pc_testdev import PcTestdev
from pyvmm.devices.pci_testdev import PciTestdev
from pyvmm.errors import ConfigError
from pyvmm.outcome import InterruptLine
from pyvmm.platform.pci import PciPlatform


def pc_testdev(line: Callable[[int], InterruptLine]) -> PlacedDevice:
    device = PcTestdev(irq_line=line)
    regions = tuple(
        (ports if region.io else mmio)(region.base, region.length, region.device, region.name)
        for region in device.regions()
    )
    return PlacedDevice("pc-testdev", device, regions)


def pci_testdev(pci: PciPlatform | None) -> PlacedDevice:
    if pci is None:
        raise ConfigError("--device pci-testdev needs PCI, which --transport mmio leaves out")
    device = PciTestdev()
    pci.add_function(device.function, name="pci-testdev")
    return PlacedDevice("pci-testdev", device, ())


def build_test_devices(
    names: Sequence[str], pci: PciPlatform | None, line: Callable[[int], InterruptLine]
) -> list[Device]:
    """The devices `names` asks for, in that order."""
    built: list[Device] = []
    for name in names:
        built.append(pc_testdev(line) if name == "pc-testdev" else pci_testdev(pci))
    return built
