"""Fixtures for the device tests."""

from __future__ import annotations

import pytest
from device_fakes import FakeLine, FakeStop


@pytest.fixture
def line() -> FakeLine:
    return FakeLine()


@pytest.fixture
def stop() -> FakeStop:
    return FakeStop()
