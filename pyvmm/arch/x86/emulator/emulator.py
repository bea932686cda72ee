"""`Emulator`: emulate one guest instruction that KVM could not (KVM_EXIT_INTERNAL_ERROR
with suberror KVM_INTERNAL_ERROR_EMULATION), then let the guest go on.

One call: snapshot the vCPU state, get the instruction (KVM's bytes or a fetch through
the guest page tables), decode it with iced-x86, run its handler, advance RIP, write
back what changed, and deliver the exception the instruction raised if any. A fault
leaves the instruction without effect (RIP unchanged; the handlers check every access
before they write). Instructions not covered raise `UnsupportedInstruction`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from iced_x86 import Formatter, FormatterSyntax, Instruction, Mnemonic

from pyvmm.arch.x86.emulator import (
    atomics,
    bitops,
    fxsave,
    interrupts,
    lost_syscall,
    moves,
    sse_moves,
    system,
    vector_integer,
    xsave,
)
from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.cpu_state import CpuMode, CpuState, VcpuAccess
from pyvmm.arch.x86.emulator.errors import EmulatorError, NotCovered, UnsupportedInstruction
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector, deliver, gp
from pyvmm.arch.x86.emulator.fetch import fetch_and_decode
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.mmu import MmioAccess, Mmu
from pyvmm.arch.x86.emulator.xsave_area import XsaveLayout
from pyvmm.arch.x86.registers import Rflags
from pyvmm.kvm import Kvm
from pyvmm.kvm.x86 import kvm_cpuid_entry2
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

HANDLERS: dict[int, Handler] = {
    **atomics.HANDLERS,
    **bitops.HANDLERS,
    **fxsave.HANDLERS,
    **interrupts.HANDLERS,
    **moves.HANDLERS,
    **sse_moves.HANDLERS,
    **system.HANDLERS,
    **vector_integer.HANDLERS,
    **xsave.HANDLERS,
}

# Vector instructions, which the emulator may run ahead (`Emulator._run_ahead`).
RUN_AHEAD = frozenset({*sse_moves.HANDLERS, *vector_integer.HANDLERS})

# Instructions iced marks as "CPL 0 only" that raise #UD rather than #GP(0) at CPL > 0.
_UD_AT_CPL3 = {Mnemonic.CLAC, Mnemonic.STAC}
DR6_BS = 1 << 14  # single-step (SDM Vol. 3A §18.2.3)
DR7_ENABLE_BITS = 0xFF  # L0, G0 ... L3, G3 (SDM Vol. 3A §18.2.4)
REPAIRED_SYSCALL = "syscall-repaired"  # what `emulate` returns for a lost_syscall repair

_formatter = Formatter(FormatterSyntax.INTEL)


@functools.cache
def _mnemonic_names() -> dict[int, str]:
    """iced's Mnemonic constants by value, built once: a scan of its ~1,600 names on
    every emulated instruction used to cost more than the emulation itself."""
    names: dict[int, str] = {}
    for name in dir(Mnemonic):
        if not name.startswith("_"):
            names.setdefault(getattr(Mnemonic, name), name.lower())
    return names


def mnemonic_name(mnemonic: int) -> str:
    return _mnemonic_names().get(mnemonic, str(mnemonic))


class Emulator:
    """Emulates instructions for one vCPU.

    `xsave_layout` (where the XSAVE components are) and `maxphyaddr` default to what
    the vCPU's KVM reports (KVM_GET_SUPPORTED_CPUID, leaves 0DH and 80000008H).
    `mmio` receives data accesses to guest-physical addresses outside RAM.
    `exception_payload` says whether KVM_CAP_EXCEPTION_PAYLOAD is enabled.
    `read_msrs` (KVM_GET_MSRS), where given, makes the emulator first check each exit
    for a SYSCALL the host lost at CPL 3 and repair it (see `lost_syscall`); pass it
    only on hosts where `host_probe.syscall_reaches_cpl0()` is False.
    `run_ahead`: after a vector instruction, how many of the vector instructions that
    follow it to emulate before the guest goes on (see `_run_ahead`).
    """

    def __init__(
        self,
        vcpu: VcpuAccess,
        memory: GuestMemory,
        *,
        xsave_layout: XsaveLayout | None = None,
        maxphyaddr: int | None = None,
        mmio: MmioAccess | None = None,
        exception_payload: bool = False,
        read_msrs: Callable[[list[int]], dict[int, int]] | None = None,
        run_ahead: int = 0,
    ) -> None:
        self.vcpu = vcpu
        self.memory = memory
        self.mmio = mmio
        self.exception_payload = exception_payload
        self.read_msrs = read_msrs
        self.run_ahead = run_ahead
        self._layout = xsave_layout
        self._maxphyaddr = maxphyaddr
        self.last_fault: InjectFault | None = None

    # --- what the CPU is like ------------------------------------------------------------------

    def _cpuid(self) -> list[kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID of the vCPU's KVM (a `pyvmm.kvm.Vcpu` knows it)."""
        kvm = getattr(getattr(self.vcpu, "vm", None), "kvm", None)
        if not isinstance(kvm, Kvm):
            return []
        return kvm.supported_cpuid()

    def xsave_layout(self) -> XsaveLayout:
        if self._layout is None:
            entries = self._cpuid()
            self._layout = XsaveLayout.from_cpuid(entries) if entries else XsaveLayout.typical()
        return self._layout

    def maxphyaddr(self) -> int:
        """CPUID.80000008H:EAX[7:0], 52 when unknown (SDM Vol. 3A §4.1.4)."""
        if self._maxphyaddr is None:
            self._maxphyaddr = 52
            for entry in self._cpuid():
                if entry.function == 0x8000_0008 and entry.eax & 0xFF:
                    self._maxphyaddr = int(entry.eax) & 0xFF
        return self._maxphyaddr

    # --- one instruction -----------------------------------------------------------------------

    def emulate(self, insn_bytes: bytes | None = None) -> list[str]:
        """Emulate the instruction at the vCPU's RIP; returns the mnemonics of what was
        emulated: that instruction, and the vector instructions run ahead after it
        (`run_ahead`).

        `insn_bytes` are the bytes KVM reported with the exit (kvm_run.emulation_failure,
        when flag KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES is set); without
        them the instruction is fetched from guest memory. Raises
        `UnsupportedInstruction` for anything not covered; guest exceptions are
        delivered to the guest (and kept in `last_fault`).
        """
        state = CpuState(self.vcpu)
        mmu = Mmu(state, self.memory, maxphyaddr=self.maxphyaddr(), mmio=self.mmio)
        self.last_fault = None
        code, instruction = b"", None
        if self.read_msrs is not None and lost_syscall.repair(state, mmu, self.read_msrs):
            return [REPAIRED_SYSCALL]
        try:
            if state.mode is CpuMode.VM86:
                raise NotCovered("virtual-8086 mode")
            code, instruction = fetch_and_decode(state, mmu, insn_bytes)
            ctx = Context(state, mmu, instruction, self.xsave_layout)
            self._execute(ctx)
        except NotCovered as exc:
            raise self._unsupported(state, code or insn_bytes or b"", instruction, str(exc)) from None
        except InjectFault as fault:
            self._deliver(fault)
            return [self._name(instruction)]
        trap = ctx.pending
        tf = state.rflags & Rflags.TF
        self._retire(state, instruction)
        names = [self._name(instruction)]
        if trap is None and not tf and instruction.mnemonic in RUN_AHEAD and not self._breakpoints_armed():
            names += self._run_ahead(state, mmu)
        state.write_back()
        if trap is not None:
            self._deliver(trap)
        elif tf:
            self._single_step()
        return names

    def _run_ahead(self, state: CpuState, mmu: Mmu) -> list[str]:
        """Emulate the vector instructions that follow one KVM could not run, up to
        `run_ahead` of them: a host that cannot run one in this mode fails on the next
        too, and each failure costs an exit and a round of state ioctls. Stops before
        anything else: an instruction that is not a vector one, not covered, faults,
        traps, or cannot be fetched (or whose page walk finds something odd) is left to
        the guest (and comes back here if KVM fails on it), with the state as before it."""
        names: list[str] = []
        for _ in range(self.run_ahead):
            checkpoint = state.checkpoint()
            try:
                _, instruction = fetch_and_decode(state, mmu, None)
                if instruction.mnemonic not in RUN_AHEAD:
                    break
                ctx = Context(state, mmu, instruction, self.xsave_layout)
                self._execute(ctx)
            except (NotCovered, InjectFault, EmulatorError):
                state.restore(checkpoint)
                break
            if ctx.pending is not None:
                state.restore(checkpoint)
                break
            self._retire(state, instruction)
            names.append(self._name(instruction))
        return names

    def _breakpoints_armed(self) -> bool:
        """DR7 enables a breakpoint: the instructions run ahead would not check them."""
        return bool(self.run_ahead and self.vcpu.get_debugregs().dr7 & DR7_ENABLE_BITS)

    @staticmethod
    def _retire(state: CpuState, instruction: Instruction) -> None:
        state.rip = instruction.next_ip & ((1 << state.bitness) - 1)
        state.rflags &= ~Rflags.RF  # cleared once an instruction completes (SDM Vol. 3A §18.3.1.1)

    def _execute(self, ctx: Context) -> None:
        insn = ctx.insn
        handler = HANDLERS.get(insn.mnemonic)
        if handler is None:
            if ctx.cpl > 0 and insn.op_code().must_be_cpl0 and insn.mnemonic not in _UD_AT_CPL3:
                raise gp(0)
            raise NotCovered("no handler for this instruction")
        handler(ctx)

    def _deliver(self, fault: InjectFault) -> None:
        log.debug("vCPU emulation: delivering %s", fault)
        self.last_fault = fault
        deliver(self.vcpu, fault, exception_payload=self.exception_payload)

    def _single_step(self) -> None:
        """RFLAGS.TF was set: a single-step #DB trap after the instruction, DR6.BS set."""
        debug = self.vcpu.get_debugregs()
        debug.dr6 |= DR6_BS
        self.vcpu.set_debugregs(debug)
        self._deliver(InjectFault(Vector.DB, trap=True))

    @staticmethod
    def _name(instruction: Instruction | None) -> str:
        return mnemonic_name(instruction.mnemonic) if instruction is not None else "(fetch)"

    @staticmethod
    def _unsupported(
        state: CpuState, code: bytes, instruction: Instruction | None, reason: str
    ) -> UnsupportedInstruction:
        text = _formatter.format(instruction) if instruction is not None else ""
        return UnsupportedInstruction(code, str(text), state.rip, state.mode.value, reason)
