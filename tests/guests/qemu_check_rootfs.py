"""Boots pyvmm's default guest from its root disk under QEMU TCG (software emulation,
no KVM), independently of pyvmm's own virtio-blk: the check that rootfs.ext4 and
the kernel make a bootable pair. Run by hand (QEMU is no dependency of the suite):

    .venv/bin/python tests/guests/qemu_check_rootfs.py

It takes the default images from the cache (building them when needed), boots a
copy of rootfs.ext4 (the cached one stays as built) and checks:

1. root=/dev/vda rw: init's marker, / is the ext4 disk mounted read-write, init
   mounted nothing twice, a command's output and exit status; a file is written;
2. the disk is clean after the power-off (init remounted / read-only): e2fsck -fn;
3. a second boot finds the file written in the first;
4. the initramfs boot still works (-initrd, no disk).

Exit status 0 when every check passed, 1 otherwise (one line per check).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyvmm.images.commands import build_with_progress  # noqa: E402
from pyvmm.images.initramfs import READY_MARKER, RUN_EXIT_PREFIX, run_parameter  # noqa: E402
from pyvmm.images.rootfs import ROOT_CMDLINE  # noqa: E402

TIMEOUT = 120  # TCG boots this kernel in a few seconds
PROBE = "/root/qemu-check"


def qemu(kernel: Path, command: str, *, disk: Path | None = None, initrd: Path | None = None) -> str:
    cmdline = f"console=ttyS0 {ROOT_CMDLINE if disk else ''} {run_parameter(command)}"
    args = ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "256M", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel), "-append", cmdline]
    if disk is not None:
        args += ["-drive", f"file={disk},if=virtio,format=raw"]
    if initrd is not None:
        args += ["-initrd", str(initrd)]
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    return result.stdout.decode(errors="replace").replace("\r", "")


def main() -> int:
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu_check_rootfs.py: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
              file=sys.stderr)
        return 1
    images = build_with_progress("default")
    kernel = images.path("bzImage")
    results: list[tuple[str, bool, str]] = []

    def check(name: str, passed: bool, output: str) -> None:
        results.append((name, passed, output))

    with tempfile.TemporaryDirectory(prefix="pyvmm-qemu-rootfs-") as work:
        disk = Path(work) / "rootfs.ext4"
        shutil.copyfile(images.path("rootfs"), disk)
        out = qemu(kernel, f"mount; echo written >{PROBE}; echo done", disk=disk)
        lines = out.splitlines()
        check("disk root: marker, ext4 mounted rw, command run", READY_MARKER in lines
              and any(line.startswith("/dev/root on / type ext4 (rw") for line in lines)
              and "done" in lines and f"{RUN_EXIT_PREFIX}0" in lines and "cannot mount" not in out, out)
        fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True)
        check("disk clean after power-off (e2fsck -fn)", fsck.returncode == 0, fsck.stdout + fsck.stderr)
        out = qemu(kernel, f"cat {PROBE}", disk=disk)
        check("second boot reads what the first wrote", "written" in out.splitlines(), out)
    out = qemu(kernel, "mount", initrd=images.path("initramfs"))
    check("initramfs root still boots", READY_MARKER in out and "rootfs on / type rootfs" in out
          and f"{RUN_EXIT_PREFIX}0" in out, out)

    for name, passed, output in results:
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
        if not passed:
            print("".join(f"    {line}\n" for line in output.splitlines()[-25:]), end="")
    failed = sum(not passed for _, passed, _ in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
