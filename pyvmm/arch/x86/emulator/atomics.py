"""Atomic read-modify-write instructions: CMPXCHG, CMPXCHG8B, CMPXCHG16B, XADD and
XCHG (Intel SDM Vol. 2A/2B, and Vol. 3A §9.1.2.2 for which of them are locked).

Atomicity: pyvmm may run several vCPU threads, and an instruction emulated in one of
them must not interleave with the same kind of emulation in another. All emulated
read-modify-writes therefore take one process-wide lock. This does *not* exclude
guest code running natively on other vCPUs at the same moment (it accesses guest RAM
without going through pyvmm): against those the emulated update is only as atomic as
a plain read followed by a plain write of host memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from iced_x86 import Code, Mnemonic, Register

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import gp
from pyvmm.arch.x86.emulator.flags import add, sub
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.mmu import Span
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.registers import STATUS_FLAGS, Rflags

ATOMICS_LOCK = threading.Lock()

_ACCUMULATOR = {1: Register.AL, 2: Register.AX, 4: Register.EAX, 8: Register.RAX}
_PAIR_LOW = {8: (Register.EAX, Register.EDX, Register.EBX, Register.ECX),
             16: (Register.RAX, Register.RDX, Register.RBX, Register.RCX)}  # fmt: skip


def _little(value: int, size: int) -> bytes:
    return (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")


def _locked_update(span_for: Callable[[], Span], size: int, update: Callable[[int], int]) -> int:
    """The read-modify-write every instruction here does on memory, under
    `ATOMICS_LOCK`: translate (`span_for`, inside the lock, so a fault leaves memory
    as it was), read the operand, write `update(operand)`. The operand as read."""
    with ATOMICS_LOCK:
        span = span_for()
        current = int.from_bytes(span.read(), "little")
        span.write(_little(update(current), size))
    return current


def cmpxchg(ctx: Context) -> None:
    """CMPXCHG r/m, r: compare the accumulator with the destination; equal: ZF = 1 and
    destination = source; not equal: ZF = 0 and accumulator = destination. The other
    status flags are those of CMP accumulator, destination. A memory destination is
    always written (with its own value when not equal)."""
    size = ctx.operand_size(0)
    accumulator = _ACCUMULATOR[size]
    source = ctx.read_register(ctx.insn.op_register(1))
    expected = ctx.read_register(accumulator)
    if ctx.is_memory(0):
        current = _locked_update(
            lambda: ctx.memory_span(size, AccessKind.WRITE),
            size,
            lambda operand: source if operand == expected else operand,
        )
    else:
        destination = ctx.insn.op_register(0)
        current = ctx.read_register(destination)
        if current == expected:
            ctx.write_register(destination, source)
    _, status = sub(expected, current, size)
    if current != expected:
        ctx.write_register(accumulator, current)
    ctx.set_status_flags(status, STATUS_FLAGS)


def cmpxchg8b_16b(ctx: Context) -> None:
    """CMPXCHG8B m64 / CMPXCHG16B m128: compare EDX:EAX (RDX:RAX) with the operand;
    equal: ZF = 1 and the operand = ECX:EBX (RCX:RBX); else ZF = 0 and EDX:EAX = the
    operand. Only ZF changes. CMPXCHG16B needs a 16-byte aligned operand (#GP(0))."""
    if not ctx.is_memory(0):
        raise NotCovered("CMPXCHG8B/16B with a register operand (decoded as invalid)")
    size = 16 if ctx.insn.code == Code.CMPXCHG16B_M128 else 8
    low, high, new_low, new_high = _PAIR_LOW[size]
    half = size // 2
    expected = ctx.read_register(low) | ctx.read_register(high) << (half * 8)
    replacement = ctx.read_register(new_low) | ctx.read_register(new_high) << (half * 8)
    linear = ctx.memory_linear(size, write=True)
    if size == 16 and linear % 16:
        raise gp(0)
    ctx.check_alignment(linear, 8)
    current = _locked_update(
        lambda: ctx.mmu.span(linear, size, AccessKind.WRITE),
        size,
        lambda operand: replacement if operand == expected else operand,
    )
    if current == expected:
        ctx.state.rflags |= Rflags.ZF
    else:
        ctx.state.rflags &= ~Rflags.ZF
        ctx.write_register(low, current)
        ctx.write_register(high, current >> (half * 8))


def xadd(ctx: Context) -> None:
    """XADD r/m, r: TEMP = SRC + DEST; SRC = DEST; DEST = TEMP; flags of the ADD."""
    size = ctx.operand_size(0)
    source_register = ctx.insn.op_register(1)
    source = ctx.read_register(source_register)
    if ctx.is_memory(0):
        current = _locked_update(
            lambda: ctx.memory_span(size, AccessKind.WRITE),
            size,
            lambda operand: add(source, operand, size)[0],
        )
        _, status = add(source, current, size)
        ctx.write_register(source_register, current)
    else:
        destination = ctx.insn.op_register(0)
        current = ctx.read_register(destination)
        total, status = add(source, current, size)
        ctx.write_register(source_register, current)
        ctx.write_register(destination, total)
    ctx.set_status_flags(status, STATUS_FLAGS)


def xchg(ctx: Context) -> None:
    """XCHG: swap the operands; with a memory operand the processor locks the bus
    whether or not LOCK is given (SDM Vol. 2B XCHG). No flags change."""
    size = ctx.operand_size(0)
    memory_index = 0 if ctx.is_memory(0) else 1 if ctx.is_memory(1) else None
    if memory_index is None:
        first, second = ctx.insn.op_register(0), ctx.insn.op_register(1)
        a, b = ctx.read_register(first), ctx.read_register(second)
        ctx.write_register(first, b)
        ctx.write_register(second, a)
        return
    register = ctx.insn.op_register(1 - memory_index)
    value = ctx.read_register(register)
    current = _locked_update(lambda: ctx.memory_span(size, AccessKind.WRITE), size, lambda _: value)
    ctx.write_register(register, current)


HANDLERS: dict[int, Handler] = {
    Mnemonic.CMPXCHG: cmpxchg,
    Mnemonic.CMPXCHG8B: cmpxchg8b_16b,
    Mnemonic.CMPXCHG16B: cmpxchg8b_16b,
    Mnemonic.XADD: xadd,
    Mnemonic.XCHG: xchg,
}
