"""Integer vector arithmetic on XMM/YMM registers, in the legacy SSE, VEX and EVEX
(no opmask, no broadcast) encodings: what Linux's SIMD code runs in kernel mode,
e.g. `blake2s_compress_avx512` (Intel SDM Vol. 2B/2C: PADDB/W/D/Q, PSUBB/W/D/Q,
PAND, PANDN, POR, PXOR and their D/Q EVEX forms, PSHUFD, PSLLD/Q and PSRLD/Q by an
immediate, VPROLD/Q and VPRORD/Q, VPERMI2D/Q, VEXTRACTI128, VINSERTI128,
VZEROUPPER).

Registers and the zeroing of the upper bits follow `sse_moves`. A legacy-SSE
memory operand of 16 bytes must be 16-byte aligned (#GP(0)); VEX and EVEX ones need
not be (SDM Vol. 2A §2.4, exception type 4).
"""

from __future__ import annotations

from collections.abc import Callable

from iced_x86 import EncodingKind, Mnemonic, OpKind

from pyvmm.arch.x86.emulator.context import Context
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import gp
from pyvmm.arch.x86.emulator.handlers import Handler
from pyvmm.arch.x86.emulator.pagewalk import AccessKind
from pyvmm.arch.x86.emulator.sse_moves import (
    check_vector_instruction,
    read_vector,
    store_vector,
    vector_number,
    write_vector,
)
from pyvmm.arch.x86.emulator.xsave_area import clear_above_128

LaneOp = Callable[[int, int, int], int]  # (a, b, lane bits) -> result lane


def _lanes(data: bytes, size: int) -> list[int]:
    return [int.from_bytes(data[offset : offset + size], "little") for offset in range(0, len(data), size)]


def _join(lanes: list[int], size: int) -> bytes:
    mask = (1 << (8 * size)) - 1
    return b"".join((lane & mask).to_bytes(size, "little") for lane in lanes)


def _operand(ctx: Context, index: int, width: int) -> bytes:
    """Operand `index` (a vector register or memory) as `width` bytes."""
    insn = ctx.insn
    if insn.op_kind(index) == OpKind.REGISTER:
        return read_vector(ctx, insn.op_register(index))[:width]
    linear = ctx.memory_linear(width, write=False)
    if insn.encoding == EncodingKind.LEGACY and width == 16 and linear % 16:
        raise gp(0)
    return ctx.mmu.span(linear, width, AccessKind.READ).read()


def _sources(ctx: Context) -> tuple[int, bytes, bytes]:
    """Destination register and the two sources of a two-source form:
    legacy `op dst, src` (dst is the first source) or VEX/EVEX `op dst, src1, src2`."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    destination = insn.op_register(0)
    _, width = vector_number(destination)
    if insn.encoding == EncodingKind.LEGACY:
        return destination, read_vector(ctx, destination), _operand(ctx, 1, width)
    return destination, _operand(ctx, 1, width), _operand(ctx, 2, width)


def _lanewise(size: int, op: LaneOp) -> Handler:
    def handler(ctx: Context) -> None:
        destination, first, second = _sources(ctx)
        lanes = [op(a, b, 8 * size) for a, b in zip(_lanes(first, size), _lanes(second, size), strict=True)]
        write_vector(ctx, destination, _join(lanes, size))

    return handler


def _immediate_form(size: int, op: LaneOp) -> Handler:
    """`op dst, src, imm8` (VEX/EVEX, and PSHUFD) or legacy `op dst, imm8` (shifts)."""

    def handler(ctx: Context) -> None:
        check_vector_instruction(ctx)
        insn = ctx.insn
        destination = insn.op_register(0)
        _, width = vector_number(destination)
        immediate = insn.immediate(insn.op_count - 1) & 0xFF
        source = read_vector(ctx, destination) if insn.op_count == 2 else _operand(ctx, 1, width)
        lanes = [op(lane, immediate, 8 * size) for lane in _lanes(source, size)]
        write_vector(ctx, destination, _join(lanes, size))

    return handler


def _shift_left(a: int, count: int, bits: int) -> int:
    return 0 if count >= bits else a << count


def _shift_right(a: int, count: int, bits: int) -> int:
    return 0 if count >= bits else a >> count


def _rotate_left(a: int, count: int, bits: int) -> int:
    count %= bits
    return (a << count | a >> (bits - count)) & ((1 << bits) - 1)


def _rotate_right(a: int, count: int, bits: int) -> int:
    return _rotate_left(a, (bits - count % bits) % bits, bits)


def pshufd(ctx: Context) -> None:
    """PSHUFD/VPSHUFD: each 128-bit lane's dwords picked by two bits of imm8 each."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    destination = insn.op_register(0)
    _, width = vector_number(destination)
    order = insn.immediate(2) & 0xFF
    source = _lanes(_operand(ctx, 1, width), 4)
    lanes = [source[(index & ~3) + (order >> (2 * (index & 3)) & 3)] for index in range(len(source))]
    write_vector(ctx, destination, _join(lanes, 4))


