"""The counting guest the lifecycle, snapshot, CLI and QMP tests share: a flat
real-mode binary that prints "01234567" on COM1 over and over, so that any stretch of
its output says where the guest was (a restored guest must go on with the next
number)."""

from __future__ import annotations

import time
from collections.abc import Callable

# Real mode, flat: print "01234567" on COM1 over and over, a short delay between bytes.
COUNTER = bytes.fromhex(
    "31db"  # xor bx, bx
    "baf803"  # loop: mov dx, 0x3f8
    "88d8"  # mov al, bl
    "2407"  # and al, 7
    "0430"  # add al, '0'
    "ee"  # out dx, al
    "43"  # inc bx
    "b90001"  # mov cx, 0x100
    "e2fe"  # delay: loop delay
    "ebee"  # jmp loop
)


def sequence(start: int, length: int) -> bytes:
    """The counter's output from its `start`th byte on."""
    return bytes(ord("0") + (start + index) % 8 for index in range(length))


def counted(output: bytes, start: int = 0) -> bool:
    """Whether `output` is the counter's sequence from its `start`th byte, with no gap."""
    return output == sequence(start, len(output))


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
