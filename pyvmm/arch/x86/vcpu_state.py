"""A vCPU's KVM state, saved and restored (api.rst §4 for each ioctl).

`VcpuState` holds every piece as plain values: each kernel structure as `bytes` of
its exact size (b"" where this KVM lacks the feature), the MSRs as (index, value)
pairs. `save_vcpu` reads it from a vCPU that is out of KVM_RUN with its last exit
completed (a port or MMIO access is complete only once KVM_RUN was entered again:
api.rst "kvm_run"; a KVM_RUN with immediate_exit set does it); `restore_vcpu`
checks every field before it writes anything, and writes in the order KVM needs.

Which MSRs: every one KVM_GET_MSR_INDEX_LIST names that this host's KVM_GET_MSRS
actually reads (a software KVM may list some it cannot read: QEMU filters its list
the same way), computed once per VM by `saved_msr_indices`.
"""

from __future__ import annotations

import ctypes
import errno
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pyvmm.errors import StateError
from pyvmm.kvm import Cap, KvmIoctlError, MpState, Vcpu, Vm, x86
from pyvmm.snapshot.checks import check_bytes, check_int, check_tuple, check_type, fail
from pyvmm.snapshot.registry import saved_state

_NAME = "vcpu"
_Layout = TypeVar("_Layout", bound=ctypes.Structure)
MAX_MSRS = 1024  # KVM lists about 40 on x86; anything near this is not a real state
_MSR_BATCH = 255  # KVM_GET_MSRS refuses 256 entries or more (MAX_IO_MSRS)
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
# KVM_VCPUEVENT_VALID_*: the flags KVM_GET_VCPU_EVENTS can report
_EVENT_FLAGS = (
    x86.KVM_VCPUEVENT_VALID_NMI_PENDING
    | x86.KVM_VCPUEVENT_VALID_SIPI_VECTOR
    | x86.KVM_VCPUEVENT_VALID_SHADOW
    | x86.KVM_VCPUEVENT_VALID_SMM
    | x86.KVM_VCPUEVENT_VALID_PAYLOAD
    | x86.KVM_VCPUEVENT_VALID_TRIPLE_FAULT
)
# Restoring on a host whose TSC runs this close to the saved rate needs no scaling
# (Firecracker's tolerance, taken from QEMU's: two calibrations of one rate differ).
TSC_KHZ_TOLERANCE_PPM = 250

_msr_lists: weakref.WeakKeyDictionary[Vm, tuple[int, ...]] = weakref.WeakKeyDictionary()


@saved_state("vcpu")
@dataclass(frozen=True)
class VcpuState:
    """One vCPU's KVM state. Structures are the kernel's bytes (`kvm_regs`,
    `kvm_sregs`, `kvm_fpu`, the XSAVE area of this KVM's size, `kvm_xcrs`,
    `kvm_lapic_state`, `kvm_vcpu_events`, `kvm_debugregs`); b"" where KVM lacks the
    feature (XSAVE, XCRS, an in-kernel LAPIC, VCPU_EVENTS, DEBUGREGS)."""

    vcpu_id: int
    regs: bytes
    sregs: bytes
    fpu: bytes
    xsave: bytes
    xcrs: bytes
    lapic: bytes
    debugregs: bytes
    msrs: tuple[tuple[int, int], ...]
    events: bytes
    mp_state: int
    tsc_khz: int  # 0: this KVM cannot tell (no KVM_CAP_GET_TSC_KHZ)


def saved_msr_indices(vcpu: Vcpu) -> tuple[int, ...]:
    """The MSRs a snapshot of a vCPU of this VM holds: KVM_GET_MSR_INDEX_LIST, less
    those KVM_GET_MSRS does not read on this host. Computed once per VM."""
    known = _msr_lists.get(vcpu.vm)
    if known is None:
        listed = list(dict.fromkeys(vcpu.vm.kvm.msr_index_list()))[:MAX_MSRS]
        known = tuple(_read_msrs(vcpu, listed))
        _msr_lists[vcpu.vm] = known
    return known


