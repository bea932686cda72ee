"""What this host's KVM really does with two instructions every Linux guest relies on.

A sound KVM (VT-x or AMD-V) does both right; some software-virtualization modules
(seen: `kvm_pvm` running an unmodified guest) do not, and nothing in the KVM API
says so. Each probe runs a throwaway VM of a few pages once per process (a few ms):

- `syscall_reaches_cpl0`: SYSCALL at CPL 3 must enter LSTAR at CPL 0 (Intel SDM
  Vol. 2B, SYSCALL). The faulty host updates RCX, R11, RFLAGS and RIP but stays at
  CPL 3, so the guest takes a user-mode fetch #PF at LSTAR. pyvmm then repairs such
  syscalls (`pyvmm.arch.x86.emulator.lost_syscall`).
- `hypercalls_return`: VMCALL/VMMCALL at CPL 0 must come back (with -KVM_ENOSYS for
  an unknown call number, Linux Documentation/virt/kvm/x86/hypercalls.rst). The
  faulty host never returns from KVM_RUN. pyvmm then hides the KVM paravirtual
  features that work through hypercalls (`cpuid.HYPERCALL_FEATURES`), so Linux
  sends IPIs and kicks CPUs through the APIC instead.

The answers are kept in `$XDG_CACHE_HOME/pyvmm/host-probes.json` (written
atomically), valid while the host stays the same: same boot (boot_id), kernel
release and KVM module parameters. `PYVMM_NO_PROBE_CACHE=1` ignores the file.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from pyvmm.arch.x86.msrs import Msr
from pyvmm.arch.x86.registers import Cr0, Cr4, Efer
from pyvmm.arch.x86.segments import Segment, flat_code, flat_data
from pyvmm.kvm import ExitReason, Kvm, KvmError, Vcpu, x86
from pyvmm.memory import GuestMemory

# Guest-physical = linear layout of a probe VM (4 KiB pages, identity-mapped).
_GDT, _IDT, _KERNEL_CODE, _TSS, _USER_CODE, _KERNEL_STACK_TOP = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x7000
_PML4, _PDPT, _PD, _PT = 0x8000, 0x9000, 0xA000, 0xB000
_ARRIVED = _KERNEL_CODE  # out 0xE2 at CPL 0: the instruction did what it should
_FAULT_HANDLER = _KERNEL_CODE + 0x100  # out 0xE1: an exception
_KERNEL_PROBE = _KERNEL_CODE + 0x200  # CPL 0 code under test, then a jump to _ARRIVED
_ARRIVED_PORT, _FAULTED_PORT = 0xE2, 0xE1
_KERNEL_CS, _USER_BASE = 0x08, 0x10  # IA32_STAR[47:32], IA32_STAR[63:48]
_USER_SS, _USER_CS, _TSS_SELECTOR = 0x1B, 0x23, 0x28
_MEMORY_SIZE = 1 << 20
_HANG_SECONDS = 0.5  # a probe instruction that has not come back by then never will
_UNKNOWN_HYPERCALL = 0xFFFF
_VMCALL, _VMMCALL = bytes.fromhex("0f01c1"), bytes.fromhex("0f01d9")
_AMD_VENDORS = (b"AuthenticAMD", b"HygonGenuine")


def _write_tables(memory: GuestMemory) -> None:
    kernel_code, kernel_data = flat_code(True, _KERNEL_CS), flat_data(_KERNEL_CS + 8)
    user_code, user_data = flat_code(True, _USER_CS, dpl=3), flat_data(_USER_SS, dpl=3)
    tss = Segment(_TSS, 0x67, 0x9, _TSS_SELECTOR, code_or_data=False)
    gdt = [0, kernel_code.descriptor(), kernel_data.descriptor(), user_data.descriptor(),
           user_code.descriptor(), tss.descriptor(), 0]  # fmt: skip
    memory.write(_GDT, struct.pack("<7Q", *gdt))
    gate = (
        (_FAULT_HANDLER & 0xFFFF) | (_KERNEL_CS << 16) | (0x8E << 40)
        | (((_FAULT_HANDLER >> 16) & 0xFFFF) << 48)
    )  # fmt: skip
    memory.write(_IDT, struct.pack("<QQ", gate, 0) * 32)
    for port, address in {_ARRIVED_PORT: _ARRIVED, _FAULTED_PORT: _FAULT_HANDLER}.items():
        memory.write(address, bytes([0xE6, port, 0xF4]))  # out imm8, al; hlt
    memory.write(_TSS + 4, struct.pack("<Q", _KERNEL_STACK_TOP))  # RSP0
    present_writable, user = 0x3, 0x4
    memory.write(_PML4, struct.pack("<Q", _PDPT | present_writable | user))
    memory.write(_PDPT, struct.pack("<Q", _PD | present_writable | user))
    memory.write(_PD, struct.pack("<Q", _PT | present_writable | user))
    table = [page << 12 | present_writable for page in range(16)]
    table[_USER_CODE >> 12] |= user
    table[(_USER_CODE >> 12) + 1] |= user  # the user stack page
    memory.write(_PT, struct.pack("<16Q", *table))


def _long_mode_sregs(sregs: x86.kvm_sregs, cpl: int) -> None:
    if cpl == 3:
        code, data = flat_code(True, _USER_CS, dpl=3), flat_data(_USER_SS, dpl=3)
    else:
        code, data = flat_code(True, _KERNEL_CS), flat_data(_KERNEL_CS + 8)
    sregs.cs = code.to_kvm()
    sregs.ss = sregs.ds = sregs.es = sregs.fs = sregs.gs = data.to_kvm()
    sregs.tr = Segment(_TSS, 0x67, 0xB, _TSS_SELECTOR, code_or_data=False).to_kvm()
    sregs.gdt.base, sregs.gdt.limit = _GDT, 7 * 8 - 1
    sregs.idt.base, sregs.idt.limit = _IDT, 32 * 16 - 1
    sregs.cr0 = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.PG
    sregs.cr3 = _PML4
    sregs.cr4 = Cr4.PAE
    sregs.efer = Efer.SCE | Efer.LME | Efer.LMA


def _run_with_deadline(vcpu: Vcpu) -> int | None:
    """KVM_RUN once on a thread of its own; None if it has not returned in time (the
    thread is then kicked out with immediate_exit and a signal, as `VcpuRunner` does)."""
    kick = signal.SIGUSR1
    result: list[int] = []

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {kick})
        vcpu.set_signal_mask(set())
        result.append(vcpu.run())

    thread = threading.Thread(target=run, name="host-probe", daemon=True)
    thread.start()
    thread.join(_HANG_SECONDS)
    while thread.is_alive():
        vcpu.set_immediate_exit(True)
        if thread.ident is not None:
            signal.pthread_kill(thread.ident, kick)
        thread.join(0.05)
    reason = result[0] if result else None
    return None if reason in (None, ExitReason.INTR) else reason


def _probe(setup: Callable[[Kvm, GuestMemory, Vcpu], None]) -> int | None:
    """Run a probe VM set up by `setup`; the port of its first PIO exit, or None
    (it hung, or exited some other way)."""
    kvm = Kvm()
    try:
        memory = GuestMemory([(0, _MEMORY_SIZE)])
        vm = kvm.create_vm()
        try:
            memory.register(vm)
            _write_tables(memory)
            vcpu = vm.create_vcpu(0)
            try:
                vcpu.set_cpuid2(kvm.supported_cpuid())
                setup(kvm, memory, vcpu)
                reason = _run_with_deadline(vcpu)
                return int(vcpu.run_state.io.port) if reason == ExitReason.IO else None
            finally:
                vcpu.close()
        finally:
            vm.close()
            memory.close()
    finally:
        kvm.close()


def _syscall_at_cpl3(kvm: Kvm, memory: GuestMemory, vcpu: Vcpu) -> None:
    memory.write(_USER_CODE, bytes([0x0F, 0x05, 0xF4]))  # syscall; hlt
    sregs = vcpu.get_sregs()
    _long_mode_sregs(sregs, cpl=3)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(x86.kvm_regs(rip=_USER_CODE, rsp=_USER_CODE + 0x2000, rflags=0x202))
    star = (_USER_BASE << 48) | (_KERNEL_CS << 32)
    vcpu.set_msrs({Msr.IA32_STAR: star, Msr.IA32_LSTAR: _ARRIVED, Msr.IA32_FMASK: 0x200})


def _at_cpl0(memory: GuestMemory, vcpu: Vcpu, instruction: bytes, rax: int = 0) -> None:
    """`instruction` at CPL 0, then a jump to the "arrived" report."""
    jump = bytes([0xE9]) + struct.pack("<i", _ARRIVED - (_KERNEL_PROBE + len(instruction) + 5))
    memory.write(_KERNEL_PROBE, instruction + jump)
    sregs = vcpu.get_sregs()
    _long_mode_sregs(sregs, cpl=0)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(x86.kvm_regs(rip=_KERNEL_PROBE, rsp=_KERNEL_STACK_TOP, rflags=0x2, rax=rax))


def _hypercall_at_cpl0(kvm: Kvm, memory: GuestMemory, vcpu: Vcpu) -> None:
    leaf0 = next((e for e in kvm.supported_cpuid() if e.function == 0), None)
    vendor = struct.pack("<3I", leaf0.ebx, leaf0.edx, leaf0.ecx) if leaf0 is not None else b""
    hypercall = _VMMCALL if vendor in _AMD_VENDORS else _VMCALL  # as Linux patches it
    _at_cpl0(memory, vcpu, hypercall, rax=_UNKNOWN_HYPERCALL)


@functools.cache
def _host_identity() -> str:
    """What the answers depend on: this boot of this kernel, and the KVM modules'
    parameters (a reloaded or reconfigured module may behave differently). Read with
    plain os calls: this runs on every VM start, and pathlib's glob costs ms here."""
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        parts = [boot_id.read().strip(), os.uname().release]
    for module in sorted(name for name in os.listdir("/sys/module") if name.startswith("kvm")):
        directory = f"/sys/module/{module}/parameters"
        try:
            parameters = sorted(os.listdir(directory))
        except OSError:
            continue
        for parameter in parameters:
            try:
                with open(f"{directory}/{parameter}") as value:
                    parts.append(f"{module}.{parameter}={value.read().strip()}")
            except OSError:
                continue
    return "\n".join(parts)  # kept as it is: hashing it would load OpenSSL on every start


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "pyvmm" / "host-probes.json"


