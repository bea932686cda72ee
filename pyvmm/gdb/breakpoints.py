"""The breakpoints and watchpoints gdb inserted (Z0-Z4, gdb manual §E.2 "Packets"),
and the KVM_SET_GUEST_DEBUG request that arms them on every vCPU.

Software breakpoints (Z0) are `int3` bytes written into guest memory when the host
reports them to us (KVM_GUESTDBG_USE_SW_BP, checked by `probe.py`); where it does not,
a Z0 takes a debug register like Z1, and the stub says so once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyvmm.gdb.debugregs import (
    Access,
    BreakpointError,
    GuestDebug,
    HardwareBreakpoint,
    Slots,
    control_flags,
    debugreg,
    watch_ranges,
)
from pyvmm.gdb.packets import PacketError
from pyvmm.gdb.paging import AddressSpace

log = logging.getLogger(__name__)

INT3 = b"\xcc"


class ZType:
    SOFTWARE = 0
    HARDWARE = 1
    WRITE = 2
    READ = 3
    ACCESS = 4


@dataclass(frozen=True)
class HostSupport:
    """What this host's KVM really reports (see `probe.py`)."""

    software_breakpoints: bool
    watchpoints: bool
    hardware_breakpoints: bool = True


class UnsupportedError(PacketError):
    """A Z packet kind this host cannot do: gdb gets an empty reply (§E.2: "not supported")."""


class Breakpoints:
    """The armed breakpoints; `arm()` gives each vCPU's KVM_SET_GUEST_DEBUG arguments."""

    def __init__(self, host: HostSupport) -> None:
        self.host = host
        self.slots = Slots()
        self.software: dict[int, bytes] = {}  # address -> the byte int3 replaced
        self._said_hardware = False
        self._said_watch = False

    def insert(self, ztype: int, address: int, kind: int, space: AddressSpace) -> None:
        """Insert one Z packet's breakpoint; `BreakpointError` or `TranslationError`
        when it cannot be, `UnsupportedError` when this host has no such thing."""
        if ztype in (ZType.SOFTWARE, ZType.HARDWARE) and kind != 1:
            raise BreakpointError(f"an x86 breakpoint has kind 1 (int3's length), not {kind}")
        if ztype == ZType.SOFTWARE and self.host.software_breakpoints:
            if address not in self.software:
                original = space.read(address, 1)
                space.write(address, INT3)
                self.software[address] = original
            return
        if ztype in (ZType.SOFTWARE, ZType.HARDWARE):
            if not self.host.hardware_breakpoints:
                raise UnsupportedError("this KVM has no hardware breakpoints")
            if ztype == ZType.SOFTWARE and not self._said_hardware:
                log.warning(
                    "gdb: this host's KVM does not report int3: 'break' takes one of the 4 debug registers"
                )
                self._said_hardware = True
            self.slots.add(HardwareBreakpoint(address, Access.EXECUTE))
            return
        for piece in self._watch_pieces(ztype, address, kind):
            self.slots.add(piece)

    def remove(self, ztype: int, address: int, kind: int, space: AddressSpace) -> bool:
        if ztype == ZType.SOFTWARE and address in self.software:
            space.write(address, self.software.pop(address))
            return True
        if ztype in (ZType.SOFTWARE, ZType.HARDWARE):
            return self.slots.remove(HardwareBreakpoint(address, Access.EXECUTE))
        pieces = self._watch_pieces(ztype, address, kind, inserting=False)
        return all([self.slots.remove(piece) for piece in pieces])

    def _watch_pieces(
        self, ztype: int, address: int, kind: int, *, inserting: bool = True
    ) -> list[HardwareBreakpoint]:
        if ztype == ZType.READ:
            raise UnsupportedError("x86 debug registers have no read-only watchpoint")
        if ztype not in (ZType.WRITE, ZType.ACCESS):
            raise BreakpointError(f"unknown breakpoint type {ztype}")
        if not self.host.watchpoints:
            if not self._said_watch:
                log.warning(
                    "gdb: this host's KVM never reports data breakpoints: hardware watchpoints are refused "
                    "(gdb: set can-use-hw-watchpoints 0)"
                )
                self._said_watch = True
            raise UnsupportedError("no data breakpoints on this host")
        access = Access.WRITE if ztype == ZType.WRITE else Access.READ_WRITE
        pieces = [HardwareBreakpoint(start, access, size) for start, size in watch_ranges(address, kind)]
        if inserting and len(pieces) > self.slots.free():
            raise BreakpointError(f"a watchpoint on {kind} bytes needs {len(pieces)} free debug registers")
        return pieces

    def watch_hit(self, slot_indices: list[int]) -> HardwareBreakpoint | None:
        for index in slot_indices:
            slot = self.slots.slot(index)
            if slot is not None and slot.access is not Access.EXECUTE:
                return slot
        return None

    def clear(self, space: AddressSpace | None) -> None:
        """Remove everything (gdb detached or went away): int3 bytes are put back."""
        if space is not None:
            for address, original in self.software.items():
                space.write(address, original)
        self.software.clear()
        self.slots.clear()

    def guest_debug(self, *, step: bool) -> tuple[GuestDebug, list[int]]:
        """KVM_SET_GUEST_DEBUG's control and debugreg for one vCPU."""
        control = control_flags(hardware=bool(self.slots), software=bool(self.software), step=step)
        return control, debugreg(self.slots.values)


__all__ = ["Breakpoints", "HostSupport", "UnsupportedError", "ZType"]
