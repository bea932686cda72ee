"""KVM binary statistics (api.rst §4.133): the real fds of a VM and a vCPU, and
made-up files for the layout checks."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_code import real_mode_guest

from pyvmm.kvm import Cap, ExitReason, Kvm, Vcpu
from pyvmm.kvm.stats import KvmStatsError, Stats, open_stats
from pyvmm.kvm.uapi import (
    KVM_STATS_BASE_SHIFT,
    KVM_STATS_TYPE_SHIFT,
    KVM_STATS_UNIT_SHIFT,
    ClockFlag,
    StatsBase,
    StatsType,
    StatsUnit,
    kvm_stats_desc,
    kvm_stats_header,
)

# loop: out 0x42, al; jmp loop
OUT_LOOP = bytes.fromhex("e642 ebfc")
HEADER = struct.Struct("<6I")
DESC = struct.Struct("<IhHII")


@pytest.fixture
def vcpu() -> Iterator[Vcpu]:
    with Kvm() as kvm:
        if not kvm.check_extension(Cap.BINARY_STATS_FD):
            pytest.skip("this host's KVM lacks KVM_CAP_BINARY_STATS_FD (Linux < 5.14): no statistics fd")
    with real_mode_guest(OUT_LOOP) as (_vm, vcpu):
        yield vcpu


@pytest.mark.kvm
def test_a_vcpu_counts_its_exits(vcpu: Vcpu) -> None:
    with open_stats(vcpu) as stats:
        assert stats.id.endswith("vcpu-0")
        assert "exits" in stats.names, f"this KVM's vCPU statistics: {stats.names}"
        exits = next(d for d in stats.descriptors if d.name == "exits")
        assert (exits.type, exits.unit, exits.size) == (StatsType.CUMULATIVE, StatsUnit.NONE, 1)
        before = stats.read()
        for _ in range(5):
            assert vcpu.run() == ExitReason.IO
        after = stats.read()
        # 5 at least: a vCPU may exit to the kernel on its own (interrupts); which
        # finer counters move is the backend's (kvm_pvm leaves io_exits at 0)
        assert after["exits"][0] - before["exits"][0] >= 5


@pytest.mark.kvm
def test_a_vm_has_statistics_of_its_own(vcpu: Vcpu) -> None:
    with open_stats(vcpu.vm) as stats:
        assert stats.id.startswith("kvm-") and "vcpu" not in stats.id
        assert stats.descriptors and len(set(stats.names)) == len(stats.names)
        values = stats.read()
        assert list(values) == list(stats.names)
        for descriptor in stats.descriptors:
            assert len(values[descriptor.name]) == descriptor.size
            if descriptor.type in (StatsType.CUMULATIVE, StatsType.INSTANT, StatsType.PEAK):
                assert descriptor.size == 1
    with pytest.raises(KvmStatsError, match="closed"):
        stats.read()


def stats_file(
    tmp_path: Path,
    stats: list[tuple[int, int, int, int, int, bytes]],
    values: list[int],
    *,
    name_size: int = 16,
    **header: int,
) -> int:
    """An fd of a file laid out as api.rst §4.133 says: header, id, descriptors
    (flags, exponent, size, offset, bucket_size, name), data; `header` overrides."""
    id_offset = HEADER.size
    desc_offset = id_offset + (name_size + 7) // 8 * 8
    data_offset = desc_offset + (DESC.size + name_size) * len(stats)
    data_offset = (data_offset + 7) // 8 * 8
    fields = {
        "flags": 0,
        "name_size": name_size,
        "num_desc": len(stats),
        "id_offset": id_offset,
        "desc_offset": desc_offset,
        "data_offset": data_offset,
    }
    fields.update(header)
    image = bytearray(data_offset + 8 * len(values))
    image[: HEADER.size] = HEADER.pack(*fields.values())
    image[id_offset : id_offset + name_size] = b"kvm-1/vcpu-0".ljust(name_size, b"\0")[:name_size]
    for index, (flags, exponent, size, offset, bucket, name) in enumerate(stats):
        at = desc_offset + index * (DESC.size + name_size)
        image[at : at + DESC.size] = DESC.pack(flags, exponent, size, offset, bucket)
        image[at + DESC.size : at + DESC.size + name_size] = name.ljust(name_size, b"\0")[:name_size]
    image[data_offset:] = struct.pack(f"<{len(values)}Q", *values)
    path = tmp_path / "stats"
    path.write_bytes(image)
    return os.open(path, os.O_RDONLY)


NANOSECONDS = (2 << 4) | 0  # KVM_STATS_UNIT_SECONDS, KVM_STATS_BASE_POW10
GOOD = [
    (0, 0, 1, 0, 0, b"exits"),
    (4 | NANOSECONDS, -9, 3, 8, 0, b"wait_hist"),
    (3 | (1 << 8) | (1 << 4), 0, 2, 32, 4096, b"sizes"),
]


def test_a_well_formed_file_parses(tmp_path: Path) -> None:
    values = [7, 1, 2, 3, 10, 20]
    with Stats(stats_file(tmp_path, GOOD, values)) as stats:
        assert stats.id == "kvm-1/vcpu-0"
        exits, hist, sizes = stats.descriptors
        assert (exits.name, exits.type, exits.unit, exits.size) == (
            "exits",
            StatsType.CUMULATIVE,
            StatsUnit.NONE,
            1,
        )
        assert (hist.type, hist.unit, hist.base, hist.exponent) == (
            StatsType.LOG_HIST,
            StatsUnit.SECONDS,
            StatsBase.POW10,
            -9,
        )
        assert (sizes.type, sizes.unit, sizes.base, sizes.bucket_size) == (
            StatsType.LINEAR_HIST,
            StatsUnit.BYTES,
            StatsBase.POW2,
            4096,
        )
        assert stats.read() == {"exits": (7,), "wait_hist": (1, 2, 3), "sizes": (10, 20)}


BAD_FILES = {
    "name size 0": ({"name_size": 0}, GOOD),
    "name size huge": ({"name_size": 1 << 20}, GOOD),
    "too many descriptors": ({"num_desc": 1 << 20}, GOOD),
    "descriptors past the end": ({"num_desc": 40}, GOOD),
    "misaligned data block": ({"data_offset": 0x7F}, GOOD),
    "block inside the header": ({"desc_offset": 8}, GOOD),
    "block far away": ({"id_offset": 1 << 30}, GOOD),
    "unknown type": ({}, [(9, 0, 1, 0, 0, b"odd")]),
    "unknown unit": ({}, [(0xF0, 0, 1, 0, 0, b"odd")]),
    "zero values": ({}, [(0, 0, 0, 0, 0, b"empty")]),
    "misaligned value": ({}, [(0, 0, 1, 4, 0, b"odd")]),
    "data block too large": ({}, [(0, 0, 1, 1 << 24, 0, b"far")]),
}


@pytest.mark.parametrize(("header", "stats"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_file_breaking_the_layout_is_refused(
    tmp_path: Path, header: dict[str, int], stats: list[tuple[int, int, int, int, int, bytes]]
) -> None:
    fd = stats_file(tmp_path, stats, [1, 2, 3, 4, 5, 6], **header)
    with pytest.raises(KvmStatsError):
        Stats(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # the refused fd was closed, not leaked


def test_a_truncated_data_block_is_refused_on_read(tmp_path: Path) -> None:
    with Stats(stats_file(tmp_path, GOOD, [7])) as stats, pytest.raises(KvmStatsError, match="asked"):
        stats.read()


def test_the_layouts_and_flags_match_the_kernel_header(tmp_path: Path) -> None:
    """sizeof/offsetof and the KVM_STATS_* / KVM_CLOCK_* values, as the C compiler sees
    linux/kvm.h."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: scripts/setup.sh installs gcc")
    ours = {
        "sizeof(struct kvm_stats_header)": ctypes.sizeof(kvm_stats_header),
        "sizeof(struct kvm_stats_desc)": ctypes.sizeof(kvm_stats_desc),
        "offsetof(struct kvm_stats_header, data_offset)": kvm_stats_header.data_offset.offset,
        "offsetof(struct kvm_stats_desc, bucket_size)": kvm_stats_desc.bucket_size.offset,
        "KVM_STATS_TYPE_LOG_HIST": StatsType.LOG_HIST << KVM_STATS_TYPE_SHIFT,
        "KVM_STATS_UNIT_BOOLEAN": StatsUnit.BOOLEAN << KVM_STATS_UNIT_SHIFT,
        "KVM_STATS_BASE_POW2": StatsBase.POW2 << KVM_STATS_BASE_SHIFT,
        "KVM_CLOCK_TSC_STABLE": ClockFlag.TSC_STABLE,
        "KVM_CLOCK_REALTIME": ClockFlag.REALTIME,
        "KVM_CLOCK_HOST_TSC": ClockFlag.HOST_TSC,
    }
    prints = "".join(f'printf("%ld\\n", (long)({expression}));' for expression in ours)
    source = tmp_path / "layout.c"
    source.write_text(
        f"#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void) {{{prints}}}"
    )
    subprocess.run([compiler, "-o", str(tmp_path / "layout"), str(source)], check=True)
    output = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout
    assert dict(zip(ours, map(int, output.split()), strict=True)) == {k: int(v) for k, v in ours.items()}
