"""Shared test fixtures: /dev/kvm availability, the built test guests, and the Linux
boots that start in the background when the suite starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from linux_snapshot import GuestSnapshot

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


_background_modules: set[object] = set()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the selected Linux scenarios marked `background` (test_linux_guest.py)
    now: each takes longer than the rest of the suite, which runs meanwhile."""
    if not kvm_usable() or session.config.option.collectonly:
        return
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        scenario = callspec.params.get("boot") if callspec is not None else None
        if getattr(scenario, "background", False):
            module = item.module  # type: ignore[attr-defined]
            module.start_boot(scenario)
            _background_modules.add(module)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for module in _background_modules:
        module.stop_boots()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def default_guest(tmp_path_factory: pytest.TempPathFactory) -> GuestSnapshot:
    """The default Linux guest booted once for the session and saved
    (tests/linux_snapshot.py): `.restore()` gives each test a running clone."""
    from linux_snapshot import take_snapshot

    return take_snapshot(tmp_path_factory.mktemp("default-guest"))


def pytest_report_header(config: pytest.Config) -> str:
    return "kvm: " + ("usable" if kvm_usable() else f"MISSING — {NO_KVM_REASON}")


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built test guests (built on first use)."""
    subprocess.run(["bash", str(ROOT / "tests" / "guests" / "build.sh"), str(GUESTS)], check=True)
    return GUESTS
