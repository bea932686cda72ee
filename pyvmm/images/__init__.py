"""Guest images for pyvmm: a Linux kernel and a busybox initramfs, built from
Debian packages and cached by a hash of their inputs.

    pyvmm images build [--stock]    # build (minutes) or find (instant)
    pyvmm images path vmlinux       # where an artifact is

From Python: `pyvmm.images.build.build(flavour, Cache(), progress)` builds,
`pyvmm.images.build.find(flavour, Cache())` only looks. The parts: kernel.py
(linux-source + kernel.config), stock.py (Debian's cloud kernel), initramfs.py
and init.sh (the userland), cpio.py (the archive format), cache.py, steps.py and
progress.py (running and showing a build).
"""

DEFAULT = "default"  # the kernel built from Debian's linux-source
STOCK = "stock"  # Debian's stock cloud kernel

# What a cache entry holds: artifact name -> file name.
ARTIFACTS = {
    "bzImage": "bzImage",
    "vmlinux": "vmlinux",
    "initramfs": "initramfs.cpio",
    "config": "config",
    "manifest": "manifest.json",
}
