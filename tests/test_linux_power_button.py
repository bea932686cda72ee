"""The default Linux guest and pyvmm's ACPI events (issue 17): the power button of the
Generic Event Device powers it off cleanly, and a new VM generation ID reaches its
vmgenid driver.

The tests share one clone of the session's booted default guest (restored from its
snapshot, tests/linux_snapshot.py), in file order: the devices the guest bound, the
generation ID (a restore is itself a new one), and last the power button, which ends
the clone.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from linux_snapshot import COMMAND_SECONDS, Guest, GuestSnapshot, wait_for

from pyvmm.devices.ged import Ged
from pyvmm.devices.vmgenid import VmGenId
from pyvmm.outcome import ExitKind

pytestmark = pytest.mark.kvm

RESEEDED = "crng reseeded due to virtual machine fork"  # drivers/char/random.c, 6.1


def reseeds(guest: Guest) -> int:
    return guest.text().count(RESEEDED)


@pytest.fixture(scope="module")
def guest(default_guest: GuestSnapshot) -> Iterator[Guest]:
    """A clone of the session's booted default guest (tests/linux_snapshot.py)."""
    clone = default_guest.restore()
    try:
        yield clone
    finally:
        clone.close()


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
    # The restore itself gave the clone a new ID: the snapshot's guest had a ready
    # crng, so the clone reseeded once already (clones do not share random numbers).
    wait_for(lambda: reseeds(guest) >= 1, COMMAND_SECONDS, "a reseed after the restore", machine)
    before = reseeds(guest)
    first = uuid.uuid4().bytes

    def from_another_thread(action: Callable[[], None]) -> None:
        thread = threading.Thread(target=action)
        thread.start()
        thread.join()

    from_another_thread(lambda: vmgenid.set_generation_id(first))
    wait_for(lambda: reseeds(guest) == before + 1, COMMAND_SECONDS, "reseed after a new ID", machine)
    # The same ID again: the guest's _EVT reads the event, the driver finds no change.
    reads = ged.events_read
    from_another_thread(lambda: vmgenid.set_generation_id(first))
    wait_for(lambda: ged.events_read > reads, COMMAND_SECONDS, "the GED's _EVT reading its selector", machine)
    time.sleep(2)
    assert reseeds(guest) == before + 1
    from_another_thread(lambda: vmgenid.set_generation_id(uuid.uuid4().bytes))
    wait_for(lambda: reseeds(guest) == before + 2, COMMAND_SECONDS, "reseed after another new ID", machine)


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