def _remembered(name: str, probe: Callable[[], bool]) -> bool:
    """`probe()`, or its answer from the cache file for this very host."""
    if os.environ.get("PYVMM_NO_PROBE_CACHE"):
        return probe()
    try:
        identity = _host_identity()
    except OSError:
        return probe()
    path = _cache_file()
    try:
        stored = json.loads(path.read_text())
        answers = stored["answers"] if stored.get("host") == identity else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        answers = {}
    if isinstance(answers.get(name), bool):
        return bool(answers[name])
    answer = probe()
    import tempfile  # only when a probe ran: most starts read the file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
            json.dump({"host": identity, "answers": {**answers, name: answer}}, file)
        os.replace(file.name, path)
    except OSError:
        pass  # a read-only home: probe again next time
    return answer


def _syscall_probe() -> bool:
    try:
        return _probe(_syscall_at_cpl3) != _FAULTED_PORT
    except (KvmError, OSError):
        return True


def _hypercall_probe() -> bool:
    try:
        return _probe(_hypercall_at_cpl0) is not None
    except (KvmError, OSError):
        return True


@functools.cache
def syscall_reaches_cpl0() -> bool:
    """True when SYSCALL at CPL 3 enters LSTAR at CPL 0 here (or the probe cannot
    tell); False when it arrives at LSTAR still at CPL 3."""
    return _remembered("syscall_reaches_cpl0", _syscall_probe)


@functools.cache
def hypercalls_return() -> bool:
    """True when a hypercall at CPL 0 comes back to the next instruction (or the probe
    cannot tell); False when KVM_RUN never returns from it."""
    return _remembered("hypercalls_return", _hypercall_probe)
