"""fw_cfg through its ports (QEMU docs/specs/fw_cfg.rst), traditional and DMA interfaces."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from pyvmm.devices import FwCfg
from pyvmm.devices.fw_cfg import DmaControl, Key, Port
from pyvmm.errors import ConfigError
from pyvmm.memory import GuestMemory

RAM = 1 << 20
ACCESS = 0x1000  # where the tests put an FWCfgDmaAccess
BUFFER = 0x2000  # and where they have data copied to


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, RAM)])
    yield ram
    ram.close()


@pytest.fixture
def fw_cfg(memory: GuestMemory) -> FwCfg:
    return FwCfg(memory, ram_size=RAM, cpus=2, max_cpus=4)


def port_value(data: bytes) -> int:
    """The value an `out` instruction carries for these bytes in port order."""
    return int.from_bytes(data, "little")


def be32(value: int) -> int:
    """What a guest writes to put `value` in a big-endian 32-bit port register."""
    return port_value(value.to_bytes(4, "big"))


def select(device: FwCfg, key: int) -> None:
    device.write(Port.SELECTOR, 2, key)


def read_data(device: FwCfg, length: int) -> bytes:
    return bytes(device.read(Port.DATA, 1) for _ in range(length))


def read_item(device: FwCfg, key: int, length: int) -> bytes:
    select(device, key)
    return read_data(device, length)


def dma(device: FwCfg, memory: GuestMemory, control: int, length: int, address: int) -> int:
    """Run one DMA operation with 32-bit writes; returns the control word written back."""
    memory.write(ACCESS, struct.pack(">IIQ", control, length, address))
    device.write(Port.DMA_ADDRESS, 4, be32(0))
    device.write(Port.DMA_ADDRESS_LOW, 4, be32(ACCESS))
    return memory.read_u32(ACCESS)  # little-endian read of a big-endian word: 0 stays 0


def test_signature(fw_cfg: FwCfg) -> None:
    assert read_item(fw_cfg, Key.SIGNATURE, 4) == b"QEMU"


def test_id_has_traditional_and_dma(fw_cfg: FwCfg) -> None:
    assert int.from_bytes(read_item(fw_cfg, Key.ID, 4), "little") == 0b11


def test_ram_and_cpus(fw_cfg: FwCfg) -> None:
    assert int.from_bytes(read_item(fw_cfg, Key.RAM_SIZE, 8), "little") == RAM
    assert int.from_bytes(read_item(fw_cfg, Key.NB_CPUS, 2), "little") == 2
    assert int.from_bytes(read_item(fw_cfg, Key.MAX_CPUS, 2), "little") == 4


def test_unknown_selector_and_past_the_end_read_zeros(fw_cfg: FwCfg) -> None:
    assert read_item(fw_cfg, 0x1234, 8) == bytes(8)
    assert read_item(fw_cfg, 0x8000 | 0x1234, 8) == bytes(8)
    assert read_item(fw_cfg, Key.SIGNATURE, 6) == b"QEMU\0\0"


def test_selecting_resets_the_offset(fw_cfg: FwCfg) -> None:
    assert read_item(fw_cfg, Key.SIGNATURE, 2) == b"QE"
    assert read_data(fw_cfg, 1) == b"M"
    assert read_item(fw_cfg, Key.SIGNATURE, 4) == b"QEMU"


def test_write_channel_bit_reads_the_same_item_and_data_writes_are_ignored(fw_cfg: FwCfg) -> None:
    select(fw_cfg, 0x4000 | Key.SIGNATURE)
    fw_cfg.write(Port.DATA, 1, ord("X"))
    assert read_item(fw_cfg, 0x4000 | Key.SIGNATURE, 4) == b"QEMU"


def test_wide_data_read_streams_bytes(fw_cfg: FwCfg) -> None:
    select(fw_cfg, Key.SIGNATURE)
    assert fw_cfg.read(Port.DATA, 4) == port_value(b"QEMU")


def test_file_directory(fw_cfg: FwCfg) -> None:
    fw_cfg.add_file("opt/z", b"last")
    fw_cfg.add_file("etc/a", b"first file")
    header = read_item(fw_cfg, Key.FILE_DIR, 4)
    assert struct.unpack(">I", header) == (2,)
    entries = [struct.unpack(">IHH56s", read_data(fw_cfg, 64)) for _ in range(2)]
    assert [(size, key, name.rstrip(b"\0")) for size, key, _, name in entries] == [
        (10, 0x20, b"etc/a"),
        (4, 0x21, b"opt/z"),
    ]
    assert read_item(fw_cfg, 0x20, 10) == b"first file"
    assert read_item(fw_cfg, 0x21, 4) == b"last"


def test_empty_directory(fw_cfg: FwCfg) -> None:
    assert read_item(fw_cfg, Key.FILE_DIR, 8) == bytes(8)


def test_add_item_and_rejected_keys(fw_cfg: FwCfg) -> None:
    fw_cfg.add_item(0x8003, b"\x01\x02")
    assert read_item(fw_cfg, 0x8003, 2) == b"\x01\x02"
    for key in (Key.FILE_DIR, 0x20, 0x3FFF, 0x4000, 0x10000, -1):
        with pytest.raises(ConfigError):
            fw_cfg.add_item(key, b"")


def test_bad_file_names_are_rejected(fw_cfg: FwCfg) -> None:
    fw_cfg.add_file("etc/ok", b"")
    for name in ("", "x" * 56, "etc/ok", "a\0b"):
        with pytest.raises(ConfigError):
            fw_cfg.add_file(name, b"")


def test_dma_signature_in_the_address_register(fw_cfg: FwCfg) -> None:
    assert fw_cfg.read(Port.DMA_ADDRESS, 8) == port_value(b"QEMU CFG")
    high = fw_cfg.read(Port.DMA_ADDRESS, 4)
    low = fw_cfg.read(Port.DMA_ADDRESS_LOW, 4)
    assert (be32(high) << 32) | be32(low) == 0x51454D5520434647


def test_dma_select_and_read(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    fw_cfg.add_file("etc/hello", b"hello, guest")
    control = (Key.FILE_DIR << 16) | DmaControl.SELECT | DmaControl.READ
    assert dma(fw_cfg, memory, control, 4 + 64, BUFFER) == 0
    directory = memory.read(BUFFER, 4 + 64)
    count, size, key = struct.unpack(">IIH", directory[:10])
    assert (count, size, key) == (1, 12, 0x20)
    assert directory[12:21] == b"etc/hello"

    control = (0x20 << 16) | DmaControl.SELECT | DmaControl.READ
    assert dma(fw_cfg, memory, control, 5, BUFFER) == 0
    assert dma(fw_cfg, memory, DmaControl.READ, 7, BUFFER + 5) == 0  # the offset went on
    assert memory.read(BUFFER, 12) == b"hello, guest"


def test_dma_skip(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    control = (Key.SIGNATURE << 16) | DmaControl.SELECT | DmaControl.SKIP
    assert dma(fw_cfg, memory, control, 2, 0) == 0
    assert dma(fw_cfg, memory, DmaControl.READ, 2, BUFFER) == 0
    assert memory.read(BUFFER, 2) == b"MU"


def test_dma_read_past_the_end_fills_zeros(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    memory.fill(BUFFER, 0x30001, 0xAA)
    control = (Key.SIGNATURE << 16) | DmaControl.SELECT | DmaControl.READ
    assert dma(fw_cfg, memory, control, 0x30000, BUFFER) == 0
    assert memory.read(BUFFER, 4) == b"QEMU"
    assert memory.read(BUFFER + 4, 0x30000 - 4) == bytes(0x30000 - 4)
    assert memory.read_u8(BUFFER + 0x30000) == 0xAA


def test_dma_64_bit_write_triggers(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    memory.write(ACCESS, struct.pack(">IIQ", DmaControl.SELECT | DmaControl.READ, 4, BUFFER))
    fw_cfg.write(Port.DMA_ADDRESS, 8, port_value(ACCESS.to_bytes(8, "big")))
    assert memory.read_u32(ACCESS) == 0
    assert memory.read(BUFFER, 4) == b"QEMU"


def test_dma_high_half_is_kept_until_the_low_write(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    memory.write(ACCESS, struct.pack(">IIQ", DmaControl.SELECT | DmaControl.READ, 4, BUFFER))
    fw_cfg.write(Port.DMA_ADDRESS, 4, be32(1))  # structure at 4 GiB + ACCESS: not RAM
    fw_cfg.write(Port.DMA_ADDRESS_LOW, 4, be32(ACCESS))
    assert memory.read(BUFFER, 4) == bytes(4)
    # The register went back to 0, so a low write alone now reaches ACCESS.
    fw_cfg.write(Port.DMA_ADDRESS_LOW, 4, be32(ACCESS))
    assert memory.read(BUFFER, 4) == b"QEMU"


def test_dma_target_outside_ram_sets_error(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    control = (Key.SIGNATURE << 16) | DmaControl.SELECT | DmaControl.READ
    status = dma(fw_cfg, memory, control, 16, RAM - 8)
    assert status == int(DmaControl.ERROR) << 24  # big-endian 1 read little-endian
    status = dma(fw_cfg, memory, control, 0xFFFF_FFFF, BUFFER)
    assert status == int(DmaControl.ERROR) << 24
    status = dma(fw_cfg, memory, control, 4, (1 << 64) - 2)
    assert status == int(DmaControl.ERROR) << 24


def test_dma_write_is_refused(fw_cfg: FwCfg, memory: GuestMemory) -> None:
    control = (Key.SIGNATURE << 16) | DmaControl.SELECT | DmaControl.WRITE
    memory.write(BUFFER, b"EVIL")
    assert dma(fw_cfg, memory, control, 4, BUFFER) == int(DmaControl.ERROR) << 24
    assert read_item(fw_cfg, Key.SIGNATURE, 4) == b"QEMU"


def test_dma_structure_outside_ram_is_ignored(fw_cfg: FwCfg) -> None:
    fw_cfg.write(Port.DMA_ADDRESS, 8, port_value((RAM - 8).to_bytes(8, "big")))
    fw_cfg.write(Port.DMA_ADDRESS, 4, be32(0xFFFF_FFFF))
    fw_cfg.write(Port.DMA_ADDRESS_LOW, 4, be32(0xFFFF_FFF8))


def test_constructor_rejects_what_the_items_cannot_hold(memory: GuestMemory) -> None:
    with pytest.raises(ConfigError):
        FwCfg(memory, ram_size=RAM, cpus=0, max_cpus=1)
    with pytest.raises(ConfigError):
        FwCfg(memory, ram_size=RAM, cpus=2, max_cpus=1)
    with pytest.raises(ConfigError):
        FwCfg(memory, ram_size=1 << 64, cpus=1, max_cpus=1)
