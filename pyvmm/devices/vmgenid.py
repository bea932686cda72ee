"""The VM generation ID: 16 bytes in guest memory that change when the VM is cloned
or restored from a snapshot, so the guest can reseed its random number generator
(Microsoft, "Virtual Machine Generation ID", 2012; QEMU docs/specs/vmgenid.txt).

The ID sits at a guest physical address the platform reserves (the BIOS area's last
page, `pyvmm.arch.x86.acpi.tables.VMGENID_ADDRESS`, reported reserved in the memory
map); the DSDT's ``VGEN`` device returns that address from its ``ADDR`` method. After
writing a new ID the device notifies the guest through the Generic Event Device
(Notify(VGEN, 0x80)); Linux's driver (drivers/virt/vmgenid.c, CONFIG_VMGENID) reads
the ID at probe and again on each notification, and reseeds its RNG when it differs.

A machine gets a fresh random ID when it is built. Whoever restores a snapshot calls
`set_generation_id()` with a new one afterwards (two VMs restored from one snapshot
must not share their RNG state); `restore()` itself puts back the saved ID.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyvmm.errors import ConfigError
from pyvmm.memory import GuestMemory
from pyvmm.snapshot.checks import check_bytes, check_type
from pyvmm.snapshot.registry import saved_state

logger = logging.getLogger(__name__)

GENERATION_ID_SIZE = 16  # a GUID


@saved_state("vmgenid")
@dataclass(frozen=True)
class VmGenIdState:
    """A `VmGenId`'s state: the ID the guest was last given."""

    generation_id: bytes


def _checked_id(value: object) -> bytes:
    if type(value) is not bytes or len(value) != GENERATION_ID_SIZE:
        raise ConfigError(f"a VM generation ID is {GENERATION_ID_SIZE} bytes, not {value!r:.60}")
    return value


class VmGenId:
    """The generation ID in guest memory at `address`, and the notification that it
    changed (`notify`: the GED's `notify_generation_id`)."""

    def __init__(
        self,
        memory: GuestMemory,
        address: int,
        notify: Callable[[], None],
        generation_id: bytes | None = None,
    ) -> None:
        self._memory = memory
        self.address = address
        self._notify = notify
        self._lock = threading.Lock()
        self._id = _checked_id(os.urandom(GENERATION_ID_SIZE) if generation_id is None else generation_id)
        self._write()

    @property
    def generation_id(self) -> bytes:
        with self._lock:
            return self._id

    def set_generation_id(self, generation_id: bytes) -> None:
        """Give the guest a new ID (16 bytes, e.g. `uuid.uuid4().bytes`) and notify
        it. Any thread. `ConfigError` for anything but 16 bytes."""
        new = _checked_id(generation_id)
        with self._lock:
            self._id = new
            self._write()
        logger.debug("VM generation ID now %s", new.hex())
        self._notify()

    def _write(self) -> None:
        # What the guest reads: the ID's bytes as given (a GUID in its byte order).
        self._memory.write(self.address, self._id)

    # --- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """A reset keeps the ID (the same VM boots again) and puts it back in memory,
        as firmware would."""
        with self._lock:
            self._write()

    def save(self) -> VmGenIdState:
        with self._lock:
            return VmGenIdState(self._id)

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes),
        and write its ID to guest memory. No notification: the guest restored with it
        last read this very ID."""
        checked = check_type("vmgenid", state, VmGenIdState)
        generation_id = check_bytes(
            "vmgenid", "generation_id", checked.generation_id, GENERATION_ID_SIZE, GENERATION_ID_SIZE
        )
        with self._lock:
            self._id = generation_id
            self._write()
