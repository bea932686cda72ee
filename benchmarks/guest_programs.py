"""The static programs that benchmark and test guests run (benchmarks/guest_tools/*.c),
built on the host and handed to a guest on a read-only disk.

The guests' userland is busybox alone: a program that times or checksums its own
transfer (diskio, netio) says what the device did, where a timed busybox command
would mostly measure the guest's slow kernel code (exec, 1 KiB system calls).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "guest_tools"
TOOLS_OUT = Path(__file__).resolve().parent.parent / "build" / "benchmarks"
SECTOR = 512


class ToolBuildError(Exception):
    """A program could not be built (no C compiler, or a compile error)."""


def program(name: str) -> Path:
    """The built program `name` (e.g. "netio"), built first when missing or stale."""
    build_tools()
    return TOOLS_OUT / name


def build_tools() -> None:
    """guest_tools/build.sh, unless every program is newer than its source."""
    sources = list(TOOLS.glob("*.c"))
    if all((TOOLS_OUT / s.stem).exists() and (TOOLS_OUT / s.stem).stat().st_mtime >= s.stat().st_mtime
           for s in sources):  # fmt: skip
        return
    try:
        subprocess.run(["sh", str(TOOLS / "build.sh"), str(TOOLS_OUT)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", None) or str(exc).encode()
        message = stderr.decode(errors="replace").strip()[-300:]
        raise ToolBuildError(f"cannot build the guest tools: {message}") from None


def padded(data: bytes) -> bytes:
    """`data` padded with zeros to whole sectors: a disk image's size."""
    return data.ljust(-(-len(data) // SECTOR) * SECTOR, b"\0")


def tool_disk(path: Path, name: str) -> int:
    """A disk image at `path` holding program `name` alone (padded to whole sectors);
    the program's length, for `unpack_command`."""
    data = program(name).read_bytes()
    path.write_bytes(padded(data))
    return len(data)


def unpack_command(device: str, name: str, length: int, offset: int = 0) -> str:
    """A guest shell command that copies a program of `length` bytes at `offset` of
    `device` to /tmp/NAME, executable."""
    source = f"tail -c +{offset + 1} {device} | head -c {length}" if offset else f"head -c {length} {device}"
    return f"{source} > /tmp/{name} && chmod +x /tmp/{name}"
