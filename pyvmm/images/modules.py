"""Kernel modules for the stock kernel's initramfs: which files, in which order.

Debian's linux-image packages ship the modules but not modules.dep (their
postinst runs depmod); the build runs `depmod -b` on the extracted tree and
reads the result here. modules.dep lines are ``kernel/a/b.ko: kernel/c.ko ...``;
a module is loaded after everything it depends on.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterable, Mapping
from pathlib import Path

_SUFFIXES = (".ko.xz", ".ko.gz", ".ko.zst", ".ko")


def module_name(path: str) -> str:
    """"kernel/drivers/char/hw_random/virtio-rng.ko.xz" -> "virtio_rng" (the kernel
    treats '-' and '_' in module names alike)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """Module path -> the paths it depends on, as modules.dep lists them."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        module, _, rest = line.partition(":")
        deps[module.strip()] = rest.split()
    return deps


def parse_builtin(text: str) -> set[str]:
    """Names of the modules built into the kernel (modules.builtin)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(wanted: Iterable[str], deps: Mapping[str, list[str]], builtin: set[str]) -> list[str]:
    """The module paths to load for `wanted` (names), dependencies first, each once.
    Wanted modules that are built in need no file and are skipped."""
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise ValueError(f"modules.dep has a dependency loop through {path}")
        visiting.add(path)
        for dependency in deps.get(path, []):
            visit(dependency)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise ValueError(f"module {name} is neither built in nor in modules.dep")
        visit(by_name[key])
    return order


def read_module(path: Path) -> tuple[str, bytes]:
    """(file name as loaded in the guest, contents): compressed modules are unpacked
    here, because busybox insmod hands the bytes to the kernel as they are."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".ko.xz"):
        return name[:-3], lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return name[:-3], gzip.decompress(data)
    if name.endswith(".ko.zst"):
        raise ValueError(f"{name}: zstd-compressed modules are not supported")
    return name, data
