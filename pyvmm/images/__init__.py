"""Guest images for pyvmm: a Linux kernel, a busybox initramfs and (default
flavour) an ext4 root disk of the same userland, built from Debian packages and
cached by a hash of their inputs.

    pyvmm images build [--stock]    # build (minutes) or find (instant)
    pyvmm images path vmlinux       # where an artifact is

From Python: `pyvmm.images.build.build(flavour, Cache(), progress)` builds,
`pyvmm.images.build.find(flavour, Cache())` only looks. The parts: kernel.py
(linux-source + kernel.config), stock.py (Debian's cloud kernel), initramfs.py
and init.sh (the userland), rootfs.py (the userland as an ext4 disk image),
cpio.py (the archive format), cache.py, steps.py and progress.py (running and
showing a build).
"""

DEFAULT = "default"  # the kernel built from Debian's linux-source
STOCK = "stock"  # Debian's stock cloud kernel

# What a cache entry holds: artifact name -> file name.
ARTIFACTS = {
    "bzImage": "bzImage",
    "vmlinux": "vmlinux",
    "initramfs": "initramfs.cpio",
    "rootfs": "rootfs.ext4",
    "config": "config",
    "manifest": "manifest.json",
}
# The stock kernel's virtio drivers are modules, which only its initramfs loads:
# it cannot mount a disk root by itself, so its images have no root disk.
_NOT_IN = {STOCK: frozenset({"rootfs"})}


def artifacts(flavour: str) -> dict[str, str]:
    """What a cache entry of `flavour` holds: artifact name -> file name."""
    missing = _NOT_IN.get(flavour, frozenset())
    return {name: file for name, file in ARTIFACTS.items() if name not in missing}
