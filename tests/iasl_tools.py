"""Running Intel's ACPICA compiler (`iasl`, Debian's acpica-tools) on pyvmm's tables:
disassemble one and refuse any diagnostic it prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# What iasl prints for a table it does not like, in the output or the .dsl text:
# "Firmware Warning ...",
# "/* Incorrect checksum ... */", "Invalid ...", "ACPI Error", "Unknown ...".
DIAGNOSTIC = re.compile(r"error|warning|incorrect|invalid|unknown|could not|failure", re.IGNORECASE)


def run(iasl: str, *args: str | Path, cwd: Path) -> str:
    result = subprocess.run([iasl, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def disassemble(iasl: str, data: bytes, name: str, directory: Path) -> str:
    """`iasl -d` on one table; the .dsl text, after checking nothing was reported."""
    binary = directory / f"{name}.dat"
    binary.write_bytes(data)
    output = run(iasl, "-d", binary, cwd=directory)
    dsl = binary.with_suffix(".dsl").read_text()
    assert not DIAGNOSTIC.search(output), output
    assert not DIAGNOSTIC.search(dsl), dsl
    return dsl
