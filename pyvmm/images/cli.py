"""`pyvmm images ...`: the command line of building, locating and listing the guest
images. The commands themselves are in `pyvmm.images.commands`, loaded only when one
runs: `pyvmm run --kernel ...` never needs the image cache or the builder.

    pyvmm images build [--stock] [--force] [--jobs N]
    pyvmm images path [--stock] NAME      NAME: bzImage, vmlinux, initramfs, rootfs, config, manifest
                                          (rootfs: the default flavour's root disk)
    pyvmm images list
    pyvmm images reset-disk               the default guest's writable root disk starts afresh

Paths go to stdout (one per line, for scripts); progress goes to stderr.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyvmm.images import ARTIFACTS


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of jobs, at least 1, not {text!r}")
    return int(text)


def add_images_command(commands: Any) -> None:
    """Register `images` on the top-level subparsers (an argparse _SubParsersAction)."""
    images = commands.add_parser("images", help="build and locate the guest kernel, initramfs and root disk")
    sub = images.add_subparsers(dest="images_command", required=True)

    stock_help = "Debian's stock cloud kernel instead of the default one built from linux-source"
    build = sub.add_parser("build", help="build the guest images (instant when cached)")
    build.add_argument("--stock", action="store_true", help=stock_help)
    build.add_argument("--force", action="store_true", help="rebuild even when the cache has them")
    build.add_argument("--jobs", type=_jobs, help="parallel compile jobs (default: CPUs + 1)")
    build.set_defaults(handler=_run_images_command)

    path = sub.add_parser("path", help="print the path of a cached artifact")
    path.add_argument("--stock", action="store_true", help=stock_help)
    path.add_argument("name", choices=sorted(ARTIFACTS), metavar="NAME",
                      help=f"one of {', '.join(ARTIFACTS)}")
    path.set_defaults(handler=_run_images_command)

    reset = sub.add_parser(
        "reset-disk",
        help="remove the default guest's writable root disk (the copy `pyvmm run` boots and keeps):"
        " the next run starts from a fresh copy of rootfs",
    )
    reset.set_defaults(handler=_run_images_command)

    listing = sub.add_parser("list", help="show what the cache holds")
    listing.set_defaults(handler=_run_images_command)


def _run_images_command(args: argparse.Namespace) -> int:
    from pyvmm.images import commands  # loaded here: see the module docstring

    return commands.run(args)
