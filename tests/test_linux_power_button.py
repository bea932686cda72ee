"""The default Linux guest and pyvmm's ACPI events (issue 17): the power button of the
Generic Event Device powers it off cleanly, and a new VM generation ID reaches its
vmgenid driver.

One boot of the default guest (its initramfs, through `Machine` in this process) is
shared by the tests, in file order: the devices the guest bound, the generation ID,
and last the power button, which ends the boot. A boot takes minutes on a software
KVM (docs/boot.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyvmm.config import MachineConfig
from pyvmm.devices.ged import Ged
from pyvmm.devices.vmgenid import VmGenId
from pyvmm.machine.machine import Machine
from pyvmm.outcome import ExitKind

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parent.parent
BUILD_SECONDS = 3600  # the first `pyvmm images build` compiles a kernel
BOOT_SECONDS = 1500
COMMAND_SECONDS = 120
READY = b"pyvmm-init: ready"
RESEEDED = "crng reseeded due to virtual machine fork"  # drivers/char/random.c, 6.1


def default_images() -> dict[str, Path]:
    result = subprocess.run(
        [sys.executable, "-m", "pyvmm", "images", "build"],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: Path(path) for name, path in (line.split() for line in result.stdout.splitlines())}


def wait_for(condition: Callable[[], bool], seconds: float, what: str, machine: Machine) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tail = machine.console_output[-3000:].decode("utf-8", "replace")
            pytest.fail(f"no {what} after {seconds} s; the console ends:\n{tail}")
        time.sleep(0.1)


class Guest:
    """The running default guest and its shell on COM1."""

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

    def reseeds(self) -> int:
        return self.text().count(RESEEDED)


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    found = default_images()
    config = MachineConfig(
        kernel=found["bzImage"],
        initrd=found["initramfs"],
        cmdline="console=ttyS0",
        memory="256M",
        timeout=BOOT_SECONDS,
    )
    machine = Machine(config)
    machine.start()
    try:
        wait_for(lambda: READY in machine.console_output, BOOT_SECONDS, "pyvmm-init: ready", machine)
        yield Guest(machine)
    finally:
        if machine.wait(0) is None:
            machine.stop()
            machine.wait(30)


def test_the_guest_binds_the_ged_the_power_button_and_vmgenid(guest: Guest) -> None:
    output = guest.run(
        "ls /sys/bus/platform/drivers/acpi-ged /sys/bus/acpi/drivers/button /sys/bus/acpi/drivers/vmgenid;"
        " cat /proc/interrupts | grep -i ged; dmesg | grep -i 'power button'; pidof acpid"
    )
    assert "ACPI0013:00" in output, output  # evged.c took the GED
    assert "PNP0C0C:00" in output, output  # the control-method power button
    assert "PYVM0001:00" in output, output  # vmgenid.c took VGEN (by its _CID VM_GEN_COUNTER)
    assert re.search(r"IO-APIC\s+9-edge\s+ACPI:Ged", output), output  # GSI 9, edge, as _CRS says
    assert re.search(r"input: Power Button as .*PNP0C0C", output), output
    assert re.search(r"^\d+\s*$", output, re.MULTILINE), f"acpid is not running:\n{output}"


def test_a_new_generation_id_reseeds_the_guests_rng(guest: Guest) -> None:
    """Linux's vmgenid reads the 16 bytes on each notification and reseeds only when
    they changed (vmgenid_notify, drivers/virt/vmgenid.c); the reseed prints a notice."""
    machine = guest.machine
    vmgenid, ged = machine.devices.model(VmGenId), machine.devices.model(Ged)
    assert vmgenid is not None and ged is not None
    # The notice is printed only once the crng is ready; a read of /dev/random waits
    # for that (Linux 6.1 then gathers jitter entropy itself).
    ready = guest.run("head -c 1 /dev/random >/dev/null; dmesg | grep -i crng")
    assert "crng init done" in ready, ready
    before = guest.reseeds()
    first = uuid.uuid4().bytes

    def from_another_thread(action: Callable[[], None]) -> None:
        thread = threading.Thread(target=action)
        thread.start()
        thread.join()

    from_another_thread(lambda: vmgenid.set_generation_id(first))
    wait_for(lambda: guest.reseeds() == before + 1, COMMAND_SECONDS, "reseed after a new ID", machine)
    # The same ID again: the guest's _EVT reads the event, the driver finds no change.
    reads = ged.events_read
    from_another_thread(lambda: vmgenid.set_generation_id(first))
    wait_for(lambda: ged.events_read > reads, COMMAND_SECONDS, "the GED's _EVT reading its selector", machine)
    time.sleep(2)
    assert guest.reseeds() == before + 1
    from_another_thread(lambda: vmgenid.set_generation_id(uuid.uuid4().bytes))
    wait_for(lambda: guest.reseeds() == before + 2, COMMAND_SECONDS, "reseed after another new ID", machine)


def test_the_power_button_powers_the_guest_off_cleanly(guest: Guest) -> None:
    machine = guest.machine
    ged = machine.devices.model(Ged)
    assert ged is not None
    guest.run("echo the shell is up")
    presser = threading.Thread(target=ged.press_power_button)
    presser.start()
    presser.join()
    result = machine.wait(COMMAND_SECONDS)
    assert result is not None, f"still running after the power button:\n{guest.text()[-3000:]}"
    console = result.console_text
    assert result.exit.kind is ExitKind.POWEROFF, console[-3000:]
    assert result.status == 0
    # acpid ran the handler, whose `poweroff` reached init's trap: the clean way down.
    assert "PWRF/00000080" in console, console[-3000:]
    assert "pyvmm-init: poweroff" in console, console[-3000:]
    assert "reboot: Power down" in console, console[-3000:]
