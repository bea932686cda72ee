"""The stock Debian cloud kernel, taken from its package without installing it.

`linux-image-cloud-amd64` is a metapackage; the kernel is in the versioned package
it depends on (linux-image-<abi>-cloud-amd64). That package is fetched with
`apt-get download` and unpacked with `dpkg-deb -x` into the scratch directory.
Its bzImage (LZ4-compressed, boot protocol 2.15) is used as it is; vmlinux is the
ELF unpacked from the bzImage's payload. Its virtio drivers are modules: those
in `STOCK_MODULES` and their dependencies go into the initramfs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyvmm.images import kernel_image, modules
from pyvmm.images.host import Apt, versioned_dependency
from pyvmm.images.initramfs import GuestModule
from pyvmm.images.steps import Steps

META_PACKAGE = "linux-image-cloud-amd64"
HOST_PACKAGES = ("busybox-static", "kmod", "lz4")
# What the guest needs from modules: both virtio transports, the devices pyvmm
# offers, and ext4 (built into the Debian kernel, so normally skipped).
STOCK_MODULES = (
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "ext4",
)
# Kernel command-line options that skip the stock kernel's own init-time self-checks,
# which are pure kernel computation: negligible on VT-x/AMD-V, but most of its boot
# where guest kernel code runs a thousand times slower (kvm_pvm, measured in
# docs/boot.md): `cryptomgr.notests` skips the crypto manager's self-tests, whose DH
# modular exponentiations alone take half an hour there. An offer, never a
# requirement: the kernel boots without it, only slower.
STOCK_SPEEDUPS = "cryptomgr.notests"


@dataclass(frozen=True)
class StockRelease:
    meta_version: str
    package: str
    version: str


def resolve(apt: Apt) -> StockRelease:
    """Which versioned kernel package the metapackage points at today."""
    meta_version, depends = apt.candidate(META_PACKAGE)
    dependency = versioned_dependency(depends, "linux-image-")
    if dependency is None:
        raise ValueError(f"{META_PACKAGE} {meta_version} depends on no linux-image package")
    package, pinned = dependency
    version = pinned or apt.candidate(package)[0]
    return StockRelease(meta_version, package, version)


def build_stock_kernel(steps: Steps, apt: Apt, release: StockRelease, work: Path,
                       out: Path) -> tuple[list[GuestModule], dict[str, object]]:
    """Leaves bzImage, vmlinux and config in `out`; returns the guest's modules."""
    with steps.phase("download"):
        deb = apt.download(release.package, release.version, work)

    root = work / "root"
    with steps.phase("unpack"):
        steps.run(["dpkg-deb", "-x", str(deb), str(root)])
        kernel_release = _kernel_release(root)
        if kernel_release is None:
            raise steps.fail(f"{deb.name} holds no /boot/vmlinuz-* with its /lib/modules tree")

    with steps.phase("modules"):
        guest_modules = _select_modules(steps, root, kernel_release)

    with steps.phase("kernel"):
        boot = root / "boot"
        image = (boot / f"vmlinuz-{kernel_release}").read_bytes()
        try:
            facts = kernel_image.describe(image)
            elf = kernel_image.decompress_payload(kernel_image.payload_of(image))
            elf = elf[: kernel_image.elf_extent(elf)]
        except ValueError as exc:
            raise steps.fail(f"vmlinuz-{kernel_release}: {exc}") from exc
        (out / "bzImage").write_bytes(image)
        (out / "vmlinux").write_bytes(elf)
        shutil.copyfile(boot / f"config-{kernel_release}", out / "config")
    info = {
        "release": kernel_release,
        "package": f"{release.package}={release.version}",
        "meta_package": f"{META_PACKAGE}={release.meta_version}",
        **facts,
    }
    return guest_modules, info


def _kernel_release(root: Path) -> str | None:
    for image in sorted((root / "boot").glob("vmlinuz-*")):
        release = image.name.removeprefix("vmlinuz-")
        if (root / "lib" / "modules" / release).is_dir():
            return release
    return None


def _select_modules(steps: Steps, root: Path, kernel_release: str) -> list[GuestModule]:
    tree = root / "lib" / "modules" / kernel_release
    if not (tree / "modules.dep").is_file():  # Debian's postinst would run depmod
        steps.run(["depmod", "-b", str(root), kernel_release])
    dependencies = modules.parse_modules_dep((tree / "modules.dep").read_text())
    builtin_file = tree / "modules.builtin"
    builtin = modules.parse_builtin(builtin_file.read_text()) if builtin_file.is_file() else set()
    try:
        order = modules.load_order(STOCK_MODULES, dependencies, builtin)
    except ValueError as exc:
        raise steps.fail(str(exc)) from exc
    skipped = [name for name in STOCK_MODULES if name in builtin]
    if skipped:
        steps.report(f"built in, no module needed: {', '.join(skipped)}")
    guest = []
    for relative in order:
        name, data = modules.read_module(tree / relative)
        directory = re.sub(r"[^/]*$", "", relative)
        guest.append(GuestModule(f"/lib/modules/{kernel_release}/{directory}{name}", data))
    steps.report(f"{len(guest)} modules: {', '.join(modules.module_name(m.path) for m in guest)}")
    return guest
