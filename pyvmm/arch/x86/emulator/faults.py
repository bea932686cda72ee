"""Exceptions the emulated instruction raises in the guest, and their delivery.

An `InjectFault` is raised anywhere in the emulator when the instruction must end
in a guest exception (Intel SDM Vol. 3A §6.15, "Exception and Interrupt Reference").
`deliver` hands it to KVM with KVM_SET_VCPU_EVENTS (Documentation/virt/kvm/api.rst,
"KVM_SET_VCPU_EVENTS").
"""

from __future__ import annotations

import enum
from typing import Protocol

from pyvmm.arch.x86.emulator.errors import EmulatorError
from pyvmm.kvm import x86
from pyvmm.kvm.x86 import KVM_VCPUEVENT_VALID_PAYLOAD


class Vector(enum.IntEnum):
    """Exception vectors (SDM Vol. 3A Table 6-1)."""

    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19


# Exceptions that push an error code (SDM Vol. 3A Table 6-1, "Error Code" column).
_WITH_ERROR_CODE = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC})
# Traps: the saved RIP points after the instruction (SDM Vol. 3A §6.5).
_TRAPS = frozenset({Vector.BP, Vector.OF})

RFLAGS_RF = 1 << 16
FIRST_EXTERNAL_VECTOR = 32

# Page-fault error code bits (SDM Vol. 3A §4.7, Figure 4-12).
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_RESERVED = 1 << 3
PF_FETCH = 1 << 4
PF_PROTECTION_KEY = 1 << 5


class InjectFault(Exception):  # noqa: N818 - it is an instruction to the emulator, not an error
    """The instruction ends in guest exception `vector`, or (`software`) in the
    interrupt INT n raises.

    `trap` is True for events whose saved RIP is the next instruction (INT3, INT n,
    INTO, single-step): the emulator commits the instruction before delivering it.
    For faults nothing of the instruction is committed.
    """

    def __init__(
        self,
        vector: int,
        error_code: int | None = None,
        cr2: int | None = None,
        *,
        trap: bool = False,
        software: bool = False,
    ) -> None:
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.software = software
        self.trap = trap or software or vector in _TRAPS
        if software:
            detail = f"INT {vector:#x}"
        else:
            try:
                detail = f"#{Vector(vector).name}"
            except ValueError:
                detail = f"exception {vector}"
        if error_code is not None:
            detail += f"({error_code:#x})"
        if cr2 is not None:
            detail += f" at {cr2:#x}"
        super().__init__(detail)


def gp(error_code: int = 0) -> InjectFault:
    return InjectFault(Vector.GP, error_code)


def ss(error_code: int = 0) -> InjectFault:
    return InjectFault(Vector.SS, error_code)


def ud() -> InjectFault:
    return InjectFault(Vector.UD)


def nm() -> InjectFault:
    return InjectFault(Vector.NM)


def page_fault(address: int, error_code: int) -> InjectFault:
    return InjectFault(Vector.PF, error_code, address)


class EventTarget(Protocol):
    """What `deliver` needs of a vCPU (a `pyvmm.kvm.Vcpu` has it)."""

    def get_regs(self) -> x86.kvm_regs: ...
    def set_regs(self, regs: x86.kvm_regs) -> None: ...
    def get_sregs(self) -> x86.kvm_sregs: ...
    def set_sregs(self, sregs: x86.kvm_sregs) -> None: ...
    def get_vcpu_events(self) -> x86.kvm_vcpu_events: ...
    def set_vcpu_events(self, events: x86.kvm_vcpu_events) -> None: ...


def deliver(vcpu: EventTarget, fault: InjectFault, *, exception_payload: bool = False) -> None:
    """Make `fault` the event KVM delivers on the next KVM_RUN.

    Exceptions (vector < 32) go in `exception`: with KVM_CAP_EXCEPTION_PAYLOAD
    enabled as `pending` with CR2 as the payload, otherwise as `injected` after CR2
    was set with KVM_SET_SREGS (api.rst: without the capability, "injected" and
    "pending" are one state). For a fault, RFLAGS.RF is set first, as the processor
    does in the RFLAGS image it saves for faults (SDM Vol. 3A §18.3.1.1).

    INT n goes in `interrupt` as a hardware-style injection (`soft` = 0), whatever n:
    the caller already checked the gate and advanced RIP, so no instruction length is
    involved, and no error code is pushed even for vectors whose exception has one.

    Caveat: KVM treats an injected #BP or #OF as a *software* exception; on VMX it
    then uses the last exit's instruction length and on SVM it re-decodes the
    instruction to find the return address. On this host (kvm_pvm) the saved RIP is
    RIP as set, which is what this function assumes (checked by the tests).
    """
    events = vcpu.get_vcpu_events()
    if events.exception.injected or events.exception.pending or events.interrupt.injected:
        raise EmulatorError(f"cannot deliver {fault}: an event is already waiting for injection")
    if not fault.software and (not 0 <= fault.vector < FIRST_EXTERNAL_VECTOR or fault.vector == Vector.NMI):
        raise EmulatorError(f"{fault} cannot be injected as an exception")
    if not fault.trap:
        regs = vcpu.get_regs()
        if not regs.rflags & RFLAGS_RF:
            regs.rflags |= RFLAGS_RF
            vcpu.set_regs(regs)
    events.flags = 0
    if fault.software:
        events.interrupt.injected = 1
        events.interrupt.nr = fault.vector
        events.interrupt.soft = 0
        vcpu.set_vcpu_events(events)
        return
    has_error_code = fault.vector in _WITH_ERROR_CODE
    events.exception.nr = fault.vector
    events.exception.has_error_code = int(has_error_code)
    events.exception.error_code = (fault.error_code or 0) if has_error_code else 0
    if exception_payload:
        events.flags = KVM_VCPUEVENT_VALID_PAYLOAD
        events.exception.pending = 1
        events.exception.injected = 0
        events.exception_has_payload = int(fault.cr2 is not None)
        events.exception_payload = fault.cr2 or 0
    else:
        if fault.cr2 is not None:
            sregs = vcpu.get_sregs()
            sregs.cr2 = fault.cr2
            vcpu.set_sregs(sregs)
        events.exception.injected = 1
        events.exception.pending = 0
    vcpu.set_vcpu_events(events)
