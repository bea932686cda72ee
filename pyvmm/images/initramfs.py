"""The guest's userland: an uncompressed newc initramfs around busybox-static.

Uncompressed on purpose: the kernel unpacks it with its own code, and where guest
kernel code is emulated (a software KVM such as kvm_pvm) inflating a gzip archive
took 78 s of a 150 s boot; copying the plain archive takes 23 s.

Contents: /bin/busybox and a symlink per applet (at the paths busybox itself
lists), /init (init.sh from this package), the mount points, a /dev/console node
(the kernel opens it for init's stdin/stdout/stderr before devtmpfs exists) and,
for kernels with modular drivers, the modules with /etc/pyvmm/modules listing
them in load order (each after its dependencies).

The guest command line may carry ``pyvmm.run=<command>``, percent-encoded as by
`urllib.parse.quote(command, safe="")`: init then runs the command instead of a
shell, prints ``pyvmm-run: exit=<status>`` and powers off. `run_parameter`
builds it.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from pyvmm.images.cpio import CpioWriter

BUSYBOX = Path("/bin/busybox")
GUEST_BUSYBOX = "/bin/busybox"
MODULE_LIST = "/etc/pyvmm/modules"
RUN_PARAMETER = "pyvmm.run"
READY_MARKER = "pyvmm-init: ready"
RUN_EXIT_PREFIX = "pyvmm-run: exit="
CONSOLE_MAJOR, CONSOLE_MINOR = 5, 1
_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "mnt")
_STICKY_TMP = 0o1777


def init_script() -> bytes:
    """The guest's /init, kept in this package as init.sh."""
    return resources.files("pyvmm.images").joinpath("init.sh").read_bytes()


def run_parameter(command: str) -> str:
    """The kernel command-line word that makes init run `command` and power off."""
    return f"{RUN_PARAMETER}={quote(command, safe='')}"


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """Where busybox wants its applets ("bin/sh", "sbin/poweroff", ...)."""
    result = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    return sorted({line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip()})


@dataclass(frozen=True)
class GuestModule:
    """A kernel module as it is placed in the guest: absolute path and contents."""

    path: str
    data: bytes


def _parents(path: str) -> list[str]:
    return [str(parent) for parent in PurePosixPath(path.lstrip("/")).parents if str(parent) != "."]


@dataclass(frozen=True)
class Userland:
    """The guest's files as one listing (paths relative to /, sorted, parents before
    children), from which both the initramfs and the root disk image (rootfs.py) are
    written, so the two cannot drift apart."""

    directories: tuple[tuple[str, int], ...]  # (path, mode)
    char_devices: tuple[tuple[str, int, int], ...]  # (path, major, minor)
    files: tuple[tuple[str, bytes, int], ...]  # (path, contents, mode)
    symlinks: tuple[tuple[str, str], ...]  # (path, target)


def userland(busybox: bytes, applets: Iterable[str], init: bytes, modules: Sequence[GuestModule] = (),
             extra_links: Mapping[str, str] | None = None) -> Userland:
    """busybox and its applets, /init, the modules and their list, the mount points
    and /dev/console; `extra_links` adds symlinks (path relative to / -> target)."""
    files: dict[str, tuple[bytes, int]] = {
        "init": (init, 0o755),
        GUEST_BUSYBOX.lstrip("/"): (busybox, 0o755),
    }
    for module in modules:
        files[module.path.lstrip("/")] = (module.data, 0o644)
    if modules:
        listing = "".join(f"{module.path}\n" for module in modules).encode()
        files[MODULE_LIST.lstrip("/")] = (listing, 0o644)
    links = {
        applet: GUEST_BUSYBOX
        for applet in applets
        if applet not in files and applet.rsplit("/", 1)[-1] not in ("busybox", "init", "linuxrc")
    }
    links.update(extra_links or {})
    directories = set(_DIRS)
    for path in [*files, *links]:
        directories.update(_parents(path))
    return Userland(
        directories=tuple((d, _STICKY_TMP if d == "tmp" else 0o755) for d in sorted(directories)),
        char_devices=(("dev/console", CONSOLE_MAJOR, CONSOLE_MINOR),),
        files=tuple((path, data, mode) for path, (data, mode) in sorted(files.items())),
        symlinks=tuple(sorted(links.items())),
    )


def build_initramfs(busybox: bytes, applets: Iterable[str], init: bytes,
                    modules: Sequence[GuestModule] = ()) -> bytes:
    """The uncompressed newc archive."""
    tree = userland(busybox, applets, init, modules)
    out = io.BytesIO()
    with CpioWriter(out) as archive:
        for directory, mode in tree.directories:
            archive.add_dir(directory, mode)
        for path, major, minor in tree.char_devices:
            archive.add_char_device(path, major, minor)
        for path, data, mode in tree.files:
            archive.add_file(path, data, mode)
        for path, target in tree.symlinks:
            archive.add_symlink(path, target)
    return out.getvalue()
