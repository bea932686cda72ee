"""Checking a command's `arguments` against its schema before it runs, with the error
texts of QEMU's QObject input visitor (qapi/qobject-input-visitor.c): a missing or
unexpected member, a wrong type, a value an enum does not have. QMP promises these
are reported before the command has any side effect (qmp-spec.rst, "Compatibility
Considerations")."""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.api.protocol import QmpError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Scalar:
    """A JSON string, integer (int64) or boolean."""

    kind: type
    expected: str  # the type's name in QEMU's messages


STR = Scalar(str, "string")
INT = Scalar(int, "integer")
BOOL = Scalar(bool, "boolean")


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True)
class ArrayOf:
    item: Kind


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    optional: bool = False


@dataclass(frozen=True)
class Struct:
    fields: tuple[Field, ...] = ()


Kind = Scalar | Enum | ArrayOf | Struct
NO_ARGUMENTS = Struct()


def _type_error(path: str, expected: str) -> QmpError:
    return QmpError(f"Invalid parameter type for '{path}', expected: {expected}")


def _check_scalar(kind: Scalar, value: object, path: str) -> object:
    # bool is an int to Python, never to QMP
    if kind is BOOL:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, kind.kind) and not isinstance(value, bool)
    if not ok:
        raise _type_error(path, kind.expected)
    if isinstance(value, int) and kind is INT and not INT64_MIN <= value <= INT64_MAX:
        raise QmpError(f"Parameter '{path}' expects int64")
    return value


def check(kind: Kind, value: object, path: str = "") -> object:
    """`value` if it has the shape `kind` describes, else `QmpError`."""
    if isinstance(kind, Scalar):
        return _check_scalar(kind, value, path)
    if isinstance(kind, Enum):
        if not isinstance(value, str):
            raise _type_error(path, "string")
        if value not in kind.values:
            raise QmpError(f"Parameter '{path}' does not accept value '{value}'")
        return value
    if isinstance(kind, ArrayOf):
        if not isinstance(value, list):
            raise _type_error(path, "array")
        return [check(kind.item, item, f"{path}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, dict):
        raise _type_error(path, "object")
    return check_struct(kind, value, path)


def check_struct(kind: Struct, value: dict[str, object], path: str = "") -> dict[str, object]:
    prefix = f"{path}." if path else ""
    known = {field.name for field in kind.fields}
    checked: dict[str, object] = {}
    for field in kind.fields:
        if field.name in value:
            checked[field.name] = check(field.kind, value[field.name], prefix + field.name)
        elif not field.optional:
            raise QmpError(f"Parameter '{prefix}{field.name}' is missing")
    for key in value:
        if key not in known:
            raise QmpError(f"Parameter '{prefix}{key}' is unexpected")
    return checked
