"""Shared test fixtures: /dev/kvm availability and the built test guests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "build" / "guests"
KVM_DEVICE = "/dev/kvm"
NO_KVM_REASON = f"{KVM_DEVICE} is not usable on this host: tests that run guests are skipped"


def kvm_usable() -> bool:
    return os.access(KVM_DEVICE, os.R_OK | os.W_OK)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if kvm_usable():
        return
    skip = pytest.mark.skip(reason=NO_KVM_REASON)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    return "kvm: " + ("usable" if kvm_usable() else f"MISSING — {NO_KVM_REASON}")


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built test guests (built on first use)."""
    subprocess.run(["bash", str(ROOT / "tests" / "guests" / "build.sh"), str(GUESTS)], check=True)
    return GUESTS
