"""The saved state of a PCI function (PCI Local Bus Specification 3.0 §6.1-6.2) and of
its MSI-X table and PBA (§6.8.2), and their checks: a saved state is untrusted input
(`pyvmm.snapshot.checks`).

A function's state is its configuration space as bytes - Command, Status, the BARs,
the capabilities' writable fields, Interrupt Line - and whether its INTx pin is
asserted. Restoring it goes through `ConfigSpace.restore`, which refuses an image
whose read-only bits differ from this function's (another device, another layout),
then tells the same watchers a guest's write does: the BARs move on the buses through
`on_bar_change` exactly as when the guest programs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.snapshot.registry import saved_state


@saved_state("pci-function")
@dataclass(frozen=True)
class PciFunctionState:
    """A `PciFunction`'s state as plain data."""

    config: bytes  # the whole configuration space, 4096 bytes
    intx_asserted: bool  # the device holds its INTx pin (Status' Interrupt Status)


@saved_state("pci-msix")
@dataclass(frozen=True)
class MsixState:
    """An `MsixTable`'s state: the vector table and PBA bytes, and the two Message
    Control bits (also in the function's configuration space, which must agree)."""

    entries: bytes  # 16 bytes per vector (§6.8.2.6-6.8.2.9)
    pending: bytes  # the PBA, whole qwords
    enabled: bool
    function_masked: bool


@saved_state("pci-host")
@dataclass(frozen=True)
class PciHostState:
    """What bus 0's host keeps besides its functions (each saved by its own device):
    CONFIG_ADDRESS of mechanism #1 (§3.2.2.3.2) and the host bridge's function. `slots`
    names what sits on the bus, (slot, vendor ID, device ID) each in slot order: checked
    on restore, not restored, since the restoring machine places its functions from
    its configuration and a guest that enumerated the bus expects them where they were."""

    config_address: int
    bridge: PciFunctionState
    slots: tuple[tuple[int, int, int], ...]
