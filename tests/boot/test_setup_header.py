"""The bzImage setup header (pyvmm.boot.setup_header) against boot.rst's offsets,
and each way a bzImage can be malformed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot.linux_images import BzImage, bzimage, header_bytes, payload, vmlinux
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.boot.setup_header import is_bzimage, parse_bzimage
from pyvmm.boot.zeropage import XLoadFlags
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_fields() -> None:
    raw = bzimage(version=0x020C, cmdline_size=255, init_size=0x123000, initrd_addr_max=0x37FFFFFF)
    image = parse_bzimage(raw, "bz")
    assert image.protocol == "2.12"
    assert image.version == 0x020C
    assert image.setup_size == 5 * 512
    assert image.kernel == raw[5 * 512 :]
    assert image.header_bytes == raw[0x1F1:0x26C] == header_bytes(raw)
    assert image.cmdline_limit == 255
    assert image.init_size == 0x123000
    assert image.initrd_limit == 0x38000000
    assert image.relocatable and image.kernel_alignment == 0x200000
    assert image.pref_address == 0x1000000
    assert image.xloadflags == XLoadFlags.KERNEL_64 | XLoadFlags.CAN_BE_LOADED_ABOVE_4G
    start = image.header.payload_offset
    assert image.payload() == image.kernel[start : start + image.header.payload_length]
    assert image.payload()[:2] == b"\x1f\x8b"


def test_setup_sects_zero_means_four() -> None:
    raw = BzImage(payload(vmlinux()), setup_sects=0).build()
    assert parse_bzimage(raw, "bz").setup_size == 5 * 512


def test_more_setup_sectors() -> None:
    raw = BzImage(payload(vmlinux()), setup_sects=39).build()
    image = parse_bzimage(raw, "bz")
    assert image.setup_size == 40 * 512
    assert image.payload()[:2] == b"\x1f\x8b"


def test_short_header_is_copied_as_long_as_the_jump_says() -> None:
    raw = bzimage(version=0x0208, jump=0x46EB)  # ends at 0x248, before payload_offset
    assert parse_bzimage(raw, "bz").header_bytes == raw[0x1F1:0x248]


def test_initrd_limit_below_4_gib_without_xlf_flag() -> None:
    image = parse_bzimage(bzimage(initrd_addr_max=0xFFFFFFFF, xloadflags=1), "bz")
    assert image.initrd_limit == 1 << 32


def test_detection() -> None:
    raw = bzimage()
    assert is_bzimage(raw)
    boot_sector = bytearray(1024)
    boot_sector[0x1FE:0x200] = b"\x55\xaa"
    assert not is_bzimage(bytes(boot_sector))
    assert not is_bzimage(raw[:0x204])


def test_boot_sector_with_signature_stays_flat(memory: GuestMemory, tmp_path: Path) -> None:
    boot_sector = bytearray(512)
    boot_sector[0x1FE:0x200] = b"\x55\xaa"
    entry = load(memory, BootImages(write(tmp_path, "mbr.bin", bytes(boot_sector))))
    assert entry.mode is CpuMode.REAL16


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"boot_flag": 0x1234}, r"bad magic: boot_flag is 0x1234, not 0xaa55"),
        ({"header": b"HdrX"}, r'bad magic: no "HdrS" at 0x202'),
        ({"version": 0x0205}, r"Linux boot protocol 2\.05 is too old; pyvmm needs 2\.06 or newer"),
        ({"version": 0x0201}, r"boot protocol 2\.01 is too old"),
        ({"loadflags": 0x80}, r"not a bzImage: loadflags LOADED_HIGH is clear"),
        ({"syssize": 0x100000}, r"truncated: setup \(4 sectors\) and kernel \(syssize 0x1000000 bytes\)"),
        ({"syssize": 0}, r"syssize is 0"),
        ({"payload_length": 0x100000}, r"truncated: the payload \[0x200, 0x100200\) runs past"),
        ({"jump": 0x20EB}, r"setup header ends at 0x222"),
    ],
)
def test_malformed(memory: GuestMemory, tmp_path: Path, fields: dict[str, int | bytes], message: str) -> None:
    raw = bzimage(**fields)
    with pytest.raises(ImageError, match=message) as info:
        image = parse_bzimage(raw, "bz")
        image.payload()
    assert str(info.value).startswith("bz: ")
    if is_bzimage(raw):  # through the loader too, with the file named
        with pytest.raises(ImageError, match=f"^{tmp_path}/bz: .*{message}"):
            load(memory, BootImages(write(tmp_path, "bz", raw)))


def test_truncated_file(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage()
    with pytest.raises(ImageError, match=r"bz: truncated: setup .* the file has"):
        load(memory, BootImages(write(tmp_path, "bz", raw[:-100])))
    with pytest.raises(ImageError, match=r"bz: truncated: 0x210 bytes cannot hold a Linux setup header"):
        parse_bzimage(raw[:0x210], "bz")


def test_no_payload_fields_before_2_08(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(version=0x0207)
    with pytest.raises(
        ImageError, match=r"bz: boot protocol 2\.07 does not say where .*--kernel-decompress guest"
    ):
        load(memory, BootImages(write(tmp_path, "bz", raw)))


def test_header_struct_size() -> None:
    # The copy a loader makes never reaches past boot_params.hdr (0x1f1 + 0x7b = 0x26c).
    raw = bzimage(jump=0x7FEB)
    assert len(parse_bzimage(raw, "bz").header_bytes) == 0x26C - 0x1F1
    assert struct.unpack_from("<H", raw, 0x200)[0] == 0x7FEB


# The property of test_loader.py for bzImages: whatever the setup header and the
# start of the payload hold, loading works or raises one ImageError line.
_SEED = bzimage(fmt="gzip")
_MUTABLE = (0x1F1, 0x26C), (5 * 512 + 0x200, 5 * 512 + 0x220)  # header; payload start


@st.composite
def mutated_bzimages(draw: st.DrawFn) -> bytes:
    data = bytearray(_SEED)
    for _ in range(draw(st.integers(1, 6))):
        lo, hi = draw(st.sampled_from(_MUTABLE))
        at = draw(st.integers(lo, hi - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.sampled_from([0, 1, 0xFF, 0x200, 0x7FFFFFFF, 0xFFFFFFFF, 2**64 - 1, None]))
        chunk = (
            draw(st.binary(min_size=width, max_size=width))
            if value is None
            else (value & (2 ** (8 * width) - 1)).to_bytes(width, "little")
        )
        data[at : at + width] = chunk
    return bytes(data[: draw(st.integers(0x200, len(data)))] if draw(st.booleans()) else data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated_bzimages(), mode=st.sampled_from(["host", "guest"]))
def test_any_bzimage_loads_or_raises_image_error(
    data: bytes, mode: str, memory: GuestMemory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-bzimage"
    path.write_bytes(data)
    try:
        load(memory, BootImages(path, cmdline="console=ttyS0", kernel_decompress=mode))
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
