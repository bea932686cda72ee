"""Software interrupts: INT3, INT n and INTO (Intel SDM Vol. 2A "INT n/INTO/INT3/
INT1", Vol. 3A §6.12.1.1 for the gate privilege check).

They are traps: the instruction completes (RIP moves past it) and then the event is
delivered. Before that, outside real mode, the IDT gate is checked as the processor
does for software interrupts: a vector past the IDT limit, a gate of the wrong type or
with DPL < CPL gives #GP(vector * 8 + 2), a gate not present #NP(vector * 8 + 2).
"""

from __future__ import annotations

from iced_x86 import Mnemonic

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.cpu_state import CpuMode
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.registers import Efer, Rflags

IDT_ERROR = 2  # error-code bit: the index refers to the IDT (SDM Vol. 3A §6.13)
_GATE_TYPES_LONG = {0xE, 0xF}  # 64-bit interrupt and trap gates
_GATE_TYPES_LEGACY = {0x5, 0x6, 0x7, 0xE, 0xF}  # task, 16- and 32-bit interrupt/trap gates


def check_gate(ctx: Context, vector: int) -> None:
    """The checks of SDM Vol. 3A §6.12.1.1 for a software interrupt to `vector`."""
    mode = ctx.mode
    if mode is CpuMode.REAL:
        return
    if mode is CpuMode.VM86:
        raise NotCovered("software interrupts in virtual-8086 mode (IOPL and VME rules)")
    idt = ctx.state.sregs.idt
    size = 16 if ctx.state.sregs.efer & Efer.LMA else 8
    error = vector * 8 + IDT_ERROR
    if vector * size + size - 1 > idt.limit:
        raise InjectFault(Vector.GP, error)
    try:
        # An implicit supervisor-mode access (SDM Vol. 3A §4.6).
        gate = int.from_bytes(ctx.mmu.read(idt.base + vector * size, 8, user=False), "little")
    except InjectFault:
        return  # the IDT itself is unreachable: KVM's delivery meets the same fault
    kind = (gate >> 40) & 0xF
    dpl = (gate >> 45) & 3
    present = (gate >> 47) & 1
    types = _GATE_TYPES_LONG if size == 16 else _GATE_TYPES_LEGACY
    if kind not in types or ctx.cpl > dpl:
        raise InjectFault(Vector.GP, error)
    if not present:
        raise InjectFault(Vector.NP, error)


def int3(ctx: Context) -> None:
    """INT3: #BP as a trap (the saved RIP is that of the next instruction)."""
    check_gate(ctx, Vector.BP)
    ctx.pending = InjectFault(Vector.BP, trap=True)


def int_n(ctx: Context) -> None:
    """INT imm8: the interrupt `imm8`, delivered after RIP moved past the instruction."""
    vector = ctx.insn.immediate8
    check_gate(ctx, vector)
    ctx.pending = InjectFault(vector, trap=True, software=True)


def into(ctx: Context) -> None:
    """INTO (outside 64-bit mode, where it is invalid): #OF as a trap when OF = 1."""
    if ctx.state.rflags & Rflags.OF:
        check_gate(ctx, Vector.OF)
        ctx.pending = InjectFault(Vector.OF, trap=True)


HANDLERS: dict[int, Handler] = {
    Mnemonic.INT3: int3,
    Mnemonic.INT: int_n,
    Mnemonic.INTO: into,
}