def permute_two_tables(ctx: Context) -> None:
    """VPERMI2D/VPERMI2Q: each destination element is an index into the pair of
    tables (src1, src2); the element becomes the one it indexes."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    size = 4 if insn.mnemonic == Mnemonic.VPERMI2D else 8
    destination = insn.op_register(0)
    _, width = vector_number(destination)
    count = width // size
    tables = _lanes(_operand(ctx, 1, width), size) + _lanes(_operand(ctx, 2, width), size)
    indices = _lanes(read_vector(ctx, destination)[:width], size)
    write_vector(ctx, destination, _join([tables[index % (2 * count)] for index in indices], size))


def extract_128(ctx: Context) -> None:
    """VEXTRACTI128/VEXTRACTF128: the low or high half of a YMM register."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    source = read_vector(ctx, insn.op_register(1))
    data = source[16:32] if insn.immediate(2) & 1 else source[:16]
    if insn.op_kind(0) == OpKind.MEMORY:
        store_vector(ctx, data)
    else:
        write_vector(ctx, insn.op_register(0), data)


def insert_128(ctx: Context) -> None:
    """VINSERTI128/VINSERTF128: src1 with one half replaced by a 128-bit operand."""
    check_vector_instruction(ctx)
    insn = ctx.insn
    destination = insn.op_register(0)
    result = bytearray(_operand(ctx, 1, 32))
    half = 16 * (insn.immediate(3) & 1)
    result[half : half + 16] = _operand(ctx, 2, 16)
    write_vector(ctx, destination, bytes(result))


def zero_upper(ctx: Context) -> None:
    """VZEROUPPER: bits above 127 of YMM0-15 (and ZMM0-15) become zero."""
    check_vector_instruction(ctx)
    area = ctx.state.xsave_area()
    for number in range(16):
        clear_above_128(area, ctx.layout, number)


def _check_no_count_register(handler: Handler) -> Handler:
    """Shifts by an XMM count register are not covered, only by an immediate."""

    def checked(ctx: Context) -> None:
        if ctx.insn.op_kind(ctx.insn.op_count - 1) != OpKind.IMMEDIATE8:
            raise NotCovered("vector shift by a register count")
        handler(ctx)

    return checked


def _add(a: int, b: int, bits: int) -> int:
    return a + b


def _sub(a: int, b: int, bits: int) -> int:
    return a - b


def _and(a: int, b: int, bits: int) -> int:
    return a & b


def _and_not(a: int, b: int, bits: int) -> int:
    return ~a & b


def _or(a: int, b: int, bits: int) -> int:
    return a | b


def _xor(a: int, b: int, bits: int) -> int:
    return a ^ b


def _forms(names: list[str], handler: Handler) -> dict[int, Handler]:
    return {getattr(Mnemonic, name): handler for name in names}


HANDLERS: dict[int, Handler] = {
    **_forms(["PADDB", "VPADDB"], _lanewise(1, _add)),
    **_forms(["PADDW", "VPADDW"], _lanewise(2, _add)),
    **_forms(["PADDD", "VPADDD"], _lanewise(4, _add)),
    **_forms(["PADDQ", "VPADDQ"], _lanewise(8, _add)),
    **_forms(["PSUBB", "VPSUBB"], _lanewise(1, _sub)),
    **_forms(["PSUBW", "VPSUBW"], _lanewise(2, _sub)),
    **_forms(["PSUBD", "VPSUBD"], _lanewise(4, _sub)),
    **_forms(["PSUBQ", "VPSUBQ"], _lanewise(8, _sub)),
    **_forms(["PAND", "VPAND", "VPANDD", "VPANDQ"], _lanewise(8, _and)),
    **_forms(["PANDN", "VPANDN", "VPANDND", "VPANDNQ"], _lanewise(8, _and_not)),
    **_forms(["POR", "VPOR", "VPORD", "VPORQ"], _lanewise(8, _or)),
    **_forms(["PXOR", "VPXOR", "VPXORD", "VPXORQ"], _lanewise(8, _xor)),
    **_forms(["PSHUFD", "VPSHUFD"], pshufd),
    **_forms(["PSLLD", "VPSLLD"], _check_no_count_register(_immediate_form(4, _shift_left))),
    **_forms(["PSLLQ", "VPSLLQ"], _check_no_count_register(_immediate_form(8, _shift_left))),
    **_forms(["PSRLD", "VPSRLD"], _check_no_count_register(_immediate_form(4, _shift_right))),
    **_forms(["PSRLQ", "VPSRLQ"], _check_no_count_register(_immediate_form(8, _shift_right))),
    Mnemonic.VPROLD: _immediate_form(4, _rotate_left),
    Mnemonic.VPROLQ: _immediate_form(8, _rotate_left),
    Mnemonic.VPRORD: _immediate_form(4, _rotate_right),
    Mnemonic.VPRORQ: _immediate_form(8, _rotate_right),
    **_forms(["VPERMI2D", "VPERMI2Q"], permute_two_tables),
    **_forms(["VEXTRACTI128", "VEXTRACTF128"], extract_128),
    **_forms(["VINSERTI128", "VINSERTF128"], insert_128),
    Mnemonic.VZEROUPPER: zero_upper,
}
