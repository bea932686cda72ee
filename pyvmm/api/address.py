"""Where the QMP server listens: the subset of QEMU's socket chardev syntax
(docs/system/invocation, `-chardev socket` / `-qmp`) that makes a listening server.

    unix:PATH[,server=on][,wait=off]
    tcp:HOST:PORT[,server=on][,wait=off]     HOST may be [v6], empty = every address

The server never waits for its first client: `wait=off` (or `nowait`) is accepted and
is what happens anyway; `server=on` (or `server`) likewise. Anything else - a client
socket (`server=off`), `wait=on`, another option or backend - is a `ConfigError`.
As QEMU, the host given is the host bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.errors import ConfigError

# sizeof(sockaddr_un.sun_path) less the terminating NUL
UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class TcpAddress:
    host: str  # "" binds every address
    port: int  # 0 asks the kernel for a free port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


QmpAddress = UnixAddress | TcpAddress

# option → values that mean "a server that does not wait", as QEMU spells them
_FLAGS = {"server": ("on", "yes", "true"), "wait": ("off", "no", "false")}


def _refuse(text: str, why: str) -> ConfigError:
    return ConfigError(f"--qmp {text!r}: {why}")


def _check_options(text: str, options: list[str]) -> None:
    for option in options:
        key, sep, value = option.partition("=")
        if key == "nowait" and not sep:
            continue
        if key not in _FLAGS:
            raise _refuse(text, f"unknown option {key!r} (only server=on and wait=off)")
        if sep and value not in _FLAGS[key]:
            raise _refuse(text, f"{key}={value} is not supported: the QMP server listens and never waits")
        if not sep and key == "wait":
            raise _refuse(text, "wait=on is not supported: the QMP server never waits for a client")


def _parse_tcp(text: str, rest: str) -> TcpAddress:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise _refuse(text, "expected tcp:[IPV6]:PORT")
        port_text = tail[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or ":" in host:
            raise _refuse(text, "expected tcp:HOST:PORT")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 0xFFFF:
        raise _refuse(text, f"port {port_text!r} is not a number from 0 to 65535")
    if any(c.isspace() or c == "\0" for c in host):
        raise _refuse(text, f"host {host!r} is not a host name or address")
    return TcpAddress(host, int(port_text))


def parse_address(text: str) -> QmpAddress:
    """The address `--qmp TEXT` names; `ConfigError` (one line) for anything else."""
    backend, colon, rest = text.partition(":")
    if not colon:
        raise _refuse(text, "expected unix:PATH or tcp:HOST:PORT")
    # A unix path may itself hold commas only if QEMU's ",," escape is used: refuse it
    # rather than guess.
    target, *options = rest.split(",")
    _check_options(text, options)
    if backend == "unix":
        if not target or "\0" in target:
            raise _refuse(text, "the socket path is empty")
        if len(target.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
            raise _refuse(text, f"the socket path is longer than {UNIX_PATH_MAX} bytes")
        return UnixAddress(target)
    if backend == "tcp":
        return _parse_tcp(text, target)
    raise _refuse(text, f"unsupported backend {backend!r}: expected unix: or tcp:")
