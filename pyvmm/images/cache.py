"""The image cache: one directory per (flavour, hash of the inputs).

    $PYVMM_CACHE_DIR or ${XDG_CACHE_HOME:-~/.cache}/pyvmm/images/
        default-<key>/   bzImage  vmlinux  config  initramfs.cpio  rootfs.ext4  manifest.json
        stock-<key>/     the same but rootfs.ext4, for the stock Debian kernel
        logs/<flavour>.log   the last build's command output
        work/            scratch trees while building (removed after success)

An entry appears whole or not at all: it is assembled in a staging directory
beside it and renamed into place. A lock file per flavour keeps two builds of
the same flavour from running at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvmm.images import ARTIFACTS, artifacts
from pyvmm.images.errors import NotBuiltError

CACHE_ENV = "PYVMM_CACHE_DIR"
KEY_LENGTH = 16
MANIFEST = ARTIFACTS["manifest"]


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg) / "pyvmm" / "images"


def input_key(inputs: Mapping[str, str]) -> str:
    """A short hash of the inputs: equal inputs, equal key, whatever their order."""
    canonical = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_file(name: str) -> str:
    """The file name of an artifact, accepting its short name or its file name."""
    if name in ARTIFACTS:
        return ARTIFACTS[name]
    if name in ARTIFACTS.values():
        return name
    raise NotBuiltError(f"no artifact named {name!r} (one of: {', '.join(ARTIFACTS)})")


@dataclass(frozen=True)
class CachedImages:
    """A complete cache entry."""

    flavour: str
    key: str
    directory: Path

    def path(self, name: str) -> Path:
        file = artifact_file(name)
        if file not in artifacts(self.flavour).values():
            raise NotBuiltError(f"the {self.flavour} images have no {name}")
        return self.directory / file

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path("manifest").read_text())
        return data


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_root()

    def entry_dir(self, flavour: str, key: str) -> Path:
        return self.root / f"{flavour}-{key}"

    def log_path(self, flavour: str) -> Path:
        return self.root / "logs" / f"{flavour}.log"

    def work_dir(self, flavour: str, key: str) -> Path:
        return self.root / "work" / f"{flavour}-{key}"

    def lookup(self, flavour: str, key: str) -> CachedImages | None:
        entry = CachedImages(flavour, key, self.entry_dir(flavour, key))
        if all(entry.path(name).is_file() for name in artifacts(flavour)):
            return entry
        return None

    def entries(self) -> list[CachedImages]:
        """Every complete entry, oldest first."""
        found = []
        for entry in self.with_manifest():
            complete = self.lookup(entry.flavour, entry.key)
            if complete is not None:
                found.append(complete)
        return found

    def with_manifest(self) -> list[CachedImages]:
        """Every entry with a manifest, oldest first, complete or not by today's list
        of artifacts (one from an older build may lack an artifact added since)."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            flavour, dash, key = directory.name.rpartition("-")
            if (dash and len(key) == KEY_LENGTH and not flavour.startswith(".")
                    and (directory / MANIFEST).is_file()):
                found.append(CachedImages(flavour, key, directory))
        return sorted(found, key=lambda entry: entry.path("manifest").stat().st_mtime)

    @contextmanager
    def lock(self, flavour: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{flavour}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def staging(self, flavour: str, key: str, replace: bool = False) -> Iterator[Path]:
        """A directory to fill; on a clean exit it becomes the entry, by one rename.
        An existing complete entry is kept unless `replace`; the one it replaces is
        first renamed aside, so readers see the old entry or the new, never half."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{flavour}-{key}-", dir=self.root))
        try:
            yield staging
            staging.chmod(0o755)
            target = self.entry_dir(flavour, key)
            if target.exists():
                if not replace and self.lookup(flavour, key) is not None:
                    return
                os.rename(target, staging.with_name(staging.name + "-old"))
            os.rename(staging, target)
        finally:
            for leftover in (staging, staging.with_name(staging.name + "-old")):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
