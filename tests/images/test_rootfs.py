"""The root disk image: built without root from the guest's userland, checked with
e2fsprogs' own tools (e2fsck, debugfs), not with pyvmm's code."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvmm.images import initramfs, rootfs

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
# Builds the image in argv[1] as the images build does (rootfs.build_rootfs over the
# host's busybox and init.sh), with the standard library only, so the system's
# python3 can run it as an unprivileged user.
BUILD = """
import sys
from pathlib import Path
from pyvmm.images import rootfs
from pyvmm.images.progress import Progress
from pyvmm.images.steps import Steps
work = Path(sys.argv[1])
steps = Steps(Progress(sys.stderr, live=False), work / "build.log")
with steps.phase("root disk"):
    rootfs.build_rootfs(steps, rootfs.guest_tree(), work, work / "rootfs.ext4")
steps.close()
"""


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package e2fsprogs)")
    return found


def build_unprivileged(work: Path) -> Path:
    """Build the image into `work`; as root, as the user nobody (setpriv), to show that
    nothing in the build needs root."""
    command = [sys.executable, "-c", BUILD, str(work)]
    if os.geteuid() == 0:
        python = shutil.which("python3", path="/usr/bin:/bin")  # ours may sit in root's home
        assert python is not None
        os.chown(work, NOBODY, NOBODY)
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                   python, "-c", BUILD, str(work)]  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    log = work / "build.log"
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    return work / "rootfs.ext4"


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    _tool("mkfs.ext4")
    with tempfile.TemporaryDirectory(prefix="pyvmm-rootfs-") as work:
        yield build_unprivileged(Path(work))


def debugfs(image: Path, *requests: str) -> str:
    """The output of debugfs's (read-only) requests, in order, each after its echo."""
    script = "".join(f"{request}\n" for request in requests)
    result = subprocess.run([_tool("debugfs"), "-f", "-", str(image)], input=script,
                            capture_output=True, text=True, check=True)  # fmt: skip
    return result.stdout


