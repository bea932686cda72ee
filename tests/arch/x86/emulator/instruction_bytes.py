"""Hypothesis strategies for instruction bytes aimed at the emulator's handlers.

Random bytes mostly decode to instructions the emulator has no handler for, so the
handlers would hardly be reached. Instead one iced `Code` of a handled mnemonic is
picked and its encoding is built the way the opcode tables describe it (Intel SDM
Vol. 2A §2.1 legacy/REX, §2.3.5 VEX, §2.7.1 EVEX) with every free bit random: prefixes,
REX/VEX/EVEX register-extension bits, ModRM, SIB, displacement and immediate. What
comes out need not decode to that instruction (another mode, a wrong group bit): it
is still valid input for the emulator.
"""

from __future__ import annotations

import functools

from hypothesis import strategies as st
from iced_x86 import Code, EncodingKind, MandatoryPrefix, OpCodeInfo, OpCodeTableKind

from pyvmm.arch.x86.emulator import HANDLERS

_PREFIX_BYTE = {MandatoryPrefix.P66: 0x66, MandatoryPrefix.PF3: 0xF3, MandatoryPrefix.PF2: 0xF2}
_PP = {MandatoryPrefix.P66: 1, MandatoryPrefix.PF3: 2, MandatoryPrefix.PF2: 3}  # VEX/EVEX.pp
_ESCAPE = {OpCodeTableKind.NORMAL: b"", OpCodeTableKind.T0F: b"\x0f",
           OpCodeTableKind.T0F38: b"\x0f\x38", OpCodeTableKind.T0F3A: b"\x0f\x3a"}  # fmt: skip
_MAP = {OpCodeTableKind.T0F: 1, OpCodeTableKind.T0F38: 2, OpCodeTableKind.T0F3A: 3}  # VEX.mmmmm
# Legacy prefixes a guest may put in front: operand and address size, LOCK, REP,
# segment overrides (SDM Vol. 2A §2.1.1).
_LEGACY_PREFIXES = [0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]
_VEX_PREFIXES = [0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]
# VEX/EVEX.vvvv (inverted) must be 1111 where the instruction has no such operand.
_VVVV = st.one_of(st.just(15), st.integers(0, 15))


@functools.cache
def handled_codes() -> tuple[OpCodeInfo, ...]:
    """The opcode-table rows of every mnemonic with a handler (legacy, VEX, EVEX)."""
    rows = []
    for name in dir(Code):
        value = getattr(Code, name)
        if name.startswith("_") or not isinstance(value, int):
            continue
        info = OpCodeInfo(value)
        if info.mnemonic in HANDLERS and info.encoding in (
            EncodingKind.LEGACY,
            EncodingKind.VEX,
            EncodingKind.EVEX,
        ):
            rows.append(info)
    return tuple(sorted(rows, key=lambda info: info.code))


def _modrm(draw: st.DrawFn, info: OpCodeInfo) -> int:
    modrm = draw(st.integers(0, 255))
    if info.is_group:
        modrm = (modrm & ~0x38) | info.group_index << 3
    if info.is_rm_group:
        modrm = 0xC0 | (modrm & 0x38) | info.rm_group_index
    return modrm


@st.composite
def handled_instruction(draw: st.DrawFn, bitness: int) -> bytes:
    """Bytes of one instruction from a handled opcode-table row, free bits random, for
    code of `bitness` (REX exists, and VEX/EVEX may clear R and X, in 64-bit mode only:
    elsewhere 40-4F are INC/DEC and C4/62 with ModRM.mod < 3 are LES/BOUND)."""
    long_mode = bitness == 64
    info = draw(st.sampled_from(handled_codes()))
    opcode = info.op_code.to_bytes(info.op_code_len, "big")
    w = draw(st.integers(0, 1)) if info.is_wig else info.w
    # 66, F2, F3 and LOCK before VEX/EVEX make it #UD (SDM Vol. 2A §2.3.2).
    allowed = _LEGACY_PREFIXES if info.encoding == EncodingKind.LEGACY else _VEX_PREFIXES
    out = bytearray(draw(st.one_of(st.just([]), st.lists(st.sampled_from(allowed), max_size=2))))
    if info.encoding == EncodingKind.LEGACY:
        if info.mandatory_prefix in _PREFIX_BYTE:
            out.append(_PREFIX_BYTE[info.mandatory_prefix])
        if long_mode and draw(st.booleans()):
            out.append(0x40 | w << 3 | draw(st.integers(0, 7)))  # REX
        out += _ESCAPE.get(info.table, b"") + opcode
    elif info.encoding == EncodingKind.VEX:
        rxb = draw(st.integers(0, 7)) if long_mode else 7  # inverted
        vvvv = draw(_VVVV)
        out += bytes([0xC4, rxb << 5 | _MAP.get(info.table, 1),
                      w << 7 | vvvv << 3 | info.l << 2 | _PP.get(info.mandatory_prefix, 0)])  # fmt: skip
        out += opcode
    else:  # EVEX: P0 = R X B R' 0 m m m, P1 = W vvvv 1 pp, P2 = z L'L b V' aaa
        rxbr = draw(st.integers(0, 15)) if long_mode else 15  # inverted
        p2 = draw(st.integers(0, 255)) & ~0x60 | (info.l & 3) << 5
        if not long_mode:
            p2 |= 0x08  # V' (inverted): only 8 vector registers there
        p1 = w << 7 | draw(_VVVV) << 3 | 0x04 | _PP.get(info.mandatory_prefix, 0)
        out += bytes([0x62, rxbr << 4 | _MAP.get(info.table, 1), p1, p2]) + opcode
    if info.op_code_len == 1:  # a longer opcode already ends in its fixed ModRM (0F 01 CA)
        out.append(_modrm(draw, info))
    out += draw(st.binary(min_size=0, max_size=10))  # SIB, displacement, immediate
    return bytes(out)


def instruction_bytes(bitness: int) -> st.SearchStrategy[bytes]:
    """Mostly handled instructions, sometimes anything at all (up to 16 bytes)."""
    handled = handled_instruction(bitness)
    return st.one_of(handled, handled, handled, st.binary(min_size=0, max_size=16))
