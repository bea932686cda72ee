"""Kernel configuration fragments: parse them and check that a .config honours one.

Kconfig may silently drop a requested option (an unmet dependency, a renamed
symbol), so after `make olddefconfig` every line of the fragment is checked
against the resulting .config. Both files use the same syntax:
``CONFIG_FOO=y`` / ``=m`` / ``="string"`` / ``=123`` and ``# CONFIG_FOO is not set``;
an option absent from .config counts as "n".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ASSIGNMENT = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_LOOKS_LIKE_OPTION = re.compile(r"^#\s*CONFIG_")
NO = "n"


def parse_config(text: str) -> dict[str, str]:
    """Option -> value ("y", "m", "n", a quoted string, a number). Later lines win,
    as they do for Kconfig itself."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _ASSIGNMENT.match(line):
            values[match[1]] = match[2].strip()
        elif match := _NOT_SET.match(line):
            values[match[1]] = NO
    return values


def bad_fragment_lines(text: str) -> list[str]:
    """Lines that are neither blank, a comment, an assignment nor "is not set".
    merge_config.sh ignores such a line silently, so a typo would go unnoticed;
    a comment that starts like an option ("# CONFIG_FOO is unset") is a typo too."""
    bad = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _ASSIGNMENT.match(line) or _NOT_SET.match(line):
            continue
        if line.startswith("#") and not _LOOKS_LIKE_OPTION.match(line):
            continue
        bad.append(raw)
    return bad


@dataclass(frozen=True)
class Mismatch:
    option: str
    wanted: str
    actual: str

    def __str__(self) -> str:
        return f"{self.option} (wanted {self.wanted}, got {self.actual})"


def verify(fragment: str, config: str) -> list[Mismatch]:
    """Every option of `fragment` whose value in `config` differs, in fragment order."""
    actual = parse_config(config)
    return [
        Mismatch(option, wanted, actual.get(option, NO))
        for option, wanted in parse_config(fragment).items()
        if actual.get(option, NO) != wanted
    ]
