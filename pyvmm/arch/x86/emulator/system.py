"""Small system instructions: UD0/UD1/UD2 (#UD), and CLAC and STAC (Intel SDM Vol. 2A CLAC, Vol. 2B STAC):
clear or set RFLAGS.AC; #UD when CPL > 0 (so also in virtual-8086 mode). Whether the
guest's CPUID has SMAP (else #UD) is not known here: the guest executed it, so it is
taken to have it."""

from __future__ import annotations

from iced_x86 import Mnemonic

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.faults import ud
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.registers import Rflags


def clac(ctx: Context) -> None:
    if ctx.cpl > 0:
        raise ud()
    ctx.state.rflags &= ~Rflags.AC


def stac(ctx: Context) -> None:
    if ctx.cpl > 0:
        raise ud()
    ctx.state.rflags |= Rflags.AC


def undefined(ctx: Context) -> None:
    """UD0, UD1, UD2: raise #UD by definition."""
    raise ud()


HANDLERS: dict[int, Handler] = {
    Mnemonic.CLAC: clac,
    Mnemonic.STAC: stac,
    Mnemonic.UD0: undefined,
    Mnemonic.UD1: undefined,
    Mnemonic.UD2: undefined,
}
