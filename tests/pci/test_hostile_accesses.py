"""Property: whatever configuration accesses a guest makes, through either mechanism,
nothing raises and the read-only parts of every function stay as they were."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.bus import MmioBus, PortBus
from pyvmm.pci.bar import BarKind, BarRange, BarSpec
from pyvmm.pci.capabilities import walk
from pyvmm.pci.config_access import CONFIG_IO_LENGTH, CONFIG_IO_PORT
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.host_bridge import PciHost
from pyvmm.pci.msix import MsixCapability, MsixTable
from pyvmm.pci.registers import InterruptPin

ECAM_BASE = 0xB000_0000
BARS = {
    0: BarSpec(BarKind.MEMORY32, 0x1000),
    1: BarSpec(BarKind.IO, 0x40),
    2: BarSpec(BarKind.MEMORY64, 0x4000, prefetchable=True),
}

# (where, offset, size, value): 0 = port, 1 = ECAM window, 2 = CF8 aimed at slot 1.
accesses = st.lists(
    st.tuples(
        st.integers(0, 2),
        # Mostly slot 1's header (ECAM offset 0x8000), sometimes anywhere.
        st.one_of(st.integers(0x8000, 0x8040), st.integers(0x8000, 0x9000), st.integers(0, (2 << 20) + 0x10)),
        st.sampled_from([1, 2, 4, 8]),
        st.integers(0, (1 << 64) - 1),
        st.booleans(),  # write?
    ),
    max_size=80,
)


def build() -> tuple[PciHost, PortBus, MmioBus, PciFunction, dict[int, BarRange | None]]:
    host = PciHost()
    ports, mmio = PortBus(), MmioBus()
    ports.insert(CONFIG_IO_PORT, CONFIG_IO_LENGTH, host.config_io, "pci-config")
    mmio.insert(ECAM_BASE, host.ecam.size, host.ecam, "pci-ecam")
    device = PciFunction(PciIds(0x1AF4, 0x1041, 0x02, 0x00), bars=BARS, interrupt_pin=InterruptPin.INTA)
    device.capabilities.add_vendor(bytes(13), writable=bytes(12) + b"\xff")
    MsixCapability(
        device.capabilities, MsixTable(4), table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800
    )
    host.bus.add(device, 1)
    decoded: dict[int, BarRange | None] = dict.fromkeys(BARS)

    def on_change(index: int, old: BarRange | None, new: BarRange | None) -> None:
        # Reports chain: what is taken off is what was last put on.
        assert old == decoded[index] and old != new
        decoded[index] = new

    device.bars.on_bar_change = on_change
    return host, ports, mmio, device, decoded


@settings(max_examples=300, deadline=None)
@given(accesses)
def test_config_accesses_never_raise_or_break_invariants(ops: list[tuple[int, int, int, int, bool]]) -> None:
    host, ports, mmio, device, decoded = build()
    header = {offset: device.config.get(offset, 4) for offset in (0x00, 0x08, 0x2C)}
    chain = walk(device.config)
    for where, offset, size, value, write in ops:
        if where == 2:
            ports.write(0xCF8, 4, 0x8000_0800 | offset & 0xFC)  # slot 1, that register
            where, offset = 0, 4 + offset % 4
        if where == 0:
            address = CONFIG_IO_PORT + offset % 8
            bus: PortBus | MmioBus = ports
            size = min(size, 4)
        else:
            address, bus = ECAM_BASE + offset, mmio
        if write:
            bus.write(address, size, value)
        else:
            assert 0 <= bus.read(address, size) < 1 << (8 * size)
    assert {offset: device.config.get(offset, 4) for offset in header} == header
    assert host.bridge.config.get(0, 4) == 0x0008_1B36
    assert walk(device.config) == chain
    for index, spec in BARS.items():
        type_mask = 0x3 if spec.kind is BarKind.IO else 0xF
        assert device.config.get(0x10 + 4 * index, 4) & type_mask == spec.type_bits
        assert device.bars.address(index) % spec.size == 0
        if spec.kind is BarKind.IO:
            assert device.config.get(0x10 + 4 * index, 4) >> 16 == 0  # 16-bit I/O decode
        assert decoded[index] == device.bars.decoded(index)
