"""The guest's root disk: a raw ext4 image of the busybox userland of initramfs.py.

The guest boots from it with ``root=/dev/vda rw`` (`ROOT_CMDLINE`) and the image as
its first virtio-blk disk. A disk root reads only the blocks init touches, where
the initramfs is copied whole by guest kernel code first (about 25 s of a 54 s
boot where that code is emulated, kvm_pvm).

Made without root privileges, in three commands (e2fsprogs):

1. the userland is written into a scratch directory: directories, files and
   symlinks, all a user may create;
2. ``mkfs.ext4 -d DIR`` copies that tree into a sparse image file;
3. one ``debugfs -w`` run adds what only root could have put in the directory,
   the /dev/console node (the kernel opens it for init before anything else,
   and without devtmpfs mounted), and makes every inode root's, with one fixed
   time, so the image does not depend on who built it, or when.

The same inputs give the same image byte for byte (with the same e2fsprogs and
mke2fs.conf, which the cache key records): a fixed UUID and directory hash seed,
``E2FSPROGS_FAKE_TIME`` for the superblock and the journal, `EPOCH` for every
inode. The image also has /sbin/init -> /init, the kernel's first choice of init
on a disk root, so no ``init=`` is needed; the initramfs has no such link (its
kernel runs /init).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pyvmm.images import initramfs
from pyvmm.images.initramfs import GuestModule, Userland
from pyvmm.images.steps import Steps

IMAGE = "rootfs.ext4"
ROOT_CMDLINE = "root=/dev/vda rw"
EXTRA_LINKS = {"sbin/init": "/init"}
LABEL = "pyvmm-root"
UUID = "7079766d-726f-4f74-8000-000000000001"  # "pyvm" "ro" "ot": fixed, so builds compare equal
HASH_SEED = "7079766d-726f-4f74-8000-000000000002"
EPOCH = 946684800  # 2000-01-01T00:00:00Z: every inode's times; 0 would mean "now" to mke2fs
MIB = 1 << 20
MIN_SIZE = 64 * MIB
# Room to write in the guest (the ext4 journal takes 4 MiB of it): at least the
# content again and 32 MiB more. The image is sparse: unwritten space costs no disk.
FREE_MIN = 32 * MIB
BLOCK_SIZE = 4096
_TIME_FIELDS = ("atime", "ctime", "mtime", "crtime")
_DEBUGFS_ERROR = r"^(?!debugfs[: ]|Allocated inode: )\S"


def guest_tree(modules: Sequence[GuestModule] = ()) -> Userland:
    """The host's busybox-static and init.sh as the disk's userland: the initramfs's
    files and /sbin/init."""
    return initramfs.userland(
        initramfs.BUSYBOX.read_bytes(), initramfs.busybox_applets(), initramfs.init_script(),
        modules, extra_links=EXTRA_LINKS,
    )


def image_size(content: int) -> int:
    """Bytes of the image for `content` bytes of files: whole MiB, MIN_SIZE at least."""
    wanted = 2 * content + FREE_MIN
    return max(MIN_SIZE, -(-wanted // MIB) * MIB)


def content_size(tree: Userland) -> int:
    return sum(len(data) for _, data, _ in tree.files)


def write_tree(tree: Userland, directory: Path) -> None:
    """The userland as a directory tree, without its device nodes (those need root)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path, mode in tree.directories:
        target = directory / path
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(mode)  # explicitly: the umask must not change the guest's modes
    for path, data, mode in tree.files:
        target = directory / path
        target.write_bytes(data)
        target.chmod(mode)
    for path, link in tree.symlinks:
        os.symlink(link, directory / path)


def mkfs_command(tree_dir: Path, image: Path) -> list[str]:
    return [
        "mkfs.ext4", "-q", "-F", "-b", str(BLOCK_SIZE), "-L", LABEL, "-U", UUID,
        # nodiscard: a regular file needs none, and it keeps the image as written
        "-E", f"hash_seed={HASH_SEED},root_owner=0:0,nodiscard",
        "-d", str(tree_dir), str(image),
    ]


def debugfs_script(tree: Userland) -> str:
    """The debugfs commands that finish the image: device nodes, owner, times."""
    lines = []
    for path, major, minor in tree.char_devices:
        parent, _, name = path.rpartition("/")
        # debugfs's mknod takes a name in its current directory, not a path
        lines += [f"cd /{parent}", f"mknod {name} c {major} {minor}", "cd /"]
    paths = ["/", "/lost+found"] + [
        f"/{path}" for path in (
            *(d for d, _ in tree.directories), *(p for p, _, _ in tree.char_devices),
            *(p for p, _, _ in tree.files), *(p for p, _ in tree.symlinks),
        )
    ]
    for path, *_ in tree.char_devices:
        lines.append(f"sif /{path} mode 020600")
    for path in paths:
        lines += [f"sif {path} uid 0", f"sif {path} gid 0"]
        lines += [f"sif {path} {field} @{EPOCH}" for field in _TIME_FIELDS]
    return "".join(f"{line}\n" for line in lines)


def build_rootfs(steps: Steps, tree: Userland, work: Path, image: Path) -> int:
    """Write `tree` into the ext4 image `image` (replaced); returns its size."""
    tree_dir = work / "rootfs-tree"
    write_tree(tree, tree_dir)
    size = image_size(content_size(tree))
    image.unlink(missing_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size)  # sparse: mkfs writes only the metadata and the files
    env = {"E2FSPROGS_FAKE_TIME": str(EPOCH)}
    steps.run(mkfs_command(tree_dir, image), env=env)
    script = work / "rootfs.debugfs"
    script.write_text(debugfs_script(tree))
    # debugfs exits 0 even when a command fails; it echoes each command as
    # "debugfs: ..." and says "Allocated inode" for mknod: any other line is an error.
    errors = steps.run(["debugfs", "-w", "-f", str(script), str(image)], env=env, count=_DEBUGFS_ERROR)
    if errors:
        raise steps.fail(f"debugfs could not finish {image.name}: {errors} command(s) failed")
    steps.run(["e2fsck", "-fn", str(image)], env=env)  # read-only, forced: the image is whole
    return size
