"""SSE and AVX data moves of whole registers (Intel SDM Vol. 2B MOVAPS/MOVUPS/
MOVAPD/MOVUPD/MOVDQA/MOVDQU/MOVNTPS/MOVNTPD/MOVNTDQ/MOVD/MOVQ, and their VEX forms).

- Legacy SSE forms leave bits above 127 of the destination register alone; VEX.128
  forms zero them, VEX.256 forms zero bits above 255 (SDM Vol. 1 §14.1.2).
- The aligned forms (MOVAPS, MOVDQA, MOVNT*, ...) raise #GP(0) for a misaligned
  operand (16 bytes, 32 with VEX.256). #AC applies only to accesses of 8 bytes or
  less (exception class 4/5, SDM Vol. 2A §2.4).
- EVEX (AVX-512) forms are covered for XMM0-15/YMM0-15 without an opmask or
  broadcast: they zero the register above their vector length, as VEX does. MMX
  forms are not covered.
"""

from __future__ import annotations

from typing import cast

from iced_x86 import EncodingKind, Mnemonic, OpKind, Register, Register_, RegisterExt

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import gp
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.emulator.xsave_area import (
    clear_above_128,
    clear_above_256,
    set_xmm,
    set_ymm_high,
    xmm,
    ymm_high,
)

_ALIGNED = {
    Mnemonic.MOVAPS, Mnemonic.MOVAPD, Mnemonic.MOVDQA, Mnemonic.MOVNTPS, Mnemonic.MOVNTPD,
    Mnemonic.MOVNTDQ, Mnemonic.VMOVAPS, Mnemonic.VMOVAPD, Mnemonic.VMOVDQA, Mnemonic.VMOVNTPS,
    Mnemonic.VMOVNTPD, Mnemonic.VMOVNTDQ,
}  # fmt: skip


def vector_number(register: int) -> tuple[int, int]:
    """(register number, width in bytes) of an XMM or YMM register."""
    if RegisterExt.is_xmm(cast(Register_, register)):
        number = register - Register.XMM0
        width = 16
    elif RegisterExt.is_ymm(cast(Register_, register)):
        number = register - Register.YMM0
        width = 32
    else:
        raise NotCovered("an MMX or AVX-512 register operand")
    if number >= 16:
        raise NotCovered("XMM16-31/YMM16-31 (EVEX)")
    return number, width


def read_vector(ctx: Context, register: int) -> bytes:
    number, width = vector_number(register)
    area = ctx.state.xsave_area()
    low = xmm(area, number)
    return low if width == 16 else low + ymm_high(area, ctx.layout, number)


def write_vector(ctx: Context, register: int, data: bytes) -> None:
    """Write `data` to the low bytes of a vector register with the zeroing rules of
    the encoding: legacy SSE merges, VEX zeroes the rest of the register."""
    number, width = vector_number(register)
    vex = ctx.insn.encoding in (EncodingKind.VEX, EncodingKind.EVEX)
    area = ctx.state.xsave_area()
    data = data.ljust(16, b"\0")
    set_xmm(area, number, data[:16])
    if width == 32:
        set_ymm_high(area, ctx.layout, number, data[16:32])
        clear_above_256(area, ctx.layout, number)
    elif vex:
        clear_above_128(area, ctx.layout, number)


def check_vector_instruction(ctx: Context) -> None:
    insn = ctx.insn
    for index in range(insn.op_count):
        if insn.op_kind(index) == OpKind.REGISTER and RegisterExt.is_mm(insn.op_register(index)):
            raise NotCovered("MMX register moves")
    encoding = insn.encoding
    if encoding == EncodingKind.VEX:
        ctx.require_avx()
    elif encoding == EncodingKind.LEGACY:
        ctx.require_sse()
    elif encoding == EncodingKind.EVEX:
        if insn.op_mask != Register.NONE or insn.is_broadcast:
            raise NotCovered("EVEX with an opmask or broadcast")
        ctx.require_avx512()
    else:
        raise NotCovered("XOP/3DNow! encodings")


