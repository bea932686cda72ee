"""Build (or find in the cache) the guest images of a flavour.

Flavours: "default" (our kernel from linux-source, see kernel.py) and "stock"
(Debian's cloud kernel, see stock.py); both with the busybox initramfs of
initramfs.py, the default one also with the same userland as an ext4 root disk
(rootfs.py). The cache key hashes every input: the fragment and init script,
the Debian package versions used, and BUILD_VERSION, to be raised whenever this
build code changes what it produces.

Compiling the default kernel takes minutes, so a build whose kernel inputs
(`KERNEL_INPUTS`: the fragment, linux-source, gcc, KERNEL_BUILD_VERSION) equal
those of an entry already in the cache copies that entry's kernel instead: a
change to the userland alone rebuilds in seconds.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyvmm.images import (
    ARTIFACTS,
    DEFAULT,
    STOCK,
    artifacts,
    host,
    initramfs,
    kernel,
    kernel_image,
    rootfs,
    stock,
)
from pyvmm.images.cache import Cache, CachedImages, digest, input_key
from pyvmm.images.errors import ImageBuildError, NotBuiltError
from pyvmm.images.host import Apt
from pyvmm.images.initramfs import GuestModule
from pyvmm.images.progress import Progress
from pyvmm.images.steps import Steps

BUILD_VERSION = 3  # 2: uncompressed initramfs.cpio; 3: the default flavour's rootfs.ext4
# Raised whenever kernel.py changes what it compiles from the same inputs. Entries
# made before it was recorded (BUILD_VERSION 2) hold kernels of version 1.
KERNEL_BUILD_VERSION = 1
FLAVOURS = (DEFAULT, STOCK)
BUSYBOX_PACKAGE = "busybox-static"
COMPILER_PACKAGE = "gcc"
E2FSPROGS_PACKAGE = "e2fsprogs"  # mkfs.ext4, debugfs, e2fsck: the root disk
SUGGESTED_CMDLINE = "console=ttyS0"
KERNEL_INPUTS = (kernel.FRAGMENT, kernel.SOURCE_PACKAGE, COMPILER_PACKAGE, "kernel_build_version")
_KERNEL_FILES = ("bzImage", "vmlinux", "config")


@dataclass
class Inputs:
    """What a build of one flavour depends on; `key` names its cache entry."""

    flavour: str
    values: dict[str, str]
    release: stock.StockRelease | None = field(default=None)

    @property
    def key(self) -> str:
        return input_key(self.values)


def _common_inputs(flavour: str) -> dict[str, str]:
    return {
        "flavour": flavour,
        "build_version": str(BUILD_VERSION),
        "init.sh": digest(initramfs.init_script()),
    }


def default_inputs(versions: Mapping[str, str | None]) -> Inputs | None:
    """None while a package the key needs is not installed."""
    wanted = (kernel.SOURCE_PACKAGE, BUSYBOX_PACKAGE, COMPILER_PACKAGE, E2FSPROGS_PACKAGE)
    if any(versions.get(name) is None for name in wanted):
        return None
    values = _common_inputs(DEFAULT)
    values[kernel.FRAGMENT] = digest(kernel.fragment())
    values["kernel_build_version"] = str(KERNEL_BUILD_VERSION)
    values.update({name: str(versions[name]) for name in wanted})
    return Inputs(DEFAULT, values)


def stock_inputs(busybox_version: str | None, release: stock.StockRelease) -> Inputs | None:
    if busybox_version is None:
        return None
    values = _common_inputs(STOCK)
    values.update({
        BUSYBOX_PACKAGE: busybox_version,
        stock.META_PACKAGE: release.meta_version,
        release.package: release.version,
        "modules": ",".join(stock.STOCK_MODULES),
    })
    return Inputs(STOCK, values, release)


def _default_packages() -> tuple[str, ...]:
    return (kernel.SOURCE_PACKAGE, BUSYBOX_PACKAGE, COMPILER_PACKAGE, E2FSPROGS_PACKAGE,
            *kernel.BUILD_PACKAGES)


def _stock_packages() -> tuple[str, ...]:
    return (BUSYBOX_PACKAGE, *stock.HOST_PACKAGES)


def current_inputs(flavour: str) -> Inputs | None:
    """The inputs as the host stands, without installing or downloading anything;
    None when that cannot be known yet (packages missing, apt lists empty)."""
    if flavour == DEFAULT:
        return default_inputs(host.installed_versions(_default_packages()))
    meta = host.candidate(stock.META_PACKAGE)
    if meta is None:
        return None
    dependency = host.versioned_dependency(meta[1], "linux-image-")
    if dependency is None or dependency[1] is None:
        return None
    release = stock.StockRelease(meta[0], dependency[0], dependency[1])
    return stock_inputs(host.installed_version(BUSYBOX_PACKAGE), release)


def find(flavour: str, cache: Cache) -> CachedImages:
    """The cached images for today's inputs, or NotBuiltError."""
    inputs = current_inputs(flavour)
    found = cache.lookup(flavour, inputs.key) if inputs is not None else None
    if found is None:
        option = " --stock" if flavour == STOCK else ""
        raise NotBuiltError(f"the {flavour} images are not built yet: run `pyvmm images build{option}`")
    return found


