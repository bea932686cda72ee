"""The tag registry: every saved-state dataclass registers itself here, beside its
definition, under a stable tag (`@saved_state("serial")`). The codec writes the tag and
finds the class by it on the way back, so a snapshot file names no Python module, and
this package never imports a device (Firecracker's `persist.rs` keeps each device's
state beside the device in the same way)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar

_State = TypeVar("_State", bound=type)

MAX_TAG = 64  # characters: a tag is a short name, written with every state


class SavedState(Protocol):
    """What a device's `save()` returns, as its users see it: an instance of a frozen
    dataclass registered here (what is registered is `saved_state`'s to check; the
    type says only "a dataclass", which keeps `pyvmm.devices` from naming the PCI or
    virtio state classes)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


_BY_TAG: dict[str, type] = {}
_BY_CLASS: dict[type, str] = {}


def saved_state(tag: str) -> Callable[[_State], _State]:
    """Register a frozen dataclass of plain fields as a saved state named `tag`. Every
    field is set by the constructor (the codec builds the class from its fields by
    name) and the class checks nothing on construction (`restore()` does)."""

    def register(cls: _State) -> _State:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__}: a saved state is a frozen dataclass")
        if hasattr(cls, "__post_init__") or not all(f.init for f in dataclasses.fields(cls)):
            raise TypeError(f"{cls.__name__}: a saved state is built from its fields alone")
        if not 0 < len(tag) <= MAX_TAG or not tag.isascii() or not tag.isprintable():
            raise TypeError(f"{cls.__name__}: saved-state tag {tag!r} is not 1-{MAX_TAG} printable ASCII")
        known = _BY_TAG.get(tag)
        if known is not None and known is not cls:
            raise TypeError(f"saved-state tag {tag!r} is taken by {known.__qualname__}")
        if _BY_CLASS.get(cls, tag) != tag:
            raise TypeError(f"{cls.__name__} is registered as {_BY_CLASS[cls]!r} already")
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


def registered() -> Mapping[str, type]:
    """Every registered state class by its tag (a read-only view)."""
    return MappingProxyType(_BY_TAG)