def _memory(ctx: Context, size: int, kind: AccessKind) -> tuple[int, bool]:
    aligned = ctx.insn.mnemonic in _ALIGNED
    linear = ctx.memory_linear(size, write=kind is AccessKind.WRITE)
    if aligned and linear % size:
        raise gp(0)
    return linear, size <= 8


def load_vector(ctx: Context, size: int) -> bytes:
    linear, align_check = _memory(ctx, size, AccessKind.READ)
    if align_check:
        ctx.check_alignment(linear, size)
    return ctx.mmu.span(linear, size, AccessKind.READ).read()


def store_vector(ctx: Context, data: bytes) -> None:
    linear, align_check = _memory(ctx, len(data), AccessKind.WRITE)
    if align_check:
        ctx.check_alignment(linear, len(data))
    ctx.mmu.span(linear, len(data), AccessKind.WRITE).write(data)


def move_vector(ctx: Context) -> None:
    """MOVAPS/MOVUPS/MOVAPD/MOVUPD/MOVDQA/MOVDQU/MOVNT* and VEX forms: a full register."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    if insn.op_kind(0) == OpKind.MEMORY:
        store_vector(ctx, read_vector(ctx, insn.op_register(1)))
        return
    destination = insn.op_register(0)
    if insn.op_kind(1) == OpKind.MEMORY:
        _, width = vector_number(destination)
        data = load_vector(ctx, width)
    else:
        data = read_vector(ctx, insn.op_register(1))
    write_vector(ctx, destination, data)


def move_scalar(ctx: Context) -> None:
    """MOVD/MOVQ (and VMOVD/VMOVQ): 32 or 64 bits between an XMM register and a
    general register, memory or another XMM register; a loaded XMM register is
    zero-extended to 128 bits (and, for VEX, above)."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    size = 4 if insn.mnemonic in (Mnemonic.MOVD, Mnemonic.VMOVD) else 8
    first, second = insn.op_kind(0), insn.op_kind(1)
    if first == OpKind.REGISTER and RegisterExt.is_xmm(insn.op_register(0)):
        if second == OpKind.MEMORY:
            data = load_vector(ctx, size)
        elif RegisterExt.is_xmm(insn.op_register(1)):
            data = read_vector(ctx, insn.op_register(1))[:size]
        else:
            data = ctx.read_register(insn.op_register(1)).to_bytes(8, "little")[:size]
        write_vector(ctx, insn.op_register(0), data.ljust(16, b"\0"))
        return
    data = read_vector(ctx, insn.op_register(1))[:size]
    if first == OpKind.MEMORY:
        store_vector(ctx, data)
    else:
        ctx.write_register(insn.op_register(0), int.from_bytes(data, "little"))


HANDLERS: dict[int, Handler] = {
    **{
        mnemonic: move_vector
        for mnemonic in (
            Mnemonic.MOVAPS,
            Mnemonic.MOVUPS,
            Mnemonic.MOVAPD,
            Mnemonic.MOVUPD,
            Mnemonic.MOVDQA,
            Mnemonic.MOVDQU,
            Mnemonic.MOVNTPS,
            Mnemonic.MOVNTPD,
            Mnemonic.MOVNTDQ,
            Mnemonic.VMOVAPS,
            Mnemonic.VMOVUPS,
            Mnemonic.VMOVAPD,
            Mnemonic.VMOVUPD,
            Mnemonic.VMOVDQA,
            Mnemonic.VMOVDQU,
            Mnemonic.VMOVNTPS,
            Mnemonic.VMOVNTPD,
            Mnemonic.VMOVNTDQ,
        )
    },
    Mnemonic.MOVD: move_scalar,
    Mnemonic.MOVQ: move_scalar,
    Mnemonic.VMOVD: move_scalar,
    Mnemonic.VMOVQ: move_scalar,
}
