"""A default build whose kernel inputs match a cached entry's copies that kernel and
makes the rest for real (initramfs, root disk): a userland change costs seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pyvmm.images import build, host, kernel
from pyvmm.images.cache import Cache, digest
from pyvmm.images.progress import Progress

VERSIONS = {"linux-source": "6.1.192-3", "gcc": "4:12.2.0-3"}
OLD_KEY = "0123456789abcdef"


class CompiledError(Exception):
    """kernel.build_kernel was called."""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cache:
    """A cache with a default entry as BUILD_VERSION 2 left it (no rootfs.ext4, no
    kernel_build_version), and a host whose packages all count as installed (the
    real busybox, mkfs.ext4 and debugfs do the work)."""
    real = host.installed_versions

    def versions(names: object) -> dict[str, str | None]:
        found = real(names)  # type: ignore[arg-type]
        return {name: VERSIONS.get(name, found.get(name) or "1.0") for name in found}

    monkeypatch.setattr(host, "installed_versions", versions)

    def compile_kernel(*args: object) -> dict[str, object]:
        raise CompiledError

    monkeypatch.setattr(kernel, "build_kernel", compile_kernel)
    old = tmp_path / f"default-{OLD_KEY}"
    old.mkdir()
    for name in ("bzImage", "vmlinux", "config", "initramfs.cpio"):
        (old / name).write_bytes(f"old {name}".encode())
    inputs = {"flavour": "default", "build_version": "2", "kernel.config": digest(kernel.fragment()),
              **VERSIONS, "busybox-static": "1:1.35.0-4"}  # fmt: skip
    (old / "manifest.json").write_text(json.dumps({"inputs": inputs, "kernel": {"release": "6.1.192"}}))
    return Cache(tmp_path)


def quiet() -> Progress:
    return Progress(io.StringIO(), live=False)


def test_the_kernel_of_an_entry_with_the_same_kernel_inputs_is_reused(store: Cache) -> None:
    images, built = build.build("default", store, quiet())
    assert built and images.key != OLD_KEY
    for name in ("bzImage", "vmlinux", "config"):
        assert images.path(name).read_bytes() == f"old {name}".encode()
    manifest = images.manifest()
    assert manifest["kernel"] == {"release": "6.1.192", "reused_from": OLD_KEY}
    assert manifest["root_cmdline"] == "root=/dev/vda rw"
    assert manifest["files"]["rootfs"] == images.path("rootfs").stat().st_size > 0
    assert images.path("initramfs").read_bytes()[:6] == b"070701", "a real initramfs, not the old one"
    assert "the kernel of default-" in store.log_path("default").read_text()


@pytest.mark.parametrize("changed", ["kernel.config", "linux-source", "gcc", "kernel_build_version"])
def test_any_other_kernel_input_compiles(store: Cache, changed: str) -> None:
    manifest_file = store.root / f"default-{OLD_KEY}" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["inputs"][changed] = "something else"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CompiledError):
        build.build("default", store, quiet())


def test_an_old_entry_without_rootfs_is_no_longer_complete(store: Cache) -> None:
    assert store.lookup("default", OLD_KEY) is None
    assert store.entries() == []
    assert [entry.key for entry in store.with_manifest()] == [OLD_KEY]