def _read_msrs(vcpu: Vcpu, indices: Sequence[int]) -> dict[int, int]:
    """The values of those of `indices` KVM reads. KVM_GET_MSRS stops at the first
    MSR it cannot read and says how many it did: skip that one and go on after it."""
    values: dict[int, int] = {}
    start = 0
    while start < len(indices):
        batch = indices[start : start + _MSR_BATCH]
        got = vcpu.get_msrs(list(batch))
        values.update(got)
        start += len(got) if len(got) == len(batch) else len(got) + 1
    return values


def kernel_bytes(structure: ctypes.Structure | ctypes.Union) -> bytes:
    """A kernel structure's bytes, all `sizeof` of them (a saved state's form)."""
    return bytes(memoryview(structure).cast("B"))


def read_if_present(read: Callable[[], ctypes.Structure | ctypes.Union]) -> bytes:
    """The bytes `read` (a KVM_GET_* of an in-kernel device) returns, or b"" when
    KVM answers ENXIO: the VM has no such device (no KVM_CREATE_IRQCHIP, no PIT)."""
    try:
        return kernel_bytes(read())
    except KvmIoctlError as exc:
        if exc.errno == errno.ENXIO:
            return b""
        raise


def save_vcpu(vcpu: Vcpu, msr_indices: Sequence[int] | None = None) -> VcpuState:
    """Read `vcpu`'s state; the MSRs of `msr_indices` (`saved_msr_indices` when None).

    Order (as Firecracker's save_state reasons): MP state first, as
    KVM_GET_MP_STATE lets the LAPIC accept pending INIT/SIPI events, which changes
    registers read after it; vCPU events last, as the other GETs may still turn a
    pending event into an injected one."""
    has = vcpu.vm.kvm.check_extension
    mp_state = int(vcpu.get_mp_state())
    regs = kernel_bytes(vcpu.get_regs())
    sregs = kernel_bytes(vcpu.get_sregs())
    fpu = kernel_bytes(vcpu.get_fpu())
    xsave = kernel_bytes(vcpu.get_xsave()) if has(Cap.XSAVE) else b""
    xcrs = kernel_bytes(vcpu.get_xcrs()) if has(Cap.XCRS) else b""
    debugregs = kernel_bytes(vcpu.get_debugregs()) if has(Cap.DEBUGREGS) else b""
    lapic = read_if_present(vcpu.get_lapic)
    indices = saved_msr_indices(vcpu) if msr_indices is None else tuple(msr_indices)
    values = _read_msrs(vcpu, indices)
    if len(values) != len(indices):
        missing = [hex(index) for index in indices if index not in values]
        raise StateError(f"vCPU {vcpu.id}: KVM read no value for MSRs {', '.join(missing[:8])}")
    tsc_khz = vcpu.get_tsc_khz() if has(Cap.GET_TSC_KHZ) else 0
    events = kernel_bytes(vcpu.get_vcpu_events()) if has(Cap.VCPU_EVENTS) else b""
    return VcpuState(
        vcpu_id=vcpu.id,
        regs=regs,
        sregs=sregs,
        fpu=fpu,
        xsave=xsave,
        xcrs=xcrs,
        lapic=lapic,
        debugregs=debugregs,
        msrs=tuple(values.items()),
        events=events,
        mp_state=mp_state,
        tsc_khz=tsc_khz,
    )


def check_structure(
    owner: str, name: str, value: object, layout: type[ctypes.Structure], *, optional: bool = False
) -> bytes:
    """`value`: the bytes of one `layout` (or b"" where `optional`); else `StateError`."""
    size = ctypes.sizeof(layout)
    data = check_bytes(owner, name, value, 0 if optional else size, size)
    if len(data) not in (0, size):
        raise fail(owner, f"{name} holds {len(data)} bytes, not {size}")
    return data


