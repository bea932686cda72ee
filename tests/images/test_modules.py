"""Choosing the stock kernel's modules from modules.dep."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from pyvmm.images import modules

DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko
"""
# modules.dep has one line per module; join the continuation lines of the fixture.
DEPS = modules.parse_modules_dep(DEP.replace("\\\n", ""))


def test_names_ignore_suffixes_and_dashes() -> None:
    assert modules.module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert modules.module_name("ext4.ko") == "ext4"


def test_dependencies_load_first_and_each_module_once() -> None:
    order = modules.load_order(["virtio_net", "virtio_pci", "virtio-rng"], DEPS, builtin=set())
    names = [modules.module_name(path) for path in order]
    assert len(names) == len(set(names))
    for module, dependencies in DEPS.items():
        if module in order:
            assert all(order.index(dep) < order.index(module) for dep in dependencies)
    assert names[-1] == "virtio_rng"


def test_built_in_modules_are_skipped_and_unknown_ones_refused() -> None:
    builtin = modules.parse_builtin("kernel/fs/ext4/ext4.ko\n")
    assert modules.load_order(["ext4"], DEPS, builtin) == []
    with pytest.raises(ValueError, match="virtio_fs"):
        modules.load_order(["virtio_fs"], DEPS, builtin)


def test_dependency_loops_are_refused() -> None:
    with pytest.raises(ValueError, match="loop"):
        modules.load_order(["a"], {"a.ko": ["b.ko"], "b.ko": ["a.ko"]}, set())


def test_compressed_modules_are_unpacked(tmp_path: Path) -> None:
    (tmp_path / "virtio-rng.ko.xz").write_bytes(lzma.compress(b"\x7fELF module"))
    assert modules.read_module(tmp_path / "virtio-rng.ko.xz") == ("virtio-rng.ko", b"\x7fELF module")
    (tmp_path / "plain.ko").write_bytes(b"\x7fELF")
    assert modules.read_module(tmp_path / "plain.ko") == ("plain.ko", b"\x7fELF")
