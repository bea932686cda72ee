"""x87/SSE state instructions outside the XSAVE family: FXSAVE, FXRSTOR (and the
64-bit forms), LDMXCSR, STMXCSR (and VEX VLDMXCSR/VSTMXCSR), FWAIT (Intel SDM Vol. 2A
FXSAVE/FXRSTOR, Vol. 2B LDMXCSR/STMXCSR, Vol. 2C WAIT/FWAIT; Vol. 1 §10.5)."""

from __future__ import annotations

from iced_x86 import EncodingKind, Mnemonic

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector, gp, nm
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.emulator.x87_image import load_x87, mxcsr, x87_bytes, xmm_bytes
from pyvmm.arch.x86.emulator.xsave_area import (
    FSW,
    MXCSR,
    SSE,
    X87,
    XMM0,
    mark_in_use,
    mxcsr_mask,
    u16,
    u32,
)
from pyvmm.arch.x86.registers import Cr0

FXSAVE_AREA = 512
FSW_ES = 1 << 7  # x87 error summary: an unmasked exception is pending


def _fx_checks(ctx: Context) -> int:
    """#NM if CR0.TS or CR0.EM; #GP(0) if the area is not 16-byte aligned."""
    cr0 = ctx.state.sregs.cr0
    if cr0 & (Cr0.TS | Cr0.EM):
        raise nm()
    linear = ctx.memory_linear(FXSAVE_AREA, write=False)
    if linear % 16:
        raise gp(0)
    return linear


def _register_count(ctx: Context) -> int:
    return 16 if ctx.long_mode else 8


def fxsave(ctx: Context) -> None:
    """FXSAVE/FXSAVE64: x87 state, MXCSR, MXCSR_MASK and the XMM registers into a
    512-byte area (bytes 0..159 x87, 24..31 MXCSR, 160.. XMM0-7 or XMM0-15 in 64-bit
    mode). Bytes 288/416..511 are left alone (reserved or available to software).
    XMM and MXCSR are saved whatever CR4.OSFXSR says (the SDM leaves it open)."""
    linear = _fx_checks(ctx)
    count = _register_count(ctx)
    kvm = ctx.state.xsave_area()
    span = ctx.mmu.span(linear, XMM0 + 16 * count, AccessKind.WRITE)
    image = bytearray(x87_bytes(kvm, rex_w=ctx.insn.mnemonic == Mnemonic.FXSAVE64))
    image[24:32] = kvm[24:32]
    span.write(bytes(image) + xmm_bytes(kvm, count))


def fxrstor(ctx: Context) -> None:
    """FXRSTOR/FXRSTOR64: the reverse of FXSAVE; #GP(0) if the image's MXCSR sets a bit
    outside MXCSR_MASK."""
    linear = _fx_checks(ctx)
    count = _register_count(ctx)
    image = ctx.mmu.span(linear, XMM0 + 16 * count, AccessKind.READ).read()
    kvm = ctx.state.xsave_area()
    value = u32(image, MXCSR)
    if value & ~mxcsr_mask(kvm):
        raise gp(0)
    load_x87(kvm, image, rex_w=ctx.insn.mnemonic == Mnemonic.FXRSTOR64)
    kvm[MXCSR : MXCSR + 4] = image[MXCSR : MXCSR + 4]
    kvm[XMM0 : XMM0 + 16 * count] = image[XMM0 : XMM0 + 16 * count]
    mark_in_use(kvm, 1 << X87 | 1 << SSE)


def _mxcsr_checks(ctx: Context) -> None:
    if ctx.insn.encoding == EncodingKind.VEX:
        ctx.require_avx()
    else:
        ctx.require_sse()


def ldmxcsr(ctx: Context) -> None:
    """LDMXCSR/VLDMXCSR m32: #GP(0) for a value with reserved bits set."""
    _mxcsr_checks(ctx)
    value = ctx.read_operand(0)
    kvm = ctx.state.xsave_area()
    if value & ~mxcsr_mask(kvm):
        raise gp(0)
    kvm[MXCSR : MXCSR + 4] = value.to_bytes(4, "little")
    if not u32(kvm, 512) >> SSE & 1:
        # The host restores KVM's copy with the compacted XRSTORS, which resets MXCSR
        # when XSTATE_BV[1] = 0: mark SSE state in use, with XMM registers at zero.
        kvm[XMM0 : XMM0 + 256] = bytes(256)
        mark_in_use(kvm, 1 << SSE)


def stmxcsr(ctx: Context) -> None:
    """STMXCSR/VSTMXCSR m32."""
    _mxcsr_checks(ctx)
    ctx.write_operand(0, mxcsr(ctx.state.xsave_area()))


def fwait(ctx: Context) -> None:
    """WAIT/FWAIT: #NM if CR0.MP and CR0.TS; #MF if an unmasked x87 exception is
    pending (FSW.ES) and CR0.NE = 1. With CR0.NE = 0 the error would be signalled on
    the FERR# pin, which pyvmm does not model."""
    cr0 = ctx.state.sregs.cr0
    if cr0 & Cr0.MP and cr0 & Cr0.TS:
        raise nm()
    kvm = ctx.state.xsave_area()
    status = u16(kvm, FSW) if (u32(kvm, 512) >> X87) & 1 else 0
    if status & FSW_ES:
        if not cr0 & Cr0.NE:
            raise NotCovered("a pending x87 exception with CR0.NE = 0 (FERR#)")
        raise InjectFault(Vector.MF)


HANDLERS: dict[int, Handler] = {
    Mnemonic.FXSAVE: fxsave,
    Mnemonic.FXSAVE64: fxsave,
    Mnemonic.FXRSTOR: fxrstor,
    Mnemonic.FXRSTOR64: fxrstor,
    Mnemonic.LDMXCSR: ldmxcsr,
    Mnemonic.VLDMXCSR: ldmxcsr,
    Mnemonic.STMXCSR: stmxcsr,
    Mnemonic.VSTMXCSR: stmxcsr,
    Mnemonic.WAIT: fwait,
}
