"""Checks for restoring a device's saved state, which is untrusted input.

A snapshot file can be edited, truncated or written by another program, so every
device's `restore()` checks each field of its state on its own (exact type, range,
length) and against the others before it changes anything, as virtio-queue's
`QueueState` is restored through a checked conversion. These helpers give every device
the same checks and the same one-line `StateError`.
"""

from __future__ import annotations

import reprlib
from typing import TypeVar

from pyvmm.errors import StateError

_State = TypeVar("_State")
_short = reprlib.Repr()  # a hostile state may hold a huge value: name it briefly
_short.maxstring = _short.maxother = 40


def fail(device: str, message: str) -> StateError:
    """The error for a state of `device` that cannot be restored."""
    return StateError(f"{device} state: {message}")


def check_type(device: str, state: object, kind: type[_State]) -> _State:
    """`state` itself, if it is exactly a `kind` (no subclass: its fields are known)."""
    if type(state) is not kind:
        raise fail(device, f"expected {kind.__name__}, got {type(state).__name__}")
    return state


def check_int(device: str, name: str, value: object, low: int, high: int) -> int:
    """A plain int in [low, high]; a bool or an IntEnum is refused, as a serializer
    writing the state back would not keep them apart."""
    if type(value) is not int:
        raise fail(device, f"{name} is {_short.repr(value)}, not an int")
    if not low <= value <= high:
        raise fail(device, f"{name} {value:#x} is outside {low:#x}-{high:#x}")
    return value


def check_byte(device: str, name: str, value: object) -> int:
    return check_int(device, name, value, 0, 0xFF)


def check_mask(device: str, name: str, value: object, allowed: int) -> int:
    """An int with no bits outside `allowed`."""
    number = check_int(device, name, value, 0, allowed)
    if number & ~allowed:
        raise fail(device, f"{name} {number:#x} has bits outside {allowed:#x}")
    return number


def check_bool(device: str, name: str, value: object) -> bool:
    if type(value) is not bool:
        raise fail(device, f"{name} is {_short.repr(value)}, not a bool")
    return value


def check_bytes(device: str, name: str, value: object, low: int, high: int) -> bytes:
    """Immutable bytes of a length in [low, high]."""
    if type(value) is not bytes:
        raise fail(device, f"{name} is {_short.repr(value)}, not bytes")
    if not low <= len(value) <= high:
        raise fail(device, f"{name} holds {len(value)} bytes, not {low}-{high}")
    return value


def check_tuple(device: str, name: str, value: object, high: int) -> tuple[object, ...]:
    """A tuple of at most `high` entries (each checked by the caller)."""
    if type(value) is not tuple:
        raise fail(device, f"{name} is {_short.repr(value)}, not a tuple")
    if len(value) > high:
        raise fail(device, f"{name} holds {len(value)} entries, more than {high}")
    return value
