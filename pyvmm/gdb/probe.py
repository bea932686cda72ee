"""What this host's KVM_SET_GUEST_DEBUG really does, asked of a throw-away VM.

KVM_CAP_SET_GUEST_DEBUG2 lists the flags KVM accepts, not what it delivers: a host
that runs guests without hardware virtualization (kvm_pvm) accepts
KVM_GUESTDBG_USE_SW_BP and data breakpoints in DR7, but its guest takes the int3
itself and never exits on a data access. So each is tried once, in real mode on one
vCPU: `int3` with USE_SW_BP must give KVM_EXIT_DEBUG with exception 3, and a write
watchpoint on a byte the code writes must give KVM_EXIT_DEBUG with its DR6 bit set.
"""

from __future__ import annotations

import logging
from functools import cache

from pyvmm.gdb.breakpoints import HostSupport
from pyvmm.gdb.debugregs import (
    CAP_SET_GUEST_DEBUG2,
    Access,
    GuestDebug,
    HardwareBreakpoint,
    debugreg,
    hit_slots,
    unsupported,
)
from pyvmm.kvm import Cap, ExitReason, Kvm, KvmError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

_RAM = 0x10000
_CODE = 0x1000
_DATA = 0x2000
_BP_VECTOR = 3
# int3; hlt
_INT3 = bytes.fromhex("ccf4")
# mov byte [0x2000], al; hlt
_STORE = bytes.fromhex("a20020f4")
_HANDLER = 0x1800  # every interrupt vector leads here: hlt (so an int3 the guest takes ends the run)
_VECTORS = 256
_MAX_EXITS = 4  # an answer comes at the first exit; more means something else went on


def _first_debug_exit(code: bytes, control: int, registers: list[int]) -> tuple[int, int] | None:
    """(exception, dr6) of the first KVM_EXIT_DEBUG running `code` at 0000:1000, else None."""
    memory = GuestMemory([(0, _RAM)])
    try:
        memory.write(0, _HANDLER.to_bytes(4, "little") * _VECTORS)  # real-mode IVT: 0000:_HANDLER
        memory.write(_HANDLER, b"\xf4")
        memory.write(_CODE, code)
        with Kvm() as kvm, kvm.create_vm() as vm:
            memory.register(vm)
            vcpu = vm.create_vcpu(0)
            try:
                sregs = vcpu.get_sregs()
                for segment in (sregs.cs, sregs.ds):
                    segment.base, segment.selector = 0, 0
                vcpu.set_sregs(sregs)
                regs = vcpu.get_regs()
                regs.rip, regs.rflags = _CODE, 2
                vcpu.set_regs(regs)
                vcpu.set_guest_debug(control, registers)
                for _ in range(_MAX_EXITS):
                    reason = vcpu.run()
                    if reason == ExitReason.DEBUG:
                        arch = vcpu.run_state.u.debug.arch
                        return int(arch.exception), int(arch.dr6)
                    if reason != ExitReason.INTR:
                        return None
                return None
            finally:
                vcpu.close()
    finally:
        memory.close()


@cache
def probe_host() -> HostSupport:
    """Whether int3 breakpoints and data watchpoints reach us on this host (cached).
    What KVM_CAP_SET_GUEST_DEBUG2 says it lacks is not tried."""
    software_control = GuestDebug.ENABLE | GuestDebug.USE_SW_BP
    hardware_control = GuestDebug.ENABLE | GuestDebug.USE_HW_BP
    try:
        with Kvm() as kvm:
            if not kvm.check_extension(Cap.SET_GUEST_DEBUG):
                log.warning("gdb: this KVM has no KVM_SET_GUEST_DEBUG: no breakpoints, no single-step")
                return HostSupport(software_breakpoints=False, watchpoints=False, hardware_breakpoints=False)
            mask = kvm.check_extension(CAP_SET_GUEST_DEBUG2)
        software = not unsupported(software_control, mask)
        sw = _first_debug_exit(_INT3, software_control, [0] * 8) if software else None
        hardware = not unsupported(hardware_control, mask)
        slots = [HardwareBreakpoint(_DATA, Access.WRITE, 1), None, None, None]
        hw = _first_debug_exit(_STORE, hardware_control, debugreg(slots)) if hardware else None
    except (KvmError, OSError) as exc:
        log.warning("gdb: cannot probe KVM's guest debugging (%s): hardware breakpoints only", exc)
        return HostSupport(software_breakpoints=False, watchpoints=False)
    support = HostSupport(
        software_breakpoints=sw is not None and sw[0] == _BP_VECTOR,
        watchpoints=hw is not None and 0 in hit_slots(hw[1]),
        hardware_breakpoints=hardware,
    )
    log.debug("gdb: host guest-debug support %s", support)
    return support


__all__ = ["probe_host"]