def _check_msrs(value: object) -> dict[int, int]:
    pairs = check_tuple(_NAME, "msrs", value, MAX_MSRS)
    msrs: dict[int, int] = {}
    for slot, pair in enumerate(pairs):
        if type(pair) is not tuple or len(pair) != 2:
            raise fail(_NAME, f"msrs[{slot}] is not an (index, value) pair")
        index = check_int(_NAME, f"msrs[{slot}] index", pair[0], 0, _U32)
        if index in msrs:
            raise fail(_NAME, f"MSR {index:#x} is saved twice")
        msrs[index] = check_int(_NAME, f"MSR {index:#x}", pair[1], 0, _U64)
    return msrs


def check_vcpu_state(vcpu: Vcpu, state: object) -> VcpuState:
    """`state`, if every field fits this vCPU and this KVM; else `StateError`."""
    checked = check_type(_NAME, state, VcpuState)
    has = vcpu.vm.kvm.check_extension
    if check_int(_NAME, "vcpu_id", checked.vcpu_id, 0, _U32) != vcpu.id:
        raise fail(_NAME, f"saved for vCPU {checked.vcpu_id}, restored into vCPU {vcpu.id}")
    check_structure(_NAME, "regs", checked.regs, x86.kvm_regs)
    check_structure(_NAME, "sregs", checked.sregs, x86.kvm_sregs)
    check_structure(_NAME, "fpu", checked.fpu, x86.kvm_fpu)
    xsave_layout = type(vcpu.get_xsave()) if has(Cap.XSAVE) else x86.kvm_xsave
    check_structure(_NAME, "xsave", checked.xsave, xsave_layout, optional=True)
    if checked.xsave and not has(Cap.XSAVE):
        raise fail(_NAME, "has an XSAVE area, and this KVM lacks KVM_CAP_XSAVE")
    xcrs = check_structure(_NAME, "xcrs", checked.xcrs, x86.kvm_xcrs, optional=True)
    if xcrs and x86.kvm_xcrs.from_buffer_copy(xcrs).nr_xcrs > x86.KVM_MAX_XCRS:
        raise fail(_NAME, f"xcrs counts more than {x86.KVM_MAX_XCRS} registers")
    check_structure(_NAME, "lapic", checked.lapic, x86.kvm_lapic_state, optional=True)
    check_structure(_NAME, "debugregs", checked.debugregs, x86.kvm_debugregs, optional=True)
    if check_structure(_NAME, "events", checked.events, x86.kvm_vcpu_events, optional=True):
        flags = x86.kvm_vcpu_events.from_buffer_copy(checked.events).flags
        if flags & ~_EVENT_FLAGS:
            raise fail(_NAME, f"events flags {flags:#x} has bits outside {_EVENT_FLAGS:#x}")
    _check_msrs(checked.msrs)
    check_int(_NAME, "mp_state", checked.mp_state, min(MpState), max(MpState))
    check_int(_NAME, "tsc_khz", checked.tsc_khz, 0, _U32)
    return checked