def test_e2fsck_finds_the_image_clean(image: Path) -> None:
    result = subprocess.run([_tool("e2fsck"), "-fn", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_sparse_and_sized_for_writing(image: Path) -> None:
    size = image.stat().st_size
    assert size == rootfs.MIN_SIZE and size % rootfs.MIB == 0
    assert image.stat().st_blocks * 512 < size // 4, "unwritten space is holes"
    facts = subprocess.run([_tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True).stdout
    free = int(re.search(r"^Free blocks:\s+(\d+)", facts, re.M)[1])  # type: ignore[index]
    assert free * rootfs.BLOCK_SIZE > 32 * rootfs.MIB
    assert re.search(rf"^Filesystem UUID:\s+{rootfs.UUID}$", facts, re.M)
    assert re.search(r"^Filesystem features:.*\bextent\b", facts, re.M), "an ext4, not an ext2"


def test_the_tree_is_the_userland_byte_for_byte(image: Path, tmp_path: Path) -> None:
    """debugfs's rdump against the listing the initramfs is made from."""
    subprocess.run([_tool("debugfs"), "-R", f"rdump / {tmp_path}", str(image)],
                   capture_output=True, check=True)  # fmt: skip
    tree = rootfs.guest_tree()
    dumped = tmp_path  # rdump / DEST writes the root's entries into DEST
    # rdump restores permission bits but not the sticky bit: the modes are checked
    # in full on the image itself, below.
    for path, mode in tree.directories:
        assert (dumped / path).is_dir() and (dumped / path).stat().st_mode & 0o777 == mode & 0o777, path
    for path, data, mode in tree.files:
        assert (dumped / path).read_bytes() == data, path
        assert stat.S_IMODE((dumped / path).stat().st_mode) == mode, path
    for path, target in tree.symlinks:
        assert os.readlink(dumped / path) == target, path
    assert (dumped / "init").read_bytes() == initramfs.init_script()
    assert (dumped / "bin" / "busybox").read_bytes() == initramfs.BUSYBOX.read_bytes()
    assert os.readlink(dumped / "sbin" / "init") == "/init", "the kernel's default init on a disk root"
    assert os.readlink(dumped / "bin" / "sh") == "/bin/busybox"
    made = {str(p.relative_to(dumped)) for p in dumped.rglob("*")} - {"lost+found"}
    expected = {p for p, _ in tree.directories} | {p for p, _, _ in tree.files}
    expected |= {p for p, _ in tree.symlinks}
    assert made == expected


def test_every_inode_is_roots_with_the_fixed_time_and_dev_console_is_a_node(image: Path) -> None:
    tree = rootfs.guest_tree()
    directories = ["", *(path for path, _ in tree.directories)]
    listing = debugfs(image, *(f"ls -p /{path}" for path in directories))
    rows = [line.split("/") for line in listing.splitlines() if line.startswith("/")]
    modes = {}
    for _, _, mode, uid, gid, name, *_ in rows:
        assert (uid, gid) == ("0", "0"), f"{name} is owned by {uid}:{gid}"
        modes[name] = int(mode, 8)
    assert len(rows) >= len(tree.files) + len(tree.symlinks) + len(tree.directories)
    assert stat.S_ISCHR(modes["console"]) and stat.S_ISLNK(modes["sh"]) and stat.S_ISREG(modes["busybox"])
    assert modes["tmp"] == stat.S_IFDIR | 0o1777
    console = debugfs(image, "stat /dev/console")
    assert "Type: character special" in console and "Mode:  0600" in console
    assert re.search(r"Device major/minor number: 0*5:0*1\b", console), console
    for path in ("/", "/init", "/bin/sh", "/dev/console", "/tmp"):
        times = re.findall(r"^\s*(\w+): (0x[0-9a-f]+):", debugfs(image, f"stat {path}"), re.M)
        assert {name for name, _ in times} == {"ctime", "atime", "mtime", "crtime"}, path
        assert {int(value, 16) for _, value in times} == {rootfs.EPOCH}, path


def test_the_same_inputs_give_the_same_image(image: Path) -> None:
    """Built again elsewhere, later, as root this time: not a byte differs."""
    with tempfile.TemporaryDirectory(prefix="pyvmm-rootfs-again-") as work:
        again = Path(work) / "again.ext4"
        from pyvmm.images.progress import Progress
        from pyvmm.images.steps import Steps

        steps = Steps(Progress(open(os.devnull, "w"), live=False), Path(work) / "log")  # noqa: SIM115
        with steps.phase("root disk"):
            rootfs.build_rootfs(steps, rootfs.guest_tree(), Path(work) / "w", again)
        steps.close()
        assert again.read_bytes() == image.read_bytes()


def test_the_size_grows_with_the_content() -> None:
    assert rootfs.image_size(0) == rootfs.MIN_SIZE
    assert rootfs.image_size(3 * rootfs.MIB) == rootfs.MIN_SIZE
    big = rootfs.image_size(100 * rootfs.MIB + 1)
    assert big % rootfs.MIB == 0 and big >= 200 * rootfs.MIB + rootfs.FREE_MIN


def test_a_failing_debugfs_command_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """debugfs itself exits 0 on a failed command; the build must not."""
    from pyvmm.images.errors import ImageBuildError
    from pyvmm.images.progress import Progress
    from pyvmm.images.steps import Steps

    monkeypatch.setattr(rootfs, "debugfs_script", lambda tree: "sif /no/such/file uid 0\n")
    steps = Steps(Progress(open(os.devnull, "w"), live=False), tmp_path / "log")  # noqa: SIM115
    failed = r"debugfs could not finish rootfs\.ext4"
    with pytest.raises(ImageBuildError, match=failed), steps.phase("root disk"):
        rootfs.build_rootfs(steps, rootfs.guest_tree(), tmp_path / "w", tmp_path / "rootfs.ext4")
    steps.close()
