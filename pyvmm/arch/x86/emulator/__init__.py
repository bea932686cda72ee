"""User-space emulation of the instructions KVM hands back with
KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION.

`Emulator(vcpu, memory).emulate(insn_bytes)` emulates the instruction at RIP (and,
with `run_ahead`, the vector instructions after a vector one) and returns their
mnemonics; the guest can then be re-entered. Layers, bottom up:
`registers` (bit names), `cpu_state` (the snapshot), `pagewalk` (SDM Vol. 3A ch. 4),
`segmentation`, `mmu` (linear accesses split per page), `fetch` (bytes + iced-x86
decoding), `context` (operands), `faults` (guest exceptions and their delivery), and
one module per instruction group: `atomics`, `xsave`, `fxsave`, `interrupts`,
`system`, `bitops`, `moves`, `sse_moves`.
"""

from pyvmm.arch.x86.emulator.cpu_state import CpuMode, CpuState
from pyvmm.arch.x86.emulator.emulator import HANDLERS, Emulator
from pyvmm.arch.x86.emulator.errors import EmulatorError, UnsupportedInstruction
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector, deliver
from pyvmm.arch.x86.emulator.pagewalk import Access, AccessKind, PagingContext, PagingMode, translate, walk
from pyvmm.arch.x86.emulator.xsave_area import XsaveLayout

__all__ = [
    "HANDLERS",
    "Access",
    "AccessKind",
    "CpuMode",
    "CpuState",
    "Emulator",
    "EmulatorError",
    "InjectFault",
    "PagingContext",
    "PagingMode",
    "UnsupportedInstruction",
    "Vector",
    "XsaveLayout",
    "deliver",
    "translate",
    "walk",
]
