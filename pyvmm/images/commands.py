"""The `pyvmm images` commands (their command line is in `pyvmm.images.cli`), and
`build_with_progress` and `root_disk_with_progress`, which `pyvmm run` uses when it
boots pyvmm's own guest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyvmm.images import DEFAULT, STOCK, artifacts, guest_disk
from pyvmm.images import build as builder
from pyvmm.images.cache import Cache, CachedImages
from pyvmm.images.progress import Progress

_SHOWN = ("bzImage", "vmlinux", "initramfs", "rootfs")


def run(args: argparse.Namespace) -> int:
    """Run `pyvmm images <args.images_command>`; the exit status."""
    return _COMMANDS[args.images_command](args)


def _flavour(args: argparse.Namespace) -> str:
    return STOCK if args.stock else DEFAULT


def build_with_progress(flavour: str, *, force: bool = False, jobs: int | None = None) -> CachedImages:
    """Build (or find in the cache) the images of `flavour`, showing progress on stderr."""
    cache = Cache()
    progress = Progress.for_stream(sys.stderr)
    images, built = builder.build(flavour, cache, progress, force=force, jobs=jobs)
    if built:
        progress.message(f"{images.flavour} images built in {images.manifest().get('build_seconds')}s"
                         f" (log: {cache.log_path(images.flavour)})")
    else:
        progress.message(f"{images.flavour} images are cached (key {images.key})")
    return images


def root_disk_with_progress(images: CachedImages) -> Path:
    """The writable copy of `images`' root disk that `pyvmm run` boots (made on the first
    run, then kept: pyvmm.images.guest_disk); says so on stderr when it is made."""
    disk, made = guest_disk.writable_disk(images)
    if made:
        Progress.for_stream(sys.stderr).message(
            f"the guest's root disk is {disk}, a copy of {images.path('rootfs')}: what the guest"
            " writes there is kept between runs (`pyvmm images reset-disk` starts afresh)"
        )
    return disk


def _build(args: argparse.Namespace) -> int:
    images = build_with_progress(_flavour(args), force=args.force, jobs=args.jobs)
    for name in _SHOWN:
        if name in artifacts(images.flavour):
            print(f"{name:10} {images.path(name)}")
    return 0


def _path(args: argparse.Namespace) -> int:
    print(builder.find(_flavour(args), Cache()).path(args.name))
    return 0


def _reset_disk(args: argparse.Namespace) -> int:
    images = builder.find(DEFAULT, Cache())
    removed = guest_disk.reset_disk(images)
    if removed is None:
        print(f"{guest_disk.disk_path(images)}: not made yet; the next `pyvmm run` makes it")
    else:
        print(f"{removed}: removed; the next `pyvmm run` makes a fresh copy of {images.path('rootfs')}")
    return 0


def _list(args: argparse.Namespace) -> int:
    cache = Cache()
    entries = cache.entries()
    print(f"cache: {cache.root}")
    if not entries:
        print("(empty: run `pyvmm images build`)")
        return 0
    current = {}
    for flavour in builder.FLAVOURS:
        inputs = builder.current_inputs(flavour)
        if inputs is not None:
            current[flavour] = inputs.key
    for entry in entries:
        manifest = entry.manifest()
        kernel = manifest.get("kernel", {})
        sizes = manifest.get("files", {})
        mark = "*" if current.get(entry.flavour) == entry.key else " "
        print(
            f"{mark} {entry.flavour:8} {entry.key}  {manifest.get('built', '?'):25} "
            f"linux {kernel.get('release', '?'):22} "
            f"bzImage {_size(sizes.get('bzImage'))}  initramfs {_size(sizes.get('initramfs'))}"
            + (f"  rootfs {_size(sizes['rootfs'])}" if "rootfs" in sizes else "")
        )
    print("(* = matches today's inputs)")
    return 0


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "?"
    return f"{value / (1 << 20):.1f}M"


_COMMANDS = {"build": _build, "path": _path, "list": _list, "reset-disk": _reset_disk}
