"""MSI-X (PCI Local Bus Specification 3.0 §6.8.2): the capability's control bits, the
table's masks, the PBA, and what the platform hears."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.pci.bar import BarKind, BarSpec
from pyvmm.pci.capabilities import walk
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.msix import MsixCapability, MsixTable, MsixVector
from pyvmm.pci.regions import BarRegions

IDS = PciIds(0x1AF4, 0x1041, 0x02, 0x00)
ENABLE, FUNCTION_MASK = 1 << 15, 1 << 14


class Sink:
    def __init__(self) -> None:
        self.changed: list[tuple[int, MsixVector]] = []
        self.delivered: list[tuple[int, MsixVector]] = []

    def vector_changed(self, index: int, vector: MsixVector) -> None:
        self.changed.append((index, vector))

    def deliver(self, index: int, vector: MsixVector) -> None:
        self.delivered.append((index, vector))


@pytest.fixture
def setup() -> tuple[PciFunction, MsixCapability, BarRegions, Sink]:
    device = PciFunction(IDS, bars={0: BarSpec(BarKind.MEMORY32, 0x1000)})
    table = MsixTable(3)
    sink = Sink()
    table.sink = sink
    capability = MsixCapability(
        device.capabilities, table, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800
    )
    regions = BarRegions(0x1000)
    regions.add(0, table.table_size, table.table)
    regions.add(0x800, table.pba_size, table.pba)
    return device, capability, regions, sink


def test_capability_registers(setup: tuple[PciFunction, MsixCapability, BarRegions, Sink]) -> None:
    device, capability, _, _ = setup
    offset = capability.offset
    assert walk(device.config) == [(offset, 0x11)]
    assert device.config_read(offset + 2, 2) == 2  # table size N - 1
    assert device.config_read(offset + 4, 4) == 0  # BIR 0, offset 0
    assert device.config_read(offset + 8, 4) == 0x800
    device.config_write(offset + 2, 2, 0xFFFF)  # only enable and function mask stick
    assert device.config_read(offset + 2, 2) == ENABLE | FUNCTION_MASK | 2
    device.config_write(offset + 4, 4, 0xFFFF_FFFF)
    assert device.config_read(offset + 4, 4) == 0


def test_entries_reset_masked_and_keep_reserved_bits_zero(
    setup: tuple[PciFunction, MsixCapability, BarRegions, Sink],
) -> None:
    _, _, regions, _ = setup
    assert [regions.read(16 * i + 12, 4) for i in range(3)] == [1, 1, 1]
    regions.write(16, 8, 0xFFFF_FFFF_FFFF_FFFF)
    regions.write(24, 8, 0xFFFF_FFFF_FFFF_FFFF)
    assert regions.read(16, 4) == 0xFFFF_FFFC  # address bits 1:0 read 0
    assert regions.read(20, 4) == 0xFFFF_FFFF
    assert regions.read(24, 4) == 0xFFFF_FFFF
    assert regions.read(28, 4) == 1  # only the mask bit
    assert regions.read(3 * 16, 4) == 0xFFFF_FFFF  # past the table: nothing there


def test_pba_is_read_only(setup: tuple[PciFunction, MsixCapability, BarRegions, Sink]) -> None:
    _, _, regions, _ = setup
    regions.write(0x800, 8, 0xFF)
    assert regions.read(0x800, 8) == 0


def program(regions: BarRegions, index: int, address: int, data: int) -> None:
    regions.write(16 * index, 8, address)
    regions.write(16 * index + 8, 4, data)


def test_unmasking_an_enabled_vector_is_reported(
    setup: tuple[PciFunction, MsixCapability, BarRegions, Sink],
) -> None:
    device, capability, regions, sink = setup
    program(regions, 1, 0xFEE0_0000, 0x4041)
    device.config_write(capability.offset + 2, 2, ENABLE)
    sink.changed.clear()
    regions.write(16 + 12, 4, 0)
    assert sink.changed == [(1, MsixVector(0xFEE0_0000, 0x4041, masked=False))]


def test_a_masked_vector_pends_and_is_sent_on_unmask(
    setup: tuple[PciFunction, MsixCapability, BarRegions, Sink],
) -> None:
    device, capability, regions, sink = setup
    table = capability.table
    assert not table.signal(0)  # MSI-X off: nothing pends, the device uses INTx
    assert regions.read(0x800, 8) == 0
    program(regions, 2, 0xFEE0_1000, 0x31)
    device.config_write(capability.offset + 2, 2, ENABLE)
    assert not table.signal(2)  # masked in its entry
    assert regions.read(0x800, 8) == 0b100
    assert sink.delivered == []
    regions.write(2 * 16 + 12, 4, 0)
    assert sink.delivered == [(2, MsixVector(0xFEE0_1000, 0x31, masked=False))]
    assert regions.read(0x800, 8) == 0
    assert table.signal(2)
    assert len(sink.delivered) == 2


def test_function_mask_holds_every_vector(
    setup: tuple[PciFunction, MsixCapability, BarRegions, Sink],
) -> None:
    device, capability, regions, sink = setup
    table = capability.table
    regions.write(12, 4, 0)
    device.config_write(capability.offset + 2, 2, ENABLE | FUNCTION_MASK)
    assert table.vector(0).masked
    assert not table.signal(0)
    assert table.pending(0)
    device.config_write(capability.offset + 2, 2, ENABLE)
    assert [index for index, _ in sink.delivered] == [0]
    assert not table.pending(0)


def test_reset_masks_again(setup: tuple[PciFunction, MsixCapability, BarRegions, Sink]) -> None:
    device, capability, regions, _ = setup
    device.on_reset(capability.table.reset)
    device.config_write(capability.offset + 2, 2, ENABLE)
    regions.write(12, 4, 0)
    device.reset()
    assert device.config_read(capability.offset + 2, 2) == 2
    assert regions.read(12, 4) == 1
    assert not capability.table.enabled


@pytest.mark.parametrize("count", [0, 2049])
def test_table_sizes(count: int) -> None:
    with pytest.raises(PciError):
        MsixTable(count)


def test_pba_rounds_up_to_qwords() -> None:
    assert MsixTable(1).pba_size == 8
    assert MsixTable(65).pba_size == 16


def test_misaligned_table_offset_is_refused() -> None:
    device = PciFunction(IDS, bars={0: BarSpec(BarKind.MEMORY32, 0x1000)})
    with pytest.raises(PciError):
        MsixCapability(
            device.capabilities, MsixTable(1), table_bar=0, table_offset=4, pba_bar=0, pba_offset=0
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0x900), st.sampled_from([1, 2, 3, 4, 8]), st.integers(0, 2**64 - 1), st.booleans()
        )
    )
)
def test_any_table_access_is_defined(ops: list[tuple[int, int, int, bool]]) -> None:
    table = MsixTable(5)
    sink = Sink()
    table.sink = sink
    table.set_control(True, False)
    for offset, size, value, write in ops:
        region, start = (table.pba, 0x800) if offset >= 0x800 else (table.table, 0)
        if write:
            region.write(offset - start, size, value)
        else:
            assert 0 <= region.read(offset - start, size) < 1 << (8 * size)
        table.signal(offset % 5)
    for index in range(5):
        control = table.table.read(16 * index + 12, 4)
        assert control in (0, 1)  # reserved bits stay 0
        assert table.table.read(16 * index, 4) & 3 == 0
        assert not (table.pending(index) and not table.vector(index).masked)  # unmasked never pends
