"""`pyvmm images ...`: build, locate and list the guest images.

    pyvmm images build [--stock] [--force] [--jobs N]
    pyvmm images path [--stock] NAME      NAME: bzImage, vmlinux, initramfs, config, manifest
    pyvmm images list

Paths go to stdout (one per line, for scripts); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyvmm.images import DEFAULT, STOCK
from pyvmm.images.cache import ARTIFACTS, Cache, CachedImages
from pyvmm.images.progress import Progress

_SHOWN = ("bzImage", "vmlinux", "initramfs")


def _flavour(args: argparse.Namespace) -> str:
    return STOCK if args.stock else DEFAULT


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of jobs, at least 1, not {text!r}")
    return int(text)


def add_images_command(commands: Any) -> None:
    """Register `images` on the top-level subparsers (an argparse _SubParsersAction)."""
    images = commands.add_parser("images", help="build and locate the guest kernel and initramfs")
    sub = images.add_subparsers(dest="images_command", required=True)

    stock_help = "Debian's stock cloud kernel instead of the default one built from linux-source"
    build = sub.add_parser("build", help="build the guest images (instant when cached)")
    build.add_argument("--stock", action="store_true", help=stock_help)
    build.add_argument("--force", action="store_true", help="rebuild even when the cache has them")
    build.add_argument("--jobs", type=_jobs, help="parallel compile jobs (default: CPUs + 1)")
    build.set_defaults(handler=_build)

    path = sub.add_parser("path", help="print the path of a cached artifact")
    path.add_argument("--stock", action="store_true", help=stock_help)
    path.add_argument("name", choices=sorted(ARTIFACTS), metavar="NAME",
                      help=f"one of {', '.join(ARTIFACTS)}")
    path.set_defaults(handler=_path)

    listing = sub.add_parser("list", help="show what the cache holds")
    listing.set_defaults(handler=_list)


def build_with_progress(flavour: str, *, force: bool = False, jobs: int | None = None) -> CachedImages:
    """Build (or find in the cache) the images of `flavour`, showing progress on stderr."""
    from pyvmm.images import build as builder  # here, not above: `pyvmm run` need not load it

    cache = Cache()
    progress = Progress.for_stream(sys.stderr)
    images, built = builder.build(flavour, cache, progress, force=force, jobs=jobs)
    if built:
        progress.message(f"{images.flavour} images built in {images.manifest().get('build_seconds')}s"
                         f" (log: {cache.log_path(images.flavour)})")
    else:
        progress.message(f"{images.flavour} images are cached (key {images.key})")
    return images


def _build(args: argparse.Namespace) -> int:
    images = build_with_progress(_flavour(args), force=args.force, jobs=args.jobs)
    for name in _SHOWN:
        print(f"{name:10} {images.path(name)}")
    return 0


def _path(args: argparse.Namespace) -> int:
    from pyvmm.images import build as builder

    print(builder.find(_flavour(args), Cache()).path(args.name))
    return 0


def _list(args: argparse.Namespace) -> int:
    cache = Cache()
    entries = cache.entries()
    print(f"cache: {cache.root}")
    if not entries:
        print("(empty: run `pyvmm images build`)")
        return 0
    from pyvmm.images import build as builder

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
        )
    print("(* = matches today's inputs)")
    return 0


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "?"
    return f"{value / (1 << 20):.1f}M"
