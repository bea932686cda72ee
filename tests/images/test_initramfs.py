"""The guest userland: archive contents, the init script, and pyvmm.run= encoding."""

from __future__ import annotations

import io
import re
import stat
import subprocess
from pathlib import Path

import pytest
from images.newc_reader import parse

from pyvmm.images import initramfs
from pyvmm.images.cpio import TRAILER
from pyvmm.images.initramfs import GuestModule

APPLETS = ["bin/sh", "bin/busybox", "sbin/poweroff", "usr/bin/env", "linuxrc"]
MODULES = [
    GuestModule("/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio.ko", b"\x7fELF virtio"),
    GuestModule("/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/virtio_blk.ko", b"\x7fELF blk"),
]


def entries(modules: list[GuestModule] | None = None) -> dict[str, tuple[int, dict[str, int], bytes]]:
    archive = initramfs.build_initramfs(b"BUSYBOX", APPLETS, b"#!/bin/sh\n", modules or [])
    parsed = parse(archive)
    assert parsed[-1][0] == TRAILER
    return {name: (index, header, data) for index, (name, header, data) in enumerate(parsed[:-1])}


def test_the_archive_holds_busybox_init_console_and_mount_points() -> None:
    found = entries()
    _, header, data = found["init"]
    assert data == b"#!/bin/sh\n" and stat.S_IMODE(header["mode"]) == 0o755
    _, header, data = found["bin/busybox"]
    assert data == b"BUSYBOX" and stat.S_ISREG(header["mode"])
    _, header, _ = found["dev/console"]
    assert stat.S_ISCHR(header["mode"]) and (header["rdevmajor"], header["rdevminor"]) == (5, 1)
    for directory in ("proc", "sys", "dev", "tmp", "usr/bin"):
        assert stat.S_ISDIR(found[directory][1]["mode"])
    assert stat.S_IMODE(found["tmp"][1]["mode"]) == 0o1777


def test_applets_are_symlinks_to_busybox_and_parents_come_first() -> None:
    found = entries()
    for applet in ("bin/sh", "sbin/poweroff", "usr/bin/env"):
        index, header, data = found[applet]
        assert stat.S_ISLNK(header["mode"]) and data == b"/bin/busybox"
        assert found[applet.rsplit("/", 1)[0]][0] < index
    assert "linuxrc" not in found, "no second init"


def test_modules_and_their_load_list() -> None:
    found = entries(MODULES)
    for module in MODULES:
        _, _, data = found[module.path.lstrip("/")]
        assert data == module.data
    assert found["etc/pyvmm/modules"][2].decode().splitlines() == [m.path for m in MODULES]
    assert "etc/pyvmm/modules" not in entries()


def test_the_init_script_parses_under_busybox_sh(busybox: Path, tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_bytes(initramfs.init_script())
    result = subprocess.run([str(busybox), "sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_init_script_prints_the_markers() -> None:
    text = initramfs.init_script().decode()
    assert 'say "ready"' in text and "say()" in text and 'echo "pyvmm-init: $*"' in text
    assert initramfs.READY_MARKER == "pyvmm-init: ready"
    assert f'echo "{initramfs.RUN_EXIT_PREFIX}$?"' in text
    assert "setsid cttyhack sh" in text and initramfs.MODULE_LIST in text


@pytest.mark.parametrize("command", [
    "echo hello world",
    "cat /proc/cpuinfo | grep -c processor; exit 3",
    r"printf '%s\n' \"a b\" 100% && echo $((1+2)) ~ _under_score",
    "echo 'tab\there' é",
])
def test_run_commands_survive_the_kernel_command_line(busybox: Path, command: str) -> None:
    """Encode in Python, decode with init.sh's own function under busybox sh."""
    word = initramfs.run_parameter(command)
    assert word.startswith("pyvmm.run=") and not re.search(r"\s|\"", word)
    text = initramfs.init_script().decode()
    function = re.search(r"^percent_decode\(\) \{.*?^\}", text, re.S | re.M)
    assert function is not None
    value = word.removeprefix("pyvmm.run=")
    program = f'{function[0]}\npercent_decode "$1"'
    decoded = subprocess.run([str(busybox), "sh", "-c", program, "sh", value],
                             capture_output=True, check=True).stdout
    assert decoded.decode() == command


def test_busybox_lists_its_applets(busybox: Path) -> None:
    applets = initramfs.busybox_applets(busybox)
    assert "bin/sh" in applets and "sbin/poweroff" in applets and "bin/cttyhack" in applets
    assert applets == sorted(applets)
    assert all(not applet.startswith("/") for applet in applets)


def test_archive_reader_helper_is_strict() -> None:
    with pytest.raises(AssertionError):
        parse(io.BytesIO(b"garbage").getvalue())


def _function(name: str) -> str:
    found = re.search(rf"^{name}\(\) \{{.*?^\}}", initramfs.init_script().decode(), re.S | re.M)
    assert found is not None, name
    return found[0]


@pytest.mark.parametrize(("path", "mounted"), [("/proc", True), ("/", True), ("/proc/self", False),
                                               ("/no/such/dir", False)])
def test_init_tells_a_mount_point_from_a_directory(busybox: Path, path: str, mounted: bool) -> None:
    """On a disk root the kernel has mounted /dev already; init asks /proc/mounts with
    its own function (Debian's busybox has no mountpoint applet) under busybox sh."""
    program = f'{_function("is_mounted")}\nis_mounted "$1"'
    result = subprocess.run([str(busybox), "sh", "-c", program, "sh", path], capture_output=True)
    assert result.returncode == (0 if mounted else 1), result.stderr


def test_init_mounts_devtmpfs_only_where_it_is_missing_and_leaves_a_disk_clean() -> None:
    text = initramfs.init_script().decode()
    assert "is_mounted /dev || mount_fs devtmpfs /dev" in text
    settle = _function("settle_root")
    assert "mount -o remount,ro /" in settle and "sync" in settle
    assert text.count("settle_root\n") == 2, "before both power-off paths"
