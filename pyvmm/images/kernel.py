"""The default guest kernel: Debian's linux-source, `make tinyconfig`, then the
fragment kernel.config from this package, checked option by option, then compiled.

The tree is unpacked and built in a scratch directory outside the repository;
bzImage and vmlinux (the unstripped ELF, for PVH entry and symbols) are copied out.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from pyvmm.images import host, kconfig
from pyvmm.images.steps import Steps

ARCH = "x86_64"
SOURCE_PACKAGE = "linux-source"
BUILD_PACKAGES = (
    "build-essential", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "cpio", "xz-utils", "lz4", "kmod",
)
FRAGMENT = "kernel.config"
_OBJECT_LINE = r"^\s+(CC|AS)\s"
_MAKE_ENV = {"KBUILD_BUILD_USER": "pyvmm", "KBUILD_BUILD_HOST": "pyvmm"}


def fragment() -> bytes:
    """The config fragment kept in this package."""
    return resources.files("pyvmm.images").joinpath(FRAGMENT).read_bytes()


def default_jobs() -> int:
    return (os.cpu_count() or 1) + 1


def source_tarball() -> Path:
    """The tarball linux-source installs, via the versioned package it depends on
    (linux-source -> linux-source-6.1 -> /usr/src/linux-source-6.1.tar.xz)."""
    result = host.dpkg_field(SOURCE_PACKAGE, "Depends")
    dependency = host.versioned_dependency(result, "linux-source-")
    names = [dependency[0]] if dependency else []
    for name in names:
        for suffix in (".tar.xz", ".tar.bz2", ".tar.gz"):
            candidate = Path("/usr/src") / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    found = sorted(Path("/usr/src").glob("linux-source-*.tar.*"))
    if not found:
        raise FileNotFoundError("no /usr/src/linux-source-*.tar.* (is linux-source installed?)")
    return found[-1]


def build_kernel(steps: Steps, work: Path, out: Path, jobs: int) -> dict[str, object]:
    """Unpack, configure, verify and compile; leaves bzImage and vmlinux in `out`."""
    with steps.phase("unpack"):
        tarball = source_tarball()
        steps.note(f"unpacking {tarball.name}")
        steps.run(["tar", "-xf", str(tarball), "-C", str(work)])
        trees = [path for path in work.iterdir() if (path / "Makefile").is_file()]
        if len(trees) != 1:
            raise steps.fail(f"{tarball.name} did not unpack into one kernel tree")
        tree = trees[0]

    with steps.phase("configure"):
        configure(steps, tree)

    with steps.phase("compile"):
        objects = steps.run(
            ["make", f"ARCH={ARCH}", f"-j{jobs}", "bzImage"],
            cwd=tree, env=_MAKE_ENV, count=_OBJECT_LINE, unit="objects",
        )
        shutil.copyfile(tree / "arch" / "x86" / "boot" / "bzImage", out / "bzImage")
        shutil.copyfile(tree / "vmlinux", out / "vmlinux")
        shutil.copyfile(tree / ".config", out / "config")
    release = (tree / "include" / "config" / "kernel.release").read_text().strip()
    return {"release": release, "objects": objects, "jobs": jobs, "source": tarball.name}


def configure(steps: Steps, tree: Path) -> None:
    """tinyconfig + the fragment, then fail unless every fragment line holds."""
    text = fragment().decode()
    bad = kconfig.bad_fragment_lines(text)
    if bad:
        raise steps.fail(f"{FRAGMENT} has lines that are not options: {'; '.join(bad)}")
    fragment_file = tree / "pyvmm-fragment.config"
    fragment_file.write_text(text)
    steps.run(["make", f"ARCH={ARCH}", "tinyconfig"], cwd=tree)
    steps.run(["scripts/kconfig/merge_config.sh", "-m", ".config", fragment_file.name], cwd=tree)
    steps.run(["make", f"ARCH={ARCH}", "olddefconfig"], cwd=tree)
    mismatches = kconfig.verify(text, (tree / ".config").read_text())
    if mismatches:
        raise steps.fail(
            f"{len(mismatches)} option(s) of {FRAGMENT} did not take: "
            + ", ".join(str(mismatch) for mismatch in mismatches)
        )
    steps.report(f"all {len(kconfig.parse_config(text))} options of {FRAGMENT} hold")
