"""The `iasl` fixture for the ACPI tests that check tables with Intel's compiler."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def iasl() -> str:
    path = shutil.which("iasl")
    if path is None:
        pytest.fail(
            "iasl (Intel ACPICA) is not installed: install the Debian package acpica-tools "
            "(`apt-get install -y acpica-tools`, part of scripts/setup.sh)"
        )
    return path
