"""The saved-state codec: a tree of registered states as bytes, and back (MessagePack,
https://github.com/msgpack/msgpack/blob/master/spec.md).

What a tree holds: None, bool, int of any size, bytes, str, tuples, dicts with str
keys (`DeviceManager.save()`'s, by device name) and instances of the frozen
dataclasses registered with `pyvmm.snapshot.registry`, each written as its tag and
its fields by name, so the bytes name no Python module and a field moved in the
class does not move in the file. On the wire:

- a state is a 2-array: ext type `_TAG` holding the tag (UTF-8), then a map of field
  name to value. Nothing else holds a tag, so a tuple is never taken for a state;
- a tuple is an array, a dict a map (decoded as tuple and dict again);
- an int outside msgpack's 64-bit formats is ext type `_BIG_INT` (two's complement,
  big-endian, at most `MAX_BIG_INT_BYTES`): the RTC's offset from the host clock
  reaches about 2**68 ns.

Enums are not written: `pyvmm.snapshot.checks` refuses them on restore (a plain
int must come back as a plain int), so `save()` returns plain ints and `encode`
refuses an enum, as any other type, with `StateError`.

`decode` reads untrusted input (a snapshot file). It checks the structure: the input
size (`MAX_ENCODED`), msgpack's own format, every container's length, nesting
(`MAX_DEPTH`), each value's type, each tag (registered) and each state's fields
(exactly the class's, each once). Anything else is `StateError`, never another
exception. It does not check field values: each device's `restore()` does, as for a
state built in memory.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from typing import Final

import msgpack  # type: ignore[import-untyped]  # ships no type information

from pyvmm.errors import StateError
from pyvmm.snapshot.registry import MAX_TAG, state_class, tag_of

MAX_ENCODED: Final = 4 << 20  # bytes: pyvmm's PC with 15 devices saves about 90 KiB
MAX_DEPTH: Final = 32  # containers within containers: a machine's states nest 7 deep
MAX_ITEMS: Final = 1 << 16  # entries in one array or map (real ones: a few dozen at most)
MAX_STR: Final = 1 << 16  # bytes of one str (device names, tags, field names)
MAX_BIG_INT_BYTES: Final = 32  # 256 bits: far past any register, and short to print

# msgpack application ext types (0-127; msgpack reserves the negative ones).
_BIG_INT: Final = 1
_TAG: Final = 2
_INT_LOW, _INT_HIGH = -(1 << 63), (1 << 64) - 1  # msgpack's own int formats

_short = reprlib.Repr()  # untrusted names and values: quoted briefly
_short.maxstring = _short.maxother = 80


def _fail(message: str) -> StateError:
    return StateError(f"saved state: {message}")


@dataclasses.dataclass(frozen=True)
class _Tag:
    """A decoded `_TAG` ext: only ever the first entry of a state's array."""

    name: str


# --- encoding -------------------------------------------------------------------------


def encode(state: object) -> bytes:
    """`state`, a tree of registered states and plain values, as bytes. `StateError`
    for what `decode` could not give back as it is: an unregistered class, an enum,
    a list, a float, a dict key that is not a str, nesting past `MAX_DEPTH`, a
    container past `MAX_ITEMS`, or a result past `MAX_ENCODED`."""
    data: bytes = msgpack.packb(_plain(state, 0), use_bin_type=True)
    if len(data) > MAX_ENCODED:
        raise _fail(f"{len(data)} bytes encoded, more than {MAX_ENCODED}")
    return data


def _plain(value: object, depth: int) -> object:
    """`value` as what msgpack packs (type checks exact: a subclass is refused)."""
    kind = type(value)
    if value is None or kind in (bool, bytes):
        return value
    if kind is str:
        assert isinstance(value, str)
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise _fail("a str that UTF-8 cannot hold (a lone surrogate)") from None
        if size > MAX_STR:
            raise _fail(f"a str of {size} bytes, more than {MAX_STR}")
        return value
    if kind is int:
        assert isinstance(value, int)
        return value if _INT_LOW <= value <= _INT_HIGH else msgpack.ExtType(_BIG_INT, _int_bytes(value))
    if depth >= MAX_DEPTH:
        raise _fail(f"nested deeper than {MAX_DEPTH}")
    if kind is tuple:
        assert isinstance(value, tuple)
        _check_items("a tuple", len(value))
        return tuple(_plain(item, depth + 1) for item in value)
    if kind is dict:
        assert isinstance(value, dict)
        _check_items("a dict", len(value))
        if not all(type(key) is str for key in value):
            raise _fail("a dict key is not a str")
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    tag = tag_of(kind)
    if tag is None:
        raise _fail(f"{kind.__qualname__} is not a registered saved state nor a plain value")
    fields = {name: _plain(getattr(value, name), depth + 1) for name in _field_names(kind)}
    return (msgpack.ExtType(_TAG, tag.encode()), fields)


