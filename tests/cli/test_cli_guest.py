"""`pyvmm run` without --kernel: what it boots of pyvmm's own guest (pyvmm.cli._guest),
against a real image cache and disk directory in tmp_path (no boot: the images are
stand-ins, the choices and the files made are real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvmm import cli
from pyvmm.config import MachineConfig
from pyvmm.device_config import DiskConfig
from pyvmm.errors import ConfigError
from pyvmm.images import artifacts, build
from pyvmm.images.cache import Cache
from pyvmm.images.steps import Steps

INPUTS = {
    "default": build.Inputs("default", {"flavour": "default", "linux-source": "6.1.192-2"}),
    "stock": build.Inputs("stock", {"flavour": "stock", "linux-image": "6.1.0-57"}),
}
ROOTFS = b"ext4 superblock stand-in".ljust(4096, b".")
ROOTFS_SIZE = 64 << 20


class Guest:
    """The cache and the disk directory of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.cache = Cache(tmp_path / "cache")
        self.disks = tmp_path / "data" / "pyvmm" / "disks"

    def entry(self, flavour: str) -> Path:
        return self.cache.entry_dir(flavour, INPUTS[flavour].key)

    def disk(self) -> Path:
        return self.disks / f"default-{INPUTS['default'].key}.ext4"


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Guest:
    """Both flavours cached for today's inputs; the default one with a 64 MiB sparse
    rootfs.ext4 whose first 4 KiB are data."""
    found = Guest(tmp_path)
    monkeypatch.setenv("PYVMM_CACHE_DIR", str(found.cache.root))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(build, "current_inputs", lambda flavour: INPUTS.get(flavour))

    def no_commands(*args: object, **kwargs: object) -> int:
        raise AssertionError("a cached build must run nothing")

    monkeypatch.setattr(Steps, "run", no_commands)
    for flavour, inputs in INPUTS.items():
        with found.cache.staging(flavour, inputs.key) as out:
            for name, file in artifacts(flavour).items():
                (out / file).write_text("{}" if name == "manifest" else name)
            if flavour == "default":
                with open(out / "rootfs.ext4", "wb") as rootfs:
                    rootfs.write(ROOTFS)
                    rootfs.truncate(ROOTFS_SIZE)
    return found


def guest_of(*argv: str) -> tuple[str, str | None, str, tuple[DiskConfig, ...]]:
    return cli._guest(cli.build_parser().parse_args(["run", *argv]))


