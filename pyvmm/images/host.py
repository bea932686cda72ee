"""What the build needs from the host's Debian: package versions, installs, downloads.

Versions come from dpkg (installed packages) or apt (the candidate a download would
fetch); they are inputs of the cache key. Installs and downloads run through a
`Steps` runner so their output lands in the build log.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pyvmm.images.errors import ImageBuildError
from pyvmm.images.steps import Steps

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def _query(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, env=_c_locale())
    except FileNotFoundError as exc:
        raise ImageBuildError("packages", f"{cmd[0]} not found: this needs a Debian host") from exc


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def installed_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Package -> installed version, or None when it is not installed (one dpkg call)."""
    names = list(packages)
    result = _query(["dpkg-query", "-W", "-f", "${Package}|${db:Status-Abbrev}|${Version}\n", *names])
    found: dict[str, str | None] = dict.fromkeys(names)
    for line in result.stdout.splitlines():
        name, status, version = [*line.split("|"), "", ""][:3]
        if name in found and status.startswith("ii") and version:
            found[name] = version
    return found


def installed_version(package: str) -> str | None:
    return installed_versions([package])[package]


def dpkg_field(package: str, field: str) -> str:
    """A field ("Depends", ...) of an installed package, "" when unknown."""
    result = _query(["dpkg-query", "-W", "-f", f"${{{field}}}", package])
    return result.stdout.strip() if result.returncode == 0 else ""


def candidate(package: str) -> tuple[str, str] | None:
    """(version, Depends field) of the version apt would fetch, or None if apt knows
    no such package (yet: the lists may never have been downloaded)."""
    result = _query(["apt-cache", "show", "--no-all-versions", package])
    if result.returncode != 0:
        return None
    lines = result.stdout.splitlines()
    fields = dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith(" "))
    version = fields.get("Version")
    if not version:
        return None
    return version, fields.get("Depends", "")


def versioned_dependency(depends: str, prefix: str) -> tuple[str, str | None] | None:
    """The first dependency named `prefix...` in a Depends field, with its pinned
    version when it has one ("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)")."""
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        match = re.match(r"^(\S+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
        if match and match[1].startswith(prefix):
            return match[1], match[2]
    return None


class Apt:
    """Installs and downloads, running `apt-get update` at most once per build."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self._updated = False

    def update_once(self) -> None:
        if not self._updated:
            self._steps.run(["apt-get", "update", "-q"], env=_APT_ENV)
            self._updated = True

    def ensure_installed(self, packages: Iterable[str]) -> None:
        missing = [name for name, version in installed_versions(packages).items() if version is None]
        if not missing:
            return
        self._steps.note(f"installing {' '.join(missing)}")
        self.update_once()
        self._steps.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=_APT_ENV
        )
        still = [name for name, version in installed_versions(missing).items() if version is None]
        if still:
            raise ImageBuildError("packages", f"apt-get did not install {' '.join(still)}", self._steps.log)

    def candidate(self, package: str) -> tuple[str, str]:
        """Like `candidate`, refreshing the package lists once if apt knows nothing."""
        found = candidate(package)
        if found is None:
            self.update_once()
            found = candidate(package)
        if found is None:
            raise ImageBuildError("packages", f"apt knows no package {package}", self._steps.log)
        return found

    def download(self, package: str, version: str, into: Path) -> Path:
        """`apt-get download package=version` into `into`; returns the .deb."""
        self._steps.run(["apt-get", "download", "-q", f"{package}={version}"], cwd=into, env=_APT_ENV)
        debs = sorted(into.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise self._steps.fail(f"apt-get download left no single {package} .deb")
        return debs[0]
