"""What the emulator knows of the vCPU: a snapshot of its registers, segment and
control registers, and (fetched only when an instruction needs them) its XSAVE area
and XCR0; written back to KVM only where something changed."""

from __future__ import annotations

import ctypes
import enum
from typing import Protocol

from pyvmm.arch.x86.emulator.faults import EventTarget
from pyvmm.arch.x86.registers import Cr0, Efer, Rflags
from pyvmm.kvm import x86

# Plain ints for the mode test, which runs several times per emulated instruction (an
# enum member's attribute lookup costs more than the `&`).
_CR0_PE = int(Cr0.PE)
_EFER_LMA = int(Efer.LMA)
_RFLAGS_VM = int(Rflags.VM)

# kvm_regs fields by register number as encoded in instructions (SDM Vol. 2A §2.1.5).
GPR_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip

MASK64 = (1 << 64) - 1
XCR_XCR0 = 0


class VcpuAccess(EventTarget, Protocol):
    """The vCPU ioctls the emulator uses (`pyvmm.kvm.Vcpu` provides them): what fault
    delivery needs (`EventTarget`: registers, segment registers, events) and the rest
    of the state it reads and writes back."""

    def get_xsave(self) -> ctypes.Structure: ...
    def set_xsave(self, area: ctypes.Structure) -> None: ...
    def get_xcrs(self) -> x86.kvm_xcrs: ...
    def set_xcrs(self, xcrs: x86.kvm_xcrs) -> None: ...
    def get_debugregs(self) -> x86.kvm_debugregs: ...
    def set_debugregs(self, regs: x86.kvm_debugregs) -> None: ...


class CpuMode(enum.Enum):
    """The operating modes of SDM Vol. 3A §2.2 as far as decoding and addressing care."""

    REAL = "real mode"
    VM86 = "virtual-8086 mode"
    PROTECTED16 = "16-bit protected mode"
    PROTECTED32 = "32-bit protected mode"
    COMPAT16 = "16-bit compatibility mode"
    COMPAT32 = "32-bit compatibility mode"
    LONG64 = "64-bit mode"


class CpuState:
    """A snapshot of one vCPU's state, changed by the emulator and written back once."""

    def __init__(self, vcpu: VcpuAccess) -> None:
        self.vcpu = vcpu
        self.regs = vcpu.get_regs()
        self.sregs = vcpu.get_sregs()
        self._regs_before = bytes(self.regs)
        self._sregs_before = bytes(self.sregs)
        self._xsave: ctypes.Structure | None = None
        self._xsave_area: bytearray | None = None
        self._xsave_before = b""
        self._xcrs: x86.kvm_xcrs | None = None
        self._xcrs_before = b""

    # --- general registers ------------------------------------------------------------

    def gpr(self, number: int) -> int:
        """The full 64-bit value of general register `number` (0 = RAX ... 15 = R15)."""
        return int(getattr(self.regs, GPR_NAMES[number]))

    def set_gpr(self, number: int, value: int) -> None:
        setattr(self.regs, GPR_NAMES[number], value & MASK64)

    @property
    def rip(self) -> int:
        return int(self.regs.rip)

    @rip.setter
    def rip(self, value: int) -> None:
        self.regs.rip = value & MASK64

    @property
    def rflags(self) -> int:
        return int(self.regs.rflags)

    @rflags.setter
    def rflags(self, value: int) -> None:
        self.regs.rflags = value & MASK64

    # --- modes ----------------------------------------------------------------------------

    @property
    def mode(self) -> CpuMode:
        sregs = self.sregs
        if not sregs.cr0 & _CR0_PE:
            return CpuMode.REAL
        if sregs.efer & _EFER_LMA:
            if sregs.cs.l:
                return CpuMode.LONG64
            return CpuMode.COMPAT32 if sregs.cs.db else CpuMode.COMPAT16
        if self.regs.rflags & _RFLAGS_VM:
            return CpuMode.VM86
        return CpuMode.PROTECTED32 if sregs.cs.db else CpuMode.PROTECTED16

    @property
    def bitness(self) -> int:
        """The default operand/address size of the code segment: 16, 32 or 64."""
        mode = self.mode
        if mode is CpuMode.LONG64:
            return 64
        if mode is CpuMode.VM86:
            return 16
        return 32 if self.sregs.cs.db else 16

    @property
    def cpl(self) -> int:
        """Current privilege level: SS.DPL in protected mode (as KVM keeps it), 0 in real
        mode, 3 in virtual-8086 mode (SDM Vol. 3A §5.5)."""
        mode = self.mode
        if mode is CpuMode.REAL:
            return 0
        if mode is CpuMode.VM86:
            return 3
        return int(self.sregs.ss.dpl)

    # --- extended state (fetched on first use) -----------------------------------------------

    def xsave_area(self) -> bytearray:
        """The vCPU's XSAVE area (KVM_GET_XSAVE: standard format), as a mutable copy."""
        if self._xsave_area is None:
            self._xsave = self.vcpu.get_xsave()
            self._xsave_before = bytes(self._xsave)
            self._xsave_area = bytearray(self._xsave_before)
        return self._xsave_area

    def _xcr_table(self) -> x86.kvm_xcrs:
        if self._xcrs is None:
            self._xcrs = self.vcpu.get_xcrs()
            self._xcrs_before = bytes(self._xcrs)
        return self._xcrs

    @property
    def xcr0(self) -> int:
        """XCR0 (KVM_GET_XCRS); 1 (x87 only, the reset value) if KVM lists no XCR0."""
        table = self._xcr_table()
        for index in range(min(table.nr_xcrs, x86.KVM_MAX_XCRS)):
            if table.xcrs[index].xcr == XCR_XCR0:
                return int(table.xcrs[index].value)
        return 1

    # --- undoing one instruction ----------------------------------------------------------------

    def checkpoint(self) -> tuple[bytes, bytes | None]:
        """The general registers and the XSAVE area as they are now: what the vector
        instructions the emulator runs ahead can change (they leave the segment and
        control registers and XCR0 alone)."""
        area = self._xsave_area
        return bytes(self.regs), bytes(area) if area is not None else None

    def restore(self, checkpoint: tuple[bytes, bytes | None]) -> None:
        regs, area = checkpoint
        ctypes.memmove(ctypes.addressof(self.regs), regs, len(regs))
        if self._xsave_area is not None:
            self._xsave_area[:] = area if area is not None else self._xsave_before

    # --- writing back -----------------------------------------------------------------------

    def write_back(self) -> None:
        """Hand every changed structure back to KVM; unchanged ones are not written."""
        area = self._xsave_area
        if self._xsave is not None and area is not None and bytes(area) != self._xsave_before:
            ctypes.memmove(ctypes.addressof(self._xsave), bytes(area), len(area))
            self.vcpu.set_xsave(self._xsave)
        if self._xcrs is not None and bytes(self._xcrs) != self._xcrs_before:
            self.vcpu.set_xcrs(self._xcrs)
        if bytes(self.sregs) != self._sregs_before:
            self.vcpu.set_sregs(self.sregs)
        if bytes(self.regs) != self._regs_before:
            self.vcpu.set_regs(self.regs)
