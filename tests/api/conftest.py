"""Fixtures for the QMP tests: a `FakeMachine` and a started server on a unix socket."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.fake_machine import FakeMachine

from pyvmm.api.address import UnixAddress
from pyvmm.api.qmp import QmpServer


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for a unix socket path (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qmp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


@pytest.fixture
def server(machine: FakeMachine, short_dir: Path, caplog: pytest.LogCaptureFixture) -> Iterator[QmpServer]:
    caplog.set_level(logging.WARNING, logger="pyvmm.api")
    qmp = QmpServer(machine, UnixAddress(str(short_dir / "qmp.sock")))
    qmp.start()
    yield qmp
    qmp.close()
    # nothing the tests send may make the server log an error (a bug or a lost thread)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]