def _int_bytes(value: int) -> bytes:
    size = (value + (value < 0)).bit_length() // 8 + 1  # room for the sign bit
    if size > MAX_BIG_INT_BYTES:
        raise _fail(f"an int of {value.bit_length()} bits, more than {8 * MAX_BIG_INT_BYTES}")
    return value.to_bytes(size, "big", signed=True)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _check_items(what: str, count: int) -> None:
    if count > MAX_ITEMS:
        raise _fail(f"{what} of {count} entries, more than {MAX_ITEMS}")


# --- decoding -------------------------------------------------------------------------


def decode(data: bytes) -> object:
    """The tree `encode` wrote into `data`, checked for structure (module docstring);
    `StateError` for anything else.

    A tag is known once the module defining its class was imported (building the
    machine the states go to imports every device it places)."""
    if type(data) is not bytes:
        raise _fail(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_ENCODED:
        raise _fail(f"{len(data)} bytes, more than {MAX_ENCODED}")
    try:
        unpacked = msgpack.unpackb(
            data,
            use_list=False,
            raw=False,  # str must be UTF-8
            strict_map_key=True,
            object_pairs_hook=_map,
            ext_hook=_ext,
            max_str_len=MAX_STR,
            max_bin_len=MAX_ENCODED,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=max(MAX_BIG_INT_BYTES, MAX_TAG),  # so a tag's length too
        )
    except StateError:
        raise
    except Exception as error:  # msgpack's errors are many (ValueError, FormatError, ...)
        detail = str(error) or type(error).__name__
        raise _fail(f"not a saved-state encoding ({_short.repr(detail)})") from None
    return _value(unpacked, 0)


def _map(pairs: list[tuple[object, object]]) -> dict[object, object]:
    """A map with each key once (msgpack would keep the last of two silently)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _fail("a map holds a key twice")
    return result


def _ext(code: int, payload: bytes) -> object:
    if code == _BIG_INT:
        if not 0 < len(payload) <= MAX_BIG_INT_BYTES:
            raise _fail(f"an int of {len(payload)} bytes, not 1-{MAX_BIG_INT_BYTES}")
        return int.from_bytes(payload, "big", signed=True)
    if code == _TAG:
        try:
            return _Tag(payload.decode())
        except UnicodeDecodeError:
            raise _fail("a tag that is not UTF-8") from None
    raise _fail(f"unknown ext type {code}")


def _value(value: object, depth: int) -> object:
    """`value` as msgpack gave it, checked, with states built."""
    kind = type(value)
    if value is None or kind in (bool, int, bytes, str):
        return value
    if kind is _Tag:
        raise _fail("a tag outside a state")
    if kind not in (tuple, dict):
        raise _fail(f"a value of type {kind.__name__}")  # float, Timestamp
    if depth >= MAX_DEPTH:
        raise _fail(f"nested deeper than {MAX_DEPTH}")
    if kind is dict:
        assert isinstance(value, dict)
        if not all(type(key) is str for key in value):
            raise _fail("a map key is not a str")
        return {key: _value(item, depth + 1) for key, item in value.items()}
    assert isinstance(value, tuple)
    if value and type(value[0]) is _Tag:
        return _state(value, depth)
    return tuple(_value(item, depth + 1) for item in value)


def _state(value: tuple[object, ...], depth: int) -> object:
    tag = value[0]
    assert isinstance(tag, _Tag)
    cls = state_class(tag.name)
    if cls is None:
        raise _fail(f"unknown tag {_short.repr(tag.name)}: no saved state is registered under it")
    if len(value) != 2 or type(value[1]) is not dict:
        raise _fail(f"{tag.name}: not a tag and a map of fields")
    given = value[1]
    assert isinstance(given, dict)
    names = _field_names(cls)
    missing = [name for name in names if name not in given]
    if missing:
        raise _fail(f"{tag.name}: missing field(s) {', '.join(missing)}")
    extra = [key for key in given if key not in names]
    if extra:
        raise _fail(f"{tag.name}: unknown field(s) {_short.repr(extra)}")
    build: Callable[..., object] = cls
    return build(**{name: _value(given[name], depth + 1) for name in names})
