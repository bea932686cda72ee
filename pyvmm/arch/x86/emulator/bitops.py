"""POPCNT (Intel SDM Vol. 2B): the number of 1 bits of the source; OF, SF, ZF, AF, CF
and PF are cleared, then ZF is set when the source is 0."""

from __future__ import annotations

from iced_x86 import Mnemonic

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.registers import STATUS_FLAGS, Rflags


def popcnt(ctx: Context) -> None:
    source = ctx.read_operand(1)
    ctx.write_operand(0, source.bit_count())
    ctx.set_status_flags(Rflags.ZF if source == 0 else 0, STATUS_FLAGS)


HANDLERS: dict[int, Handler] = {Mnemonic.POPCNT: popcnt}
