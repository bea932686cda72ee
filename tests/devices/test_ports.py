from __future__ import annotations

import pytest

from pyvmm.devices import PortSink
from pyvmm.errors import ConfigError


def test_reads_all_ones_by_default_and_ignores_writes() -> None:
    sink = PortSink()
    sink.write(0, 1, 0x42)
    assert sink.read(0, 1) == 0xFF
    assert sink.read(0, 2) == 0xFFFF
    assert sink.last_value == 0x42


def test_reads_the_given_byte() -> None:
    sink = PortSink(fill=0x00)
    assert sink.read(0, 4) == 0
    assert PortSink(fill=0x5A).read(0, 2) == 0x5A5A


def test_fill_must_be_a_byte() -> None:
    with pytest.raises(ConfigError):
        PortSink(fill=0x100)
