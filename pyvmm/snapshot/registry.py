"""The tag registry: every saved-state dataclass registers itself here, beside its
definition, under a stable tag (`@saved_state("serial")`). The codec writes the tag and
finds the class by it on the way back, so a snapshot file names no Python module, and
this package never imports a device (Firecracker's `persist.rs` keeps each device's
state beside the device in the same way)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

_State = TypeVar("_State", bound=type)

_BY_TAG: dict[str, type] = {}
_BY_CLASS: dict[type, str] = {}


def saved_state(tag: str) -> Callable[[_State], _State]:
    """Register a frozen dataclass of plain fields as a saved state named `tag`."""

    def register(cls: _State) -> _State:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__}: a saved state is a frozen dataclass")
        known = _BY_TAG.get(tag)
        if known is not None and known is not cls:
            raise TypeError(f"saved-state tag {tag!r} is taken by {known.__qualname__}")
        _BY_TAG[tag] = cls
        _BY_CLASS[cls] = tag
        return cls

    return register


def state_class(tag: str) -> type | None:
    """The class registered as `tag`, or None."""
    return _BY_TAG.get(tag)


def tag_of(cls: type) -> str | None:
    """The tag `cls` is registered under, or None."""
    return _BY_CLASS.get(cls)
