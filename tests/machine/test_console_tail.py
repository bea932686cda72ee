"""The console keeps a bounded tail of what the guest printed."""

from __future__ import annotations

import pytest

from pyvmm.machine.console_tail import ConsoleTail


def test_keeps_everything_below_the_limit() -> None:
    tail = ConsoleTail(8)
    tail.append(b"abc")
    tail.append(b"de")
    assert tail.bytes() == b"abcde"
    assert tail.dropped == 0 and tail.total == 5


def test_keeps_the_newest_bytes_one_at_a_time() -> None:
    tail = ConsoleTail(4)
    for byte in b"0123456789":
        tail.append(bytes([byte]))
    assert tail.bytes() == b"6789"
    assert tail.total == 10 and tail.dropped == 6
    assert len(tail._buffer) < 2 * 4  # trimmed as it goes, not only when read


def test_one_large_write_keeps_its_end() -> None:
    tail = ConsoleTail(4)
    tail.append(b"x" * 1000 + b"tail")
    assert tail.bytes() == b"tail"
    assert tail.dropped == 1000 and tail.total == 1004


def test_a_limit_must_hold_something() -> None:
    with pytest.raises(ValueError):
        ConsoleTail(0)
