"""The error a failed image build raises: which phase failed, and where its log is."""

from __future__ import annotations

from pathlib import Path

from pyvmm.errors import VmmError


class ImageBuildError(VmmError):
    """A phase of `pyvmm images build` failed; the CLI prints it as one line."""

    def __init__(self, phase: str, message: str, log: Path | None = None) -> None:
        text = f"images: {phase} failed: {message}"
        if log is not None:
            text += f" (log: {log})"
        super().__init__(text)
        self.phase = phase
        self.log = log


class NotBuiltError(VmmError):
    """An artifact was asked for that is not in the cache."""


class GuestDiskError(VmmError):
    """The default guest's writable root disk could not be made or removed."""