def restore_vcpu(vcpu: Vcpu, state: object) -> None:
    """Write a checked `VcpuState` into `vcpu` (of a VM whose memory, CPUID and
    irqchip match the saved one's; before its first KVM_RUN or while it is paused).
    A field that does not fit, or a structure KVM refuses, is a `StateError`."""
    checked = check_vcpu_state(vcpu, state)
    _restore_tsc_rate(vcpu, checked.tsc_khz)
    put_structure(_NAME, "regs", vcpu.set_regs, x86.kvm_regs, checked.regs)
    # Before the LAPIC: sregs hold the APIC base (enabled, x2APIC mode), which decides
    # how KVM_SET_LAPIC reads the APIC ID; and CR0/CR4/EFER, which the MSRs and the
    # pending events below are checked against.
    put_structure(_NAME, "sregs", vcpu.set_sregs, x86.kvm_sregs, checked.sregs)
    put_structure(_NAME, "fpu", vcpu.set_fpu, x86.kvm_fpu, checked.fpu)
    if checked.xsave:  # the FPU/SSE state again, and the rest of XSAVE (AVX...)
        put_structure(_NAME, "xsave", vcpu.set_xsave, type(vcpu.get_xsave()), checked.xsave)
    put_structure(_NAME, "xcrs", vcpu.set_xcrs, x86.kvm_xcrs, checked.xcrs)
    put_structure(_NAME, "lapic", vcpu.set_lapic, x86.kvm_lapic_state, checked.lapic)
    # After the LAPIC: KVM keeps a TSC deadline (MSR 0x6e0) only while the LVT timer
    # is in TSC-deadline mode, which the LAPIC registers just set. The TSC MSR itself
    # is written at the restored rate (KVM_SET_TSC_KHZ above).
    with kvm_refusal(_NAME, "MSRs"):
        vcpu.set_msrs(dict(checked.msrs))
    put_structure(_NAME, "debugregs", vcpu.set_debugregs, x86.kvm_debugregs, checked.debugregs)
    # Events late: a pending exception or NMI, the interrupt shadow and SMM are
    # judged against the mode restored above. MP state last: KVM refuses the
    # INIT/SIPI-received states while SET_VCPU_EVENTS left a latched INIT or SMM.
    put_structure(_NAME, "events", vcpu.set_vcpu_events, x86.kvm_vcpu_events, checked.events)
    with kvm_refusal(_NAME, "mp_state"):
        vcpu.set_mp_state(MpState(checked.mp_state))


@contextmanager
def kvm_refusal(owner: str, what: str) -> Iterator[None]:
    """KVM refusing a saved value (a KVM_SET_* ioctl failing) is a `StateError`."""
    try:
        yield
    except KvmIoctlError as exc:
        raise fail(owner, f"KVM refused the saved {what}: {exc}") from None


def put_structure(
    owner: str, what: str, write: Callable[[_Layout], None], layout: type[_Layout], data: bytes
) -> None:
    """`write(layout(data))`, a KVM_SET_* of checked bytes; nothing for b"" (a
    feature the saved KVM lacked)."""
    if data:
        with kvm_refusal(owner, what):
            write(layout.from_buffer_copy(data))


def _restore_tsc_rate(vcpu: Vcpu, saved_khz: int) -> None:
    """Run the guest's TSC at its saved rate: scaled with KVM_SET_TSC_KHZ where this
    host's rate differs by more than the tolerance; refused where KVM cannot scale."""
    has = vcpu.vm.kvm.check_extension
    if not saved_khz or not has(Cap.GET_TSC_KHZ):
        return
    current = vcpu.get_tsc_khz()
    if abs(current - saved_khz) * 1_000_000 <= TSC_KHZ_TOLERANCE_PPM * saved_khz:
        return
    if not has(Cap.TSC_CONTROL):
        raise fail(_NAME, f"TSC ran at {saved_khz} kHz, this host's at {current}, and KVM cannot scale it")
    with kvm_refusal(_NAME, "TSC rate"):
        vcpu.set_tsc_khz(saved_khz)


def pause_clock(vcpus: Iterable[Vcpu]) -> int:
    """KVM_KVMCLOCK_CTRL on each paused vCPU (api.rst §4.70): the guest's kvmclock
    learns it was stopped by the host, so its soft-lockup watchdog does not fire
    after the resume. Call it after pausing, before resuming. Returns how many vCPUs
    were told: none where KVM lacks KVM_CAP_KVMCLOCK_CTRL; a vCPU whose guest has not
    enabled kvmclock is skipped (KVM answers EINVAL)."""
    told = 0
    for vcpu in vcpus:
        if not vcpu.vm.kvm.check_extension(Cap.KVMCLOCK_CTRL):
            return told
        try:
            vcpu.kvmclock_ctrl()
        except KvmIoctlError as exc:
            if exc.errno != errno.EINVAL:
                raise
        else:
            told += 1
    return told
