"""The XSAVE feature set: XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS and their
64-bit forms (Intel SDM Vol. 1 chapter 13, §13.7-13.12), against KVM's copy of the
vCPU's XSAVE area (standard format) and XCR0.

- RFBM = EDX:EAX AND XCR0 (XCR0 OR IA32_XSS for XSAVES/XRSTORS).
- XINUSE is taken to be XSTATE_BV of KVM's copy (KVM keeps the header the host's
  XSAVES wrote, which reflects the processor's init tracking).
- XSAVEOPT uses the init optimization, not the modified optimization (the SDM lets
  it skip components unmodified since XRSTOR; it never has to).
- XSAVES/XRSTORS are performed for user state components only: KVM's copy holds no
  supervisor state, so an RFBM bit from IA32_XSS is not covered.
- Every byte range the instruction reads or writes is translated (and may fault)
  before anything is written.
"""

from __future__ import annotations

from iced_x86 import Mnemonic, Register

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import gp, nm, ud
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.mmu import Span
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.emulator.x87_image import MXCSR_RANGE, X87_RANGES, load_x87, x87_bytes
from pyvmm.arch.x86.emulator.xsave_area import (
    AVX,
    EXTENDED,
    HI16_ZMM,
    MXCSR,
    MXCSR_INIT,
    SSE,
    X87,
    XCOMP_BV,
    XCOMP_BV_COMPACTED,
    XMM0,
    XSTATE_BV,
    ZMM_HI256,
    XsaveLayout,
    in_use,
    mxcsr_mask,
    put_u64,
    u32,
    u64,
)
from pyvmm.arch.x86.registers import Cr0, Cr4

IA32_XSS = 0xDA0
_SUPERVISOR_COMPONENTS_NOTE = "XSAVES/XRSTORS of supervisor state components (IA32_XSS)"


class _Area:
    """The guest's XSAVE area: byte ranges relative to its base, translated first."""

    def __init__(self, ctx: Context, base: int, ranges: list[tuple[int, int]], kind: AccessKind) -> None:
        self.base = base
        self.spans: dict[tuple[int, int], Span] = {}
        for start, end in ranges:
            if end > start and (start, end) not in self.spans:
                self.spans[(start, end)] = ctx.mmu.span(base + start, end - start, kind)

    # An empty range has no span: a component the instruction touches none of in this
    # mode (Hi16_ZMM outside 64-bit mode, `_component_bytes`) reads as nothing and
    # takes no bytes, but keeps its place in XSTATE_BV.
    def read(self, start: int, end: int) -> bytes:
        return self.spans[(start, end)].read() if end > start else b""

    def write(self, start: int, data: bytes | bytearray) -> None:
        if data:
            self.spans[(start, start + len(data))].write(data)


def _checks(ctx: Context, *, supervisor: bool) -> tuple[int, int]:
    """Faults common to the family (SDM Vol. 2C XSAVE "Protected Mode Exceptions"):
    #UD without CR4.OSXSAVE, #GP(0) for XSAVES/XRSTORS at CPL > 0, #NM with CR0.TS,
    #GP(0) for an area not 64-byte aligned. Returns (linear base, RFBM)."""
    state = ctx.state
    if not state.sregs.cr4 & Cr4.OSXSAVE:
        raise ud()
    if supervisor and ctx.cpl > 0:
        raise gp(0)
    if state.sregs.cr0 & Cr0.TS:
        raise nm()
    base = ctx.memory_linear(EXTENDED, write=False)
    if base % 64:
        raise gp(0)
    mask = (ctx.read_register(Register.EDX) << 32) | ctx.read_register(Register.EAX)
    rfbm = mask & state.xcr0
    if supervisor and mask & ~state.xcr0 & _xss(ctx):
        raise NotCovered(_SUPERVISOR_COMPONENTS_NOTE)
    unknown = rfbm & ~ctx.layout.supported
    if unknown:
        raise NotCovered(f"XSAVE state components {unknown:#x} missing from KVM's XSAVE layout")
    return base, rfbm


def _xss(ctx: Context) -> int:
    get_msrs = getattr(ctx.state.vcpu, "get_msrs", None)
    if get_msrs is None:
        return 0
    return int(get_msrs([IA32_XSS]).get(IA32_XSS, 0))


def _register_count(ctx: Context) -> int:
    """XMM8-15 (and their upper halves) exist only in 64-bit mode (SDM Vol. 1 §13.13)."""
    return 16 if ctx.long_mode else 8


def _component_bytes(ctx: Context, index: int) -> int:
    """How many bytes of component `index` the instruction touches in this mode."""
    size = ctx.layout.component(index).size
    if ctx.long_mode:
        return size
    if index == HI16_ZMM:
        return 0
    if index in (AVX, ZMM_HI256):  # the upper parts of registers 0..7 only
        return size // 2
    return size