def test_the_default_guest_boots_from_a_writable_copy_of_its_root_disk(
    guest: Guest, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel, initrd, cmdline, disks = guest_of()
    assert kernel == str(guest.entry("default") / "bzImage")
    assert initrd is None
    assert cmdline == "console=ttyS0 root=/dev/vda rw"
    assert disks == (DiskConfig(str(guest.disk())),)  # writable, and /dev/vda: the first disk
    copy = guest.disk().read_bytes()
    assert copy == (guest.entry("default") / "rootfs.ext4").read_bytes()
    # A sparse copy: the 4 KiB of data, not 64 MiB of zeros (st_blocks are 512 bytes).
    assert guest.disk().stat().st_blocks * 512 <= 1 << 20
    assert oct(guest.disk().stat().st_mode & 0o777) == "0o600"
    err = capsys.readouterr().err
    assert str(guest.disk()) in err and "pyvmm images reset-disk" in err


def test_the_copy_is_kept_between_runs_and_the_cache_untouched(
    guest: Guest, capsys: pytest.CaptureFixture[str]
) -> None:
    guest_of()
    with open(guest.disk(), "r+b") as disk:  # what a guest would write
        disk.seek(1 << 20)
        disk.write(b"written by the guest")
    capsys.readouterr()
    _, _, _, disks = guest_of()
    assert disks == (DiskConfig(str(guest.disk())),)
    with open(guest.disk(), "rb") as disk:
        disk.seek(1 << 20)
        assert disk.read(20) == b"written by the guest"
    with open(guest.entry("default") / "rootfs.ext4", "rb") as rootfs:
        rootfs.seek(1 << 20)
        assert rootfs.read(20) == bytes(20)
    assert "root disk" not in capsys.readouterr().err  # said once, when it was made


def test_root_initramfs_boots_the_initramfs_and_makes_no_disk(guest: Guest) -> None:
    kernel, initrd, cmdline, disks = guest_of("--root", "initramfs")
    assert (kernel, initrd) == (str(guest.entry("default") / "bzImage"),
                                str(guest.entry("default") / "initramfs.cpio"))  # fmt: skip
    assert (cmdline, disks) == ("console=ttyS0", ())
    assert not guest.disks.exists()


def test_an_initrd_of_ones_own_is_the_root(guest: Guest, tmp_path: Path) -> None:
    mine = tmp_path / "mine.cpio"
    mine.write_bytes(b"070701")
    _, initrd, cmdline, disks = guest_of("--initrd", str(mine))
    assert (initrd, cmdline, disks) == (str(mine), "console=ttyS0", ())
    assert not guest.disks.exists()


def test_the_stock_guest_keeps_its_initramfs(guest: Guest) -> None:
    kernel, initrd, cmdline, disks = guest_of("--guest", "stock")
    entry = guest.entry("stock")
    assert (kernel, initrd) == (str(entry / "bzImage"), str(entry / "initramfs.cpio"))
    assert (cmdline, disks) == ("console=ttyS0", ())


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        # A --cmdline written for the initramfs still boots: the root goes first, as
        # Firecracker adds it for its root drive...
        ("console=ttyS0 pyvmm.run=true", "root=/dev/vda rw console=ttyS0 pyvmm.run=true"),
        ("console=ttyS0 ro", "root=/dev/vda rw console=ttyS0 ro"),  # the later ro wins in Linux
        ("", "root=/dev/vda rw"),
        # ...unless the user names a root of their own.
        ("console=ttyS0 root=/dev/vdb", "console=ttyS0 root=/dev/vdb"),
    ],
)
def test_the_disk_root_on_the_users_command_line(guest: Guest, user: str, expected: str) -> None:
    assert guest_of("--cmdline", user)[2] == expected


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("--guest", "stock", "--root", "disk"), "the stock guest has no root disk"),
        (("--root", "disk", "--initrd", "/etc/hostname"), "--initrd and --root disk"),
        (("--kernel", "/etc/hostname", "--root", "initramfs"), "--root chooses what pyvmm's own guest"),
    ],
)
def test_roots_that_cannot_be_are_one_line(
    guest: Guest, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        guest_of(*argv)
    assert cli.main(["run", *argv]) == cli.STATUS_FAILURE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvmm: error: ") and words in lines[0], lines
    assert not guest.disks.exists()


def test_a_bad_root_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["run", "--root", "nfs"])
    assert caught.value.code == cli.STATUS_USAGE
    assert "argument --root: invalid choice: 'nfs'" in capsys.readouterr().err


class _BootedError(Exception):
    """Raised by the stand-in Machine: the configuration `pyvmm run` built."""

    def __init__(self, config: MachineConfig) -> None:
        super().__init__("booted")
        self.config = config


def test_run_puts_the_root_disk_before_the_users_disks(
    guest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def machine(config: MachineConfig) -> None:
        raise _BootedError(config)

    monkeypatch.setattr(cli, "Machine", machine)
    mine = tmp_path / "data.img"
    mine.write_bytes(bytes(4096))
    with pytest.raises(_BootedError) as caught:
        cli._run(cli.build_parser().parse_args(["run", "--disk", f"{mine},readonly=on"]))
    config = caught.value.config
    assert config.disks == (DiskConfig(str(guest.disk())), DiskConfig(str(mine), readonly=True))
    assert config.initrd is None and config.cmdline == "console=ttyS0 root=/dev/vda rw"


def test_an_unwritable_disk_directory_is_one_line(guest: Guest, capsys: pytest.CaptureFixture[str]) -> None:
    guest.disks.parent.mkdir(parents=True)
    guest.disks.write_text("a file where the directory should be")
    assert cli.main(["run"]) == cli.STATUS_FAILURE
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("pyvmm: error: cannot make the guest's root disk "), lines
    assert "Traceback" not in "\n".join(lines)
    assert os.listdir(guest.disks.parent) == ["disks"]
