"""One instruction being emulated: the decoded instruction with its operands, bound
to the vCPU state and the guest's memory. Instruction handlers read and write
operands only through this object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from iced_x86 import (
    CodeSize,
    Instruction,
    InstructionInfo,
    InstructionInfoFactory,
    MemorySizeExt,
    OpKind,
    Register,
    RegisterExt,
)

from pyvmm.arch.x86.emulator.cpu_state import MASK64, CpuMode, CpuState
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector, nm, ud
from pyvmm.arch.x86.emulator.mmu import Mmu, Span
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.emulator.segmentation import linear_address
from pyvmm.arch.x86.emulator.xsave_area import XsaveLayout
from pyvmm.arch.x86.registers import XCR0_AVX, XCR0_AVX512, XCR0_SSE, Cr0, Cr4, Rflags


def _gpr_table() -> dict[int, tuple[int, int, int]]:
    """iced register -> (register number, size in bytes, bit shift)."""
    table: dict[int, tuple[int, int, int]] = {}
    legacy = ("A", "C", "D", "B", "SP", "BP", "SI", "DI")
    for number, name in enumerate(legacy):
        wide = name if len(name) == 2 else name + "X"
        table[getattr(Register, "R" + wide)] = (number, 8, 0)
        table[getattr(Register, "E" + wide)] = (number, 4, 0)
        table[getattr(Register, wide)] = (number, 2, 0)
        table[getattr(Register, name + "L")] = (number, 1, 0)
        if len(name) == 1:
            table[getattr(Register, name + "H")] = (number, 1, 8)
    for number in range(8, 16):
        table[getattr(Register, f"R{number}")] = (number, 8, 0)
        table[getattr(Register, f"R{number}D")] = (number, 4, 0)
        table[getattr(Register, f"R{number}W")] = (number, 2, 0)
        table[getattr(Register, f"R{number}L")] = (number, 1, 0)
    return table


GPRS = _gpr_table()
_ADDRESS_BITS = {CodeSize.CODE16: 16, CodeSize.CODE32: 32, CodeSize.CODE64: 64}
_IMMEDIATE_KINDS = {
    OpKind.IMMEDIATE8: 1,
    OpKind.IMMEDIATE16: 2,
    OpKind.IMMEDIATE32: 4,
    OpKind.IMMEDIATE64: 8,
    OpKind.IMMEDIATE8TO16: 2,
    OpKind.IMMEDIATE8TO32: 4,
    OpKind.IMMEDIATE8TO64: 8,
    OpKind.IMMEDIATE32TO64: 8,
}
_INFO_FACTORY = InstructionInfoFactory()


@dataclass(frozen=True)
class MemoryOperand:
    """The memory operand: segment register (iced), offset (already truncated to the
    address size) and the address size in bits."""

    segment: int
    offset: int
    address_bits: int


class Context:
    """The instruction, the vCPU state and guest memory, for one emulation."""

    def __init__(
        self, state: CpuState, mmu: Mmu, insn: Instruction, layout: Callable[[], XsaveLayout]
    ) -> None:
        self.state = state
        self.mmu = mmu
        self.insn = insn
        self._layout = layout
        self.pending: InjectFault | None = None  # a trap to deliver after committing

    # --- the machine ------------------------------------------------------------------------

    @property
    def cpl(self) -> int:
        return self.state.cpl

    @property
    def mode(self) -> CpuMode:
        return self.state.mode

    @property
    def long_mode(self) -> bool:
        return self.state.mode is CpuMode.LONG64

    @cached_property
    def layout(self) -> XsaveLayout:
        return self._layout()

    @cached_property
    def info(self) -> InstructionInfo:
        return _INFO_FACTORY.info(self.insn)

    # --- registers ---------------------------------------------------------------------------

    def read_register(self, register: int) -> int:
        try:
            number, size, shift = GPRS[register]
        except KeyError:
            raise NotCovered(f"register operand {register_name(register)}") from None
        return (self.state.gpr(number) >> shift) & ((1 << (size * 8)) - 1)

    def write_register(self, register: int, value: int) -> None:
        """A GPR write: 32-bit writes zero the upper half, 8/16-bit writes merge (SDM
        Vol. 1 §3.4.1.1)."""
        try:
            number, size, shift = GPRS[register]
        except KeyError:
            raise NotCovered(f"register operand {register_name(register)}") from None
        if size >= 4:
            self.state.set_gpr(number, value & ((1 << (size * 8)) - 1))
            return
        mask = ((1 << (size * 8)) - 1) << shift
        old = self.state.gpr(number)
        self.state.set_gpr(number, (old & ~mask) | ((value << shift) & mask))

    def set_status_flags(self, status: int, written: int) -> None:
        self.state.rflags = (self.state.rflags & ~written) | (status & written)

    # --- operands ------------------------------------------------------------------------------

    def operand_size(self, index: int) -> int:
        kind = self.insn.op_kind(index)
        if kind == OpKind.REGISTER:
            return int(RegisterExt.size(self.insn.op_register(index)))
        if kind == OpKind.MEMORY:
            return int(MemorySizeExt.size(self.insn.memory_size))
        if kind in _IMMEDIATE_KINDS:
            return _IMMEDIATE_KINDS[kind]
        raise NotCovered(f"operand kind {kind}")

    def is_memory(self, index: int) -> bool:
        return bool(self.insn.op_kind(index) == OpKind.MEMORY)

    def memory_operand(self) -> MemoryOperand:
        """The effective address (SDM Vol. 1 §3.7.5), from iced's used-memory info."""
        used = self.info.used_memory()
        if len(used) != 1:
            raise NotCovered("an instruction with other than one explicit memory operand")
        memory = used[0]
        bits = _ADDRESS_BITS.get(memory.address_size)
        if bits is None:
            raise NotCovered("a memory operand of unknown address size")
        offset = memory.displacement
        if memory.base != Register.NONE:
            offset += self.read_register(memory.base)
        if memory.index != Register.NONE:
            offset += self.read_register(memory.index) * memory.scale
        return MemoryOperand(memory.segment, offset & ((1 << bits) - 1), bits)

    def memory_linear(self, size: int, *, write: bool) -> int:
        operand = self.memory_operand()
        return linear_address(self.state, operand.segment, operand.offset, size, write=write)

    def memory_span(self, size: int, kind: AccessKind, *, align_check: bool = True) -> Span:
        """The memory operand, segment-checked, translated for `kind` and alignment
        checked (#AC, SDM Vol. 3A §6.15 interrupt 17) when `align_check`."""
        linear = self.memory_linear(size, write=kind is AccessKind.WRITE)
        if align_check:
            self.check_alignment(linear, size)  # before the page walk, as observed natively
        return self.mmu.span(linear, size, kind)

    def check_alignment(self, linear: int, size: int) -> None:
        state = self.state
        if (
            size in (2, 4, 8, 16)
            and linear % size
            and state.cpl == 3
            and state.sregs.cr0 & Cr0.AM
            and state.rflags & Rflags.AC
        ):
            raise InjectFault(Vector.AC, 0)

    def read_operand(self, index: int) -> int:
        kind = self.insn.op_kind(index)
        if kind == OpKind.REGISTER:
            return self.read_register(self.insn.op_register(index))
        if kind == OpKind.MEMORY:
            size = self.operand_size(index)
            return int.from_bytes(self.memory_span(size, AccessKind.READ).read(), "little")
        if kind in _IMMEDIATE_KINDS:
            return int(self.insn.immediate(index)) & ((1 << (_IMMEDIATE_KINDS[kind] * 8)) - 1)
        raise NotCovered(f"operand kind {kind}")

    def write_operand(self, index: int, value: int) -> None:
        kind = self.insn.op_kind(index)
        if kind == OpKind.REGISTER:
            self.write_register(self.insn.op_register(index), value)
            return
        if kind == OpKind.MEMORY:
            size = self.operand_size(index)
            data = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")
            self.memory_span(size, AccessKind.WRITE).write(data)
            return
        raise NotCovered(f"writing operand kind {kind}")

    # --- feature gates ---------------------------------------------------------------------------

    def require_sse(self) -> None:
        """SSE instructions: #UD if CR0.EM = 1 or CR4.OSFXSR = 0, #NM if CR0.TS = 1
        (SDM Vol. 2A §2.5, Table 2-7... "Exception Conditions for SIMD instructions")."""
        sregs = self.state.sregs
        if sregs.cr0 & Cr0.EM or not sregs.cr4 & Cr4.OSFXSR:
            raise ud()
        if sregs.cr0 & Cr0.TS:
            raise nm()

    def require_avx(self) -> None:
        """VEX-encoded instructions: #UD unless CR4.OSXSAVE = 1 and XCR0 enables SSE and
        AVX state, #NM if CR0.TS = 1 (SDM Vol. 2A §2.8, Table 2-20 type 4/5)."""
        sregs = self.state.sregs
        if not sregs.cr4 & Cr4.OSXSAVE or self.state.xcr0 & (XCR0_SSE | XCR0_AVX) != XCR0_SSE | XCR0_AVX:
            raise ud()
        if sregs.cr0 & Cr0.TS:
            raise nm()

    def require_avx512(self) -> None:
        """EVEX-encoded instructions: as VEX, and XCR0 must also enable the opmask and
        ZMM state (SDM Vol. 2A §2.7, Table 2-37)."""
        self.require_avx()
        if self.state.xcr0 & XCR0_AVX512 != XCR0_AVX512:
            raise ud()


def register_name(register: int) -> str:
    for name in dir(Register):
        if not name.startswith("_") and getattr(Register, name) == register:
            return name
    return str(register)


def mask(size: int) -> int:
    return (1 << (size * 8)) - 1 if size < 8 else MASK64
