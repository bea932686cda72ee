"""QMP's wire format (docs/interop/qmp-spec.rst): the greeting, commands, success and
error responses, events; and checking a parsed message before anything runs
(QEMU's qapi/qmp-dispatch.c `qmp_dispatch_check_obj`, with its error texts)."""

from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass

from pyvmm.errors import VmmError

# The QEMU release whose QMP schema the commands follow: tools read the greeting's
# version to decide what they may ask. `package` says who really answers.
QEMU_VERSION = {"major": 9, "minor": 2, "micro": 0}
PACKAGE = "pyvmm 0.1.0"


class ErrorClass(enum.Enum):
    """QEMU's QapiErrorClass (qapi/error.json)."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    KVM_MISSING_CAP = "KVMMissingCap"


class QmpError(VmmError):
    """A command's failure as a client sees it: an error class and a description."""

    def __init__(self, desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


NO_ID = object()


@dataclass(frozen=True)
class Request:
    """A checked command message; `id` is `NO_ID` when the client sent none."""

    command: str
    arguments: dict[str, object]
    id: object


def has_id(value: object) -> bool:
    return value is not NO_ID


def _no_constant(name: str) -> object:
    raise ValueError(f"invalid literal {name}")


def _finite(text: str) -> float:
    # 1e999 is JSON but its float is not: it could not be echoed back as JSON
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def decode(data: bytes) -> object:
    """A frame's JSON value; `QmpError` as QEMU's parser reports (no id yet)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise QmpError("JSON parse error, invalid UTF-8 sequence") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise QmpError("JSON nesting depth limit exceeded") from None
    except ValueError as error:
        reason = str(getattr(error, "msg", error))
        raise QmpError(f"JSON parse error, {reason[:1].lower()}{reason[1:]}") from None


def check_request(message: object) -> Request:
    """The command a decoded message asks for; `QmpError` (with `RequestError.id`
    when the message had one) for a malformed one."""
    if not isinstance(message, dict):
        raise QmpError("QMP input must be a JSON object")
    request_id = message.get("id", NO_ID)
    try:
        return _check_members(message, request_id)
    except QmpError as error:
        raise RequestError(error.desc, request_id) from None


class RequestError(QmpError):
    """A malformed command whose `id` could be read."""

    def __init__(self, desc: str, request_id: object) -> None:
        super().__init__(desc)
        self.id = request_id


def _check_members(message: dict[str, object], request_id: object) -> Request:
    # pyvmm offers no out-of-band execution, so `exec-oob` is a member like any other
    # unknown one (QEMU with the oob capability off)
    for key, value in message.items():
        if key == "execute":
            if not isinstance(value, str):
                raise QmpError("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QmpError(f"QMP input member '{key}' is unexpected")
    command = message.get("execute")
    if not isinstance(command, str):
        raise QmpError("QMP input lacks member 'execute'")
    arguments = message.get("arguments", {})
    assert isinstance(arguments, dict)
    return Request(command, arguments, request_id)


def encode(message: dict[str, object]) -> bytes:
    """One line of output: ASCII JSON ending in CRLF (qmp-spec.rst, "General
    Definitions")."""
    return (
        json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(", ", ": ")).encode("ascii")
        + b"\r\n"
    )


def greeting() -> dict[str, object]:
    """The server greeting; no capability offered (no out-of-band execution)."""
    return {"QMP": {"version": version(), "capabilities": []}}


def version() -> dict[str, object]:
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


def success(result: object, request_id: object) -> dict[str, object]:
    message: dict[str, object] = {"return": result}
    if has_id(request_id):
        message["id"] = request_id
    return message


def failure(error: QmpError, request_id: object = NO_ID) -> dict[str, object]:
    message: dict[str, object] = {"error": {"class": error.error_class.value, "desc": error.desc}}
    if has_id(request_id):
        message["id"] = request_id
    return message


def event(name: str, data: dict[str, object], when: float | None = None) -> dict[str, object]:
    """An asynchronous event with the time it happened (qmp-spec.rst, "Asynchronous
    events"); QEMU leaves `data` out when the event has none."""
    now = time.time() if when is None else when
    seconds = int(now)
    message: dict[str, object] = {
        "event": name,
        "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)},
    }
    if data:
        message["data"] = data
    return message
