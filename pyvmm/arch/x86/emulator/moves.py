"""Integer data moves: MOV (register, memory, immediate, moffs; and a segment register
stored to memory or a register), MOVZX, MOVSX, MOVSXD (Intel SDM Vol. 2B MOV,
MOVZX, MOVSX/MOVSXD). No flags change."""

from __future__ import annotations

from iced_x86 import Mnemonic, OpKind, RegisterExt

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.segmentation import segment_register


def _is_segment(ctx: Context, index: int) -> bool:
    return bool(
        ctx.insn.op_kind(index) == OpKind.REGISTER
        and RegisterExt.is_segment_register(ctx.insn.op_register(index))
    )


def mov(ctx: Context) -> None:
    """MOV: destination = source; an immediate is already sign-extended by the decoder.
    MOV r/m, Sreg stores the selector (a 16-bit store to memory, zero-extended into a
    32/64-bit register); loading a segment register and control/debug register moves
    are not covered."""
    if _is_segment(ctx, 0):
        raise NotCovered("MOV to a segment register (descriptor loads)")
    if ctx.insn.op_kind(0) == OpKind.REGISTER and not RegisterExt.is_gpr(ctx.insn.op_register(0)):
        raise NotCovered("MOV to a control or debug register")
    if _is_segment(ctx, 1):
        value = int(segment_register(ctx.state, ctx.insn.op_register(1)).selector)
    else:
        if ctx.insn.op_kind(1) == OpKind.REGISTER and not RegisterExt.is_gpr(ctx.insn.op_register(1)):
            raise NotCovered("MOV from a control or debug register")
        value = ctx.read_operand(1)
    ctx.write_operand(0, value)


def movzx(ctx: Context) -> None:
    """MOVZX: the source zero-extended to the destination's size."""
    ctx.write_operand(0, ctx.read_operand(1))


def movsx(ctx: Context) -> None:
    """MOVSX/MOVSXD: the source sign-extended to the destination's size."""
    bits = ctx.operand_size(1) * 8
    value = ctx.read_operand(1)
    if value >> (bits - 1) & 1:
        value -= 1 << bits
    ctx.write_operand(0, value & ((1 << (ctx.operand_size(0) * 8)) - 1))


HANDLERS: dict[int, Handler] = {
    Mnemonic.MOV: mov,
    Mnemonic.MOVZX: movzx,
    Mnemonic.MOVSX: movsx,
    Mnemonic.MOVSXD: movsx,
}