def _legacy_ranges(rfbm: int, registers: int, *, mxcsr_with_avx: bool) -> list[tuple[int, int]]:
    ranges = []
    if rfbm >> X87 & 1:
        ranges += list(X87_RANGES)
    if rfbm >> SSE & 1 or (mxcsr_with_avx and rfbm >> AVX & 1):
        ranges.append(MXCSR_RANGE)
    if rfbm >> SSE & 1:
        ranges.append((XMM0, XMM0 + 16 * registers))
    return ranges


def _offsets(ctx: Context, rfbm: int, compacted_bv: int | None) -> dict[int, int]:
    if compacted_bv is None:
        return {i: c.offset for i, c in ctx.layout.components.items() if rfbm >> i & 1}
    offsets = ctx.layout.compacted_offsets(compacted_bv & ~XCOMP_BV_COMPACTED)
    return {i: offset for i, offset in offsets.items() if rfbm >> i & 1}


# --- saving ------------------------------------------------------------------------------------


def _save(
    ctx: Context, *, compacted: bool, supervisor: bool = False, init_optimization: bool = False
) -> None:
    base, rfbm = _checks(ctx, supervisor=supervisor)
    kvm = ctx.state.xsave_area()
    layout: XsaveLayout = ctx.layout
    rex_w = ctx.insn.mnemonic in (Mnemonic.XSAVE64, Mnemonic.XSAVEOPT64, Mnemonic.XSAVEC64, Mnemonic.XSAVES64)
    registers = _register_count(ctx)
    xinuse = in_use(kvm)
    if compacted:
        # The init optimization: only components in use are written (§13.10).
        saved = rfbm & xinuse
        legacy = _legacy_ranges(saved, registers, mxcsr_with_avx=False)
        if rfbm >> SSE & 1 and MXCSR_RANGE not in legacy:
            legacy.append(MXCSR_RANGE)  # MXCSR is saved whenever RFBM[1] = 1
        offsets = _offsets(ctx, saved, rfbm | XCOMP_BV_COMPACTED)
    else:
        # XSAVEOPT's init optimization (§13.9): components in their initial
        # configuration are not written; MXCSR still is when RFBM[1] or RFBM[2].
        saved = rfbm & xinuse if init_optimization else rfbm
        legacy = _legacy_ranges(saved, registers, mxcsr_with_avx=True)
        if rfbm & (1 << SSE | 1 << AVX) and MXCSR_RANGE not in legacy:
            legacy.append(MXCSR_RANGE)
        offsets = _offsets(ctx, saved, None)
    extended = [(offsets[i], offsets[i] + _component_bytes(ctx, i)) for i in sorted(offsets)]
    header = (XSTATE_BV, XCOMP_BV + 8 if compacted else XSTATE_BV + 8)
    area = _Area(ctx, base, [*legacy, header, *extended], AccessKind.WRITE)

    image = x87_bytes(kvm, rex_w=rex_w)
    for start, end in legacy:
        if (start, end) == MXCSR_RANGE:
            area.write(start, kvm[start:end])
        elif start == XMM0:
            area.write(start, bytes(kvm[start:end]) if xinuse >> SSE & 1 else bytes(end - start))
        else:
            area.write(start, image[start:end])
    for index in sorted(offsets):
        component = layout.component(index)
        size = _component_bytes(ctx, index)
        data = kvm[component.offset : component.offset + size] if xinuse >> index & 1 else bytes(size)
        area.write(offsets[index], data)
    if compacted:
        head = bytearray(16)
        put_u64(head, 0, xinuse & rfbm)
        put_u64(head, 8, rfbm | XCOMP_BV_COMPACTED)
        area.write(XSTATE_BV, head)
    else:
        old = int.from_bytes(area.read(XSTATE_BV, XSTATE_BV + 8), "little")
        area.write(XSTATE_BV, ((old & ~rfbm) | (xinuse & rfbm)).to_bytes(8, "little"))


def xsave(ctx: Context) -> None:
    """XSAVE/XSAVE64: the standard format (§13.7)."""
    _save(ctx, compacted=False)


def xsaveopt(ctx: Context) -> None:
    """XSAVEOPT/XSAVEOPT64: the standard format with the init optimization (§13.9);
    the modified optimization is not used (it never has to be)."""
    _save(ctx, compacted=False, init_optimization=True)


def xsavec(ctx: Context) -> None:
    """XSAVEC/XSAVEC64: the compacted format with the init optimization (§13.10)."""
    _save(ctx, compacted=True)


def xsaves(ctx: Context) -> None:
    """XSAVES/XSAVES64 at CPL 0, user components only (§13.11)."""
    _save(ctx, compacted=True, supervisor=True)


# --- restoring ---------------------------------------------------------------------------------