def build(flavour: str, cache: Cache, progress: Progress, force: bool = False,
          jobs: int | None = None) -> tuple[CachedImages, bool]:
    """The images of `flavour`, built unless cached; returns (images, built now)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
    inputs = current_inputs(flavour)
    if inputs is not None and not force:
        found = cache.lookup(flavour, inputs.key)
        if found is not None:
            return found, False
    with cache.lock(flavour):
        steps = Steps(progress, cache.log_path(flavour))
        try:
            return _build_locked(flavour, cache, steps, force, jobs or kernel.default_jobs()), True
        finally:
            steps.close()
            progress.close()


def _build_locked(flavour: str, cache: Cache, steps: Steps, force: bool, jobs: int) -> CachedImages:
    apt = Apt(steps)
    packages = _default_packages() if flavour == DEFAULT else _stock_packages()
    with steps.phase("packages"):
        apt.ensure_installed(packages)
        if flavour == DEFAULT:
            inputs = default_inputs(host.installed_versions(packages))
        else:
            try:
                release = stock.resolve(apt)
            except ValueError as exc:
                raise steps.fail(str(exc)) from exc
            inputs = stock_inputs(host.installed_version(BUSYBOX_PACKAGE), release)
        if inputs is None:
            raise steps.fail("the packages the build needs are still missing")
    if not force:  # another process may have built it while we waited for the lock
        found = cache.lookup(flavour, inputs.key)
        if found is not None:
            return found

    started = time.monotonic()
    cpu_before = _children_cpu_seconds()
    work = cache.work_dir(flavour, inputs.key)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with cache.staging(flavour, inputs.key, replace=force) as out:
        guest_modules: list[GuestModule] = []
        if flavour == DEFAULT:
            donor = kernel_donor(cache, inputs)
            if donor is not None:
                kernel_info = _reuse_kernel(steps, donor, out)
            else:
                kernel_info = kernel.build_kernel(steps, work, out, jobs)
                kernel_info.update(_describe_image(out / "bzImage", out / "vmlinux"))
        else:
            assert inputs.release is not None
            guest_modules, kernel_info = stock.build_stock_kernel(steps, apt, inputs.release, work, out)
            kernel_info["pvh_entry"] = _pvh_entry(out / "vmlinux")
        with steps.phase("initramfs"):
            archive = initramfs.build_initramfs(
                initramfs.BUSYBOX.read_bytes(), initramfs.busybox_applets(),
                initramfs.init_script(), guest_modules,
            )
            (out / ARTIFACTS["initramfs"]).write_bytes(archive)
        if "rootfs" in artifacts(flavour):
            with steps.phase("root disk"):
                rootfs.build_rootfs(steps, rootfs.guest_tree(guest_modules), work, out / ARTIFACTS["rootfs"])
        manifest = {
            "flavour": flavour,
            "key": inputs.key,
            "inputs": inputs.values,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
            # CPU time of the build's commands: comparable across loaded and idle hosts.
            "build_cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1),
            "kernel": kernel_info,
            "modules": [module.path for module in guest_modules],
            "cmdline": SUGGESTED_CMDLINE,
            **({"root_cmdline": rootfs.ROOT_CMDLINE} if "rootfs" in artifacts(flavour) else {}),
            "run_parameter": f"{initramfs.RUN_PARAMETER}=<percent-encoded command>",
            "files": {
                name: (out / file).stat().st_size for name, file in artifacts(flavour).items()
                if name != "manifest"
            },
        }
        (out / ARTIFACTS["manifest"]).write_text(json.dumps(manifest, indent=2) + "\n")
    with steps.phase("clean up"):  # a command, so that a slow disk still shows progress
        steps.run(["rm", "-rf", str(work)])
    found = cache.lookup(flavour, inputs.key)
    if found is None:
        raise ImageBuildError("install", f"{cache.entry_dir(flavour, inputs.key)} is incomplete", steps.log)
    return found


def kernel_inputs(values: Mapping[str, str]) -> dict[str, str | None]:
    """The inputs the default kernel is compiled from, out of a build's inputs."""
    found: dict[str, str | None] = {name: values.get(name) for name in KERNEL_INPUTS}
    if found["kernel_build_version"] is None and values.get("build_version") == "2":
        found["kernel_build_version"] = "1"  # recorded only since BUILD_VERSION 3
    return found


def kernel_donor(cache: Cache, inputs: Inputs) -> CachedImages | None:
    """The newest cache entry whose kernel was compiled from the same inputs, if any."""
    wanted = kernel_inputs(inputs.values)
    for entry in reversed(cache.with_manifest()):
        if entry.flavour != inputs.flavour or entry.key == inputs.key:
            continue
        try:
            values = entry.manifest().get("inputs", {})
        except (OSError, ValueError):
            continue  # a damaged entry gives nothing
        if (isinstance(values, dict) and kernel_inputs(values) == wanted
                and all((entry.directory / ARTIFACTS[name]).is_file() for name in _KERNEL_FILES)):
            return entry
    return None


def _reuse_kernel(steps: Steps, donor: CachedImages, out: Path) -> dict[str, object]:
    """Copy the kernel of `donor`; its description from its manifest."""
    with steps.phase("kernel"):
        steps.note(f"the kernel of {donor.directory.name}: same kernel inputs, not compiled again")
        for name in _KERNEL_FILES:
            shutil.copyfile(donor.directory / ARTIFACTS[name], out / ARTIFACTS[name])
        info = donor.manifest().get("kernel")
        if not isinstance(info, dict):
            info = _describe_image(out / "bzImage", out / "vmlinux")
    return {**info, "reused_from": donor.key}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pvh_entry(vmlinux: Path) -> str | None:
    entry = kernel_image.pvh_entry(vmlinux.read_bytes())
    return f"{entry:#x}" if entry is not None else None


def _describe_image(bzimage: Path, vmlinux: Path) -> dict[str, object]:
    return {**kernel_image.describe(bzimage.read_bytes()), "pvh_entry": _pvh_entry(vmlinux)}
