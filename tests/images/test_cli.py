"""`pyvmm images` as scripts and users run it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvmm import cli
from pyvmm.images import ARTIFACTS, build
from pyvmm.images.cache import Cache
from pyvmm.images.steps import Steps

INPUTS = build.Inputs("default", {"flavour": "default", "linux-source": "6.1.192-2"})


def pyvmm(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyvmm", "images", *args], capture_output=True, text=True, timeout=120,
        env={"PYVMM_CACHE_DIR": str(cache), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_path_without_a_build_is_one_line_and_status_1(tmp_path: Path) -> None:
    result = pyvmm("path", "vmlinux", cache=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "pyvmm images build" in result.stderr


def test_path_names_are_checked(tmp_path: Path) -> None:
    result = pyvmm("path", "System.map", cache=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_list_of_an_empty_cache(tmp_path: Path) -> None:
    result = pyvmm("list", cache=tmp_path)
    assert result.returncode == 0 and str(tmp_path) in result.stdout and "empty" in result.stdout


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding the default images for INPUTS, which stand for today's inputs."""
    monkeypatch.setenv("PYVMM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "current_inputs", lambda flavour: INPUTS if flavour == "default" else None)

    def no_commands(*args: object, **kwargs: object) -> int:
        raise AssertionError("a cached build must run nothing")

    monkeypatch.setattr(Steps, "run", no_commands)
    with Cache(tmp_path).staging("default", INPUTS.key) as out:
        for name, file in ARTIFACTS.items():
            (out / file).write_text(json.dumps({"kernel": {"release": "6.1.192"}, "files": {}})
                                    if name == "manifest" else name)
    return tmp_path / f"default-{INPUTS.key}"


def test_a_second_build_is_instant_and_prints_the_paths(
        cached: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert cli.main(["images", "build"]) == 0
    assert time.monotonic() - started < 1.0
    out, err = capsys.readouterr()
    assert f"bzImage    {cached / 'bzImage'}" in out.splitlines()
    assert str(cached / "initramfs.cpio") in out
    assert f"rootfs     {cached / 'rootfs.ext4'}" in out.splitlines()
    assert "cached" in err


def test_path_and_list_find_the_cached_images(cached: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["images", "path", "initramfs"]) == 0
    assert capsys.readouterr().out == f"{cached / 'initramfs.cpio'}\n"
    assert cli.main(["images", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"* default  {INPUTS.key}" in listing and "6.1.192" in listing
    assert cli.main(["images", "path", "--stock", "vmlinux"]) == 1
    assert cli.main(["images", "path", "rootfs"]) == 0
    assert capsys.readouterr().out == f"{cached / 'rootfs.ext4'}\n"


def test_a_failing_phase_is_one_line_naming_it_and_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A real build up to `tar`, which fails on a tarball that is not one."""
    from pyvmm.images import host, kernel

    monkeypatch.setenv("PYVMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(host, "installed_versions", lambda names: dict.fromkeys(names, "1.0"))
    broken = tmp_path / "linux-source-6.1.tar.xz"
    broken.write_bytes(b"not a tarball")
    monkeypatch.setattr(kernel, "source_tarball", lambda: broken)
    assert cli.main(["images", "build"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    log = tmp_path / "cache" / "logs" / "default.log"
    assert last.startswith("pyvmm: error: images: unpack failed:") and f"(log: {log})" in last
    assert "$ tar -xf" in log.read_text()
    assert not list((tmp_path / "cache").glob("default-*")), "no entry from a failed build"


def test_reset_disk_removes_the_default_guests_copy(
        cached: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pyvmm.images import guest_disk

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    disk = tmp_path / "data" / "pyvmm" / "disks" / f"default-{INPUTS.key}.ext4"
    assert cli.main(["images", "reset-disk"]) == 0
    assert capsys.readouterr().out == f"{disk}: not made yet; the next `pyvmm run` makes it\n"
    made, _ = guest_disk.writable_disk(Cache().entries()[0])
    assert made == disk and disk.read_bytes() == b"rootfs"
    assert cli.main(["images", "reset-disk"]) == 0
    assert capsys.readouterr().out.startswith(f"{disk}: removed; the next `pyvmm run` makes a fresh copy")
    assert not disk.exists() and (cached / "rootfs.ext4").read_bytes() == b"rootfs"
