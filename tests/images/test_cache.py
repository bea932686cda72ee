"""Cache keys follow the inputs; entries appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvmm.images import ARTIFACTS, build, cache, initramfs, kernel, stock
from pyvmm.images.cache import Cache

VERSIONS = {"linux-source": "6.1.192-2", "busybox-static": "1:1.35.0-4", "gcc": "4:12.2.0-3",
            "e2fsprogs": "1.47.0-2"}
RELEASE = stock.StockRelease("6.1.192-2", "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")


def default_key(versions: dict[str, str | None] | None = None) -> str:
    inputs = build.default_inputs(dict(versions or VERSIONS))
    assert inputs is not None
    return inputs.key


def stock_key(busybox: str = "1:1.35.0-4", release: stock.StockRelease = RELEASE) -> str:
    inputs = build.stock_inputs(busybox, release)
    assert inputs is not None
    return inputs.key


def test_the_key_is_stable_and_ignores_order() -> None:
    assert default_key() == default_key(dict(reversed(VERSIONS.items())))
    assert cache.input_key({"a": "1", "b": "2"}) == cache.input_key({"b": "2", "a": "1"})
    assert len(default_key()) == cache.KEY_LENGTH


@pytest.mark.parametrize("package", sorted(VERSIONS))
def test_a_new_package_version_changes_the_key(package: str) -> None:
    assert default_key({**VERSIONS, package: VERSIONS[package] + "+b1"}) != default_key()


def test_the_fragment_and_init_script_are_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    before = default_key()
    before_stock = stock_key()
    monkeypatch.setattr(kernel, "fragment", lambda: b"CONFIG_SMP=y\n")
    assert default_key() != before
    assert stock_key() == before_stock, "the stock kernel does not use the fragment"
    monkeypatch.setattr(initramfs, "init_script", lambda: b"#!/bin/sh\n")
    assert stock_key() != before_stock


def test_the_build_version_is_an_input(monkeypatch: pytest.MonkeyPatch) -> None:
    before = default_key()
    monkeypatch.setattr(build, "BUILD_VERSION", build.BUILD_VERSION + 1)
    assert default_key() != before


def test_the_stock_key_follows_the_kernel_package() -> None:
    newer = stock.StockRelease("6.1.193-1", "linux-image-6.1.0-57-cloud-amd64", "6.1.193-1")
    assert stock_key(release=newer) != stock_key()
    assert stock_key(busybox="1:1.36.1-1") != stock_key()
    assert stock_key() != default_key()


def test_no_key_while_a_package_is_missing() -> None:
    assert build.default_inputs({**VERSIONS, "linux-source": None}) is None
    assert build.stock_inputs(None, RELEASE) is None


def test_the_cache_location(tmp_path: Path) -> None:
    assert cache.default_root({"PYVMM_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert cache.default_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/pyvmm/images")
    assert cache.default_root({}) == Path("~/.cache/pyvmm/images").expanduser()


def fill(directory: Path, text: str = "x") -> None:
    for file in ARTIFACTS.values():
        (directory / file).write_text(text if file != "manifest.json" else "{}")


def test_an_entry_appears_whole(tmp_path: Path) -> None:
    store = Cache(tmp_path)
    assert store.lookup("default", "0" * 16) is None
    with store.staging("default", "0" * 16) as out:
        fill(out)
        assert store.lookup("default", "0" * 16) is None, "visible before it is complete"
    found = store.lookup("default", "0" * 16)
    assert found is not None and found.path("vmlinux").read_text() == "x"
    assert [entry.key for entry in store.entries()] == ["0" * 16]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".staging")]


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = Cache(tmp_path)
    with pytest.raises(RuntimeError), store.staging("stock", "1" * 16) as out:
        fill(out)
        raise RuntimeError("compile failed")
    assert store.lookup("stock", "1" * 16) is None
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_an_entry_and_otherwise_the_first_one_stays(tmp_path: Path) -> None:
    store = Cache(tmp_path)
    for text, replace in (("old", False), ("ignored", False), ("new", True)):
        with store.staging("default", "2" * 16, replace=replace) as out:
            fill(out, text)
        found = store.lookup("default", "2" * 16)
        assert found is not None
        assert found.path("bzImage").read_text() == ("new" if replace else "old")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["default-" + "2" * 16]


def test_artifacts_by_short_or_file_name() -> None:
    assert cache.artifact_file("initramfs") == "initramfs.cpio"
    assert cache.artifact_file("initramfs.cpio") == "initramfs.cpio"
    with pytest.raises(cache.NotBuiltError):
        cache.artifact_file("System.map")


def test_only_the_default_images_have_a_root_disk(tmp_path: Path) -> None:
    store = Cache(tmp_path)
    for flavour, key in (("default", "3" * 16), ("stock", "4" * 16)):
        with store.staging(flavour, key) as out:
            fill(out)
            (out / "rootfs.ext4").unlink()
    assert store.lookup("default", "3" * 16) is None, "a default entry without rootfs.ext4 is incomplete"
    stock_images = store.lookup("stock", "4" * 16)
    assert stock_images is not None and [entry.flavour for entry in store.entries()] == ["stock"]
    with pytest.raises(cache.NotBuiltError, match="the stock images have no rootfs"):
        stock_images.path("rootfs")
