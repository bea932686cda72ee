"""PCI bus 0: 32 device slots of 8 functions each (PCI Local Bus Specification 3.0
§3.2.2.3), and configuration accesses addressed by (bus, device, function, register).

An absent function — an empty slot, a function number a device does not have, or
any bus but 0 (pyvmm has no PCI-to-PCI bridges) — reads all ones, so its Vendor ID
is 0xFFFF, which is how software sees that nothing is there (§6.2.1); writes to it
are dropped (a master abort, §6.1). Both access mechanisms (`config_access`) go
through here, so they see the same registers.
"""

from __future__ import annotations

from pyvmm.bus import all_ones
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction

SLOTS = 32
FUNCTIONS = 8
ROOT_BUS = 0


class PciBus:
    """The functions on bus 0, by (slot, function)."""

    def __init__(self) -> None:
        self._functions: dict[tuple[int, int], PciFunction] = {}

    def add(self, function: PciFunction, slot: int, number: int = 0) -> None:
        """Put `function` at slot `slot`, function `number`."""
        if not 0 <= slot < SLOTS or not 0 <= number < FUNCTIONS:
            raise PciError(f"PCI address 00:{slot:02x}.{number} is not a slot 0-31, function 0-7")
        if (slot, number) in self._functions:
            raise PciError(f"PCI address 00:{slot:02x}.{number} is already taken")
        self._functions[(slot, number)] = function
        self._update_multi_function(slot)

    def remove(self, slot: int, number: int = 0) -> PciFunction:
        """Take the function at `slot`.`number` off the bus (hot unplug: the platform
        takes its BAR ranges off first)."""
        try:
            function = self._functions.pop((slot, number))
        except KeyError:
            raise PciError(f"no PCI function at 00:{slot:02x}.{number}") from None
        self._update_multi_function(slot)
        return function

    def _update_multi_function(self, slot: int) -> None:
        # §6.2.1: function 0 says whether the slot has more functions; software scans
        # functions 1-7 only then.
        first = self._functions.get((slot, 0))
        if first is not None:
            first.set_multi_function(any((slot, n) in self._functions for n in range(1, FUNCTIONS)))

    def function(self, slot: int, number: int = 0) -> PciFunction | None:
        return self._functions.get((slot, number))

    def functions(self) -> list[tuple[int, int, PciFunction]]:
        """(slot, function number, function), in slot order."""
        return [(slot, number, f) for (slot, number), f in sorted(self._functions.items())]

    def free_slot(self) -> int:
        """The lowest slot with no function."""
        used = {slot for slot, _ in self._functions}
        for slot in range(SLOTS):
            if slot not in used:
                return slot
        raise PciError(f"all {SLOTS} PCI slots are taken")

    def config_read(self, bus: int, slot: int, number: int, register: int, size: int) -> int:
        function = self._functions.get((slot, number)) if bus == ROOT_BUS else None
        if function is None:
            return all_ones(size)
        return function.config_read(register, size)

    def config_write(self, bus: int, slot: int, number: int, register: int, size: int, value: int) -> None:
        function = self._functions.get((slot, number)) if bus == ROOT_BUS else None
        if function is not None:
            function.config_write(register, size, value)
