"""Fixtures for the image-build tests: the Debian tools they compare against."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _tool(name: str, package: str) -> Path:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return Path(found)


@pytest.fixture(scope="session")
def cpio_tool() -> Path:
    """Debian's cpio, the reference reader for our archives."""
    return _tool("cpio", "cpio")


@pytest.fixture(scope="session")
def busybox() -> Path:
    """busybox-static's busybox: the shell the guest's init runs under."""
    return _tool("busybox", "busybox-static")