def _restore(ctx: Context, *, supervisor: bool = False) -> None:
    base, rfbm = _checks(ctx, supervisor=supervisor)
    state = ctx.state
    rex_w = ctx.insn.mnemonic in (Mnemonic.XRSTOR64, Mnemonic.XRSTORS64)
    registers = _register_count(ctx)
    header_span = ctx.mmu.span(base + XSTATE_BV, 64, AccessKind.READ)
    header = header_span.read()
    xstate_bv, xcomp_bv = u64(header, 0), u64(header, 8)
    compacted = bool(xcomp_bv & XCOMP_BV_COMPACTED)
    allowed = state.xcr0
    if supervisor and not compacted:
        raise gp(0)  # XRSTORS has no standard form (§13.12)
    if compacted:
        # §13.8.1: XCOMP_BV[62:0] within XCR0, XSTATE_BV within XCOMP_BV, bytes 63:16 zero.
        if xcomp_bv & ~XCOMP_BV_COMPACTED & ~allowed or xstate_bv & ~xcomp_bv or any(header[16:]):
            raise gp(0)
        offsets = _offsets(ctx, rfbm, xcomp_bv)
    else:
        # §13.8.1: XSTATE_BV within XCR0 and bytes 23:8 of the header zero.
        if xstate_bv & ~allowed or any(header[8:24]):
            raise gp(0)
        offsets = _offsets(ctx, rfbm, None)
    load = rfbm & xstate_bv
    reads_mxcsr = (rfbm & (1 << SSE | 1 << AVX)) if not compacted else (load & 1 << SSE)
    legacy = _legacy_ranges(load & ~(1 << SSE), registers, mxcsr_with_avx=False)
    if load >> SSE & 1:
        legacy.append((XMM0, XMM0 + 16 * registers))
    if reads_mxcsr:
        legacy.append(MXCSR_RANGE)
    extended = [(offsets[i], offsets[i] + _component_bytes(ctx, i)) for i in sorted(offsets) if load >> i & 1]
    area = _Area(ctx, base, [*legacy, *extended], AccessKind.READ)

    new_mxcsr = None
    if reads_mxcsr:
        new_mxcsr = u32(area.read(*MXCSR_RANGE), 0)
    elif compacted and rfbm >> SSE & 1:
        new_mxcsr = MXCSR_INIT
    kvm = state.xsave_area()
    if new_mxcsr is not None and new_mxcsr & ~mxcsr_mask(kvm):
        raise gp(0)

    xinuse = in_use(kvm)
    if rfbm >> X87 & 1:
        if load >> X87 & 1:
            image = bytearray(160)
            for start, end in X87_RANGES:
                image[start:end] = area.read(start, end)
            load_x87(kvm, image, rex_w=rex_w)
        else:
            kvm[0:24], kvm[32:160] = bytes(24), bytes(128)
            kvm[0:2] = (0x037F).to_bytes(2, "little")
    if rfbm >> SSE & 1:
        data = area.read(XMM0, XMM0 + 16 * registers) if load >> SSE & 1 else bytes(16 * registers)
        kvm[XMM0 : XMM0 + 16 * registers] = data
    if new_mxcsr is not None:
        kvm[MXCSR : MXCSR + 4] = new_mxcsr.to_bytes(4, "little")
    for index in sorted(offsets):
        component = ctx.layout.component(index)
        size = _component_bytes(ctx, index)
        data = area.read(offsets[index], offsets[index] + size) if load >> index & 1 else bytes(size)
        kvm[component.offset : component.offset + size] = data
    # The new XINUSE: components loaded from memory are in use, initialized ones not.
    xinuse = (xinuse & ~rfbm) | load
    if new_mxcsr is not None and new_mxcsr != MXCSR_INIT and not xinuse >> SSE & 1:
        # The host restores KVM's copy with the compacted XRSTORS, which resets MXCSR
        # when XSTATE_BV[1] = 0: mark SSE in use (its XMM bytes are the zeros above).
        xinuse |= 1 << SSE
    put_u64(kvm, XSTATE_BV, xinuse)


def xrstor(ctx: Context) -> None:
    """XRSTOR/XRSTOR64: standard or compacted form by XCOMP_BV[63] (§13.8)."""
    _restore(ctx)


def xrstors(ctx: Context) -> None:
    """XRSTORS/XRSTORS64 at CPL 0, compacted form, user components only (§13.12)."""
    _restore(ctx, supervisor=True)


HANDLERS: dict[int, Handler] = {
    Mnemonic.XSAVE: xsave,
    Mnemonic.XSAVE64: xsave,
    Mnemonic.XSAVEOPT: xsaveopt,
    Mnemonic.XSAVEOPT64: xsaveopt,
    Mnemonic.XSAVEC: xsavec,
    Mnemonic.XSAVEC64: xsavec,
    Mnemonic.XSAVES: xsaves,
    Mnemonic.XSAVES64: xsaves,
    Mnemonic.XRSTOR: xrstor,
    Mnemonic.XRSTOR64: xrstor,
    Mnemonic.XRSTORS: xrstors,
    Mnemonic.XRSTORS64: xrstors,
}
