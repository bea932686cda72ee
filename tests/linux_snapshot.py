"""One boot of the default Linux guest for the whole session, snapshotted, and a
restored clone for each test that only needs a running guest with a shell (issue 17,
"CI inside its limit"): a boot takes minutes on a software KVM, a restore
milliseconds. What is restored is the guest as it was: its kernel booted, its shell
on COM1 waiting, its entropy pool ready (so that a clone's new VM generation ID makes
it reseed, the notice the vmgenid tests look for).

The machine: the default kernel and its busybox initramfs (`pyvmm run --guest default
--root initramfs`, the same options: `CLI_OPTIONS`), 256 MiB, one vCPU, COM1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from test_linux_guest import BOOT_SECONDS, images

from pyvmm.config import MachineConfig
from pyvmm.machine.machine import Machine

COMMAND_SECONDS = 120
READY = b"pyvmm-init: ready"
CLI_OPTIONS = ("--guest", "default", "--root", "initramfs", "--memory", "256M")


def wait_for(condition: Callable[[], bool], seconds: float, what: str, machine: Machine) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tail = machine.console_output[-3000:].decode("utf-8", "replace")
            pytest.fail(f"no {what} after {seconds} s; the console ends:\n{tail}")
        time.sleep(0.1)


class Guest:
    """A running default guest and its shell on COM1."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._serial = 0

    def text(self) -> str:
        return self.machine.console_output.decode("utf-8", "replace")

    def run(self, command: str) -> str:
        """`command`'s output in the shell, between markers the echoed input lacks."""
        self._serial += 1
        mark = f"pyvmm-test-{self._serial}"
        # The shell prints the markers as `$(echo ...)` expands: the echoed command
        # line holds them only unexpanded.
        line = f'echo "<$(echo {mark})>"; {command}; echo "</$(echo {mark})>"\n'
        self.machine.send_input(line.encode())
        end = f"</{mark}>"
        wait_for(lambda: end in self.text(), COMMAND_SECONDS, f"output of {command!r}", self.machine)
        text = self.text()
        return text[text.rindex(f"<{mark}>") + len(mark) + 2 : text.rindex(end)]

    def close(self) -> None:
        if self.machine.wait(0) is None:
            self.machine.stop()
            self.machine.wait(30)


@dataclass(frozen=True)
class GuestSnapshot:
    """The saved default guest: its file and the configuration that restores it."""

    path: Path
    config: MachineConfig
    boot_seconds: float  # launch to the shell answering, for the record

    def restore(self) -> Guest:
        """A clone, running where the guest was saved (the snapshot file is shared:
        its memory is mapped copy-on-write)."""
        return Guest(Machine.restore(self.path, self.config))


def default_guest_config() -> MachineConfig:
    found = images("default")
    return MachineConfig(
        kernel=found["bzImage"], initrd=found["initramfs"], cmdline="console=ttyS0", memory="256M"
    )


def take_snapshot(directory: Path) -> GuestSnapshot:
    """Boot the default guest, wait for its shell, ready its entropy pool, save it."""
    config = default_guest_config()
    started = time.monotonic()
    guest = Guest(Machine(replace(config, timeout=BOOT_SECONDS)))
    guest.machine.start()
    try:
        wait_for(
            lambda: READY in guest.machine.console_output, BOOT_SECONDS, "pyvmm-init: ready", guest.machine
        )
        # The crng is ready once /dev/random gives a byte (Linux 6.1 gathers jitter
        # entropy itself); the shell answering is the state the clones start from.
        assert "crng init done" in guest.run("head -c 1 /dev/random >/dev/null; dmesg | grep -i crng")
        booted = time.monotonic() - started
        path = directory / "default-guest.snap"
        guest.machine.snapshot(path)
    finally:
        guest.close()
    return GuestSnapshot(path, config, booted)
