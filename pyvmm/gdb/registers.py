"""The x86-64 register file as gdb numbers it, its target description, and the
conversion to and from KVM's structures.

gdb manual, "Target Descriptions" §G.5 "Standard Target Features", i386: the
`org.gnu.gdb.i386.core` feature (rax..r15, rip, eflags, the six selectors, st0-st7 as
80-bit values, the eight x87 control registers), `org.gnu.gdb.i386.sse` (xmm0-xmm15,
mxcsr) and `org.gnu.gdb.i386.segments` (fs_base, gs_base). Registers are numbered in
the order the description lists them, and the `g` packet carries them in that order,
each in target (little-endian) byte order.

The x87 state comes from `kvm_fpu`, which is the FXSAVE layout (Intel SDM Vol. 1
§10.5.1): st registers in stack order, an abridged tag word (one bit per physical
register), and 64-bit instruction and operand pointers, which gdb shows split into
offset (low 32 bits) and "segment" (high 32 bits), as for FXSAVE64.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from pyvmm.arch.x86.registers import Cr0
from pyvmm.kvm.x86 import kvm_fpu, kvm_regs, kvm_sregs


class Feature(enum.StrEnum):
    CORE = "org.gnu.gdb.i386.core"
    SSE = "org.gnu.gdb.i386.sse"
    SEGMENTS = "org.gnu.gdb.i386.segments"


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: Feature
    group: str = ""

    @property
    def size(self) -> int:
        return self.bits // 8


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


def _core() -> list[Register]:
    out = [Register(name, 64, "int64", Feature.CORE) for name in _GPRS]
    out[6] = Register("rbp", 64, "data_ptr", Feature.CORE)
    out[7] = Register("rsp", 64, "data_ptr", Feature.CORE)
    out.append(Register("rip", 64, "code_ptr", Feature.CORE))
    out.append(Register("eflags", 32, "x86_eflags", Feature.CORE))
    out += [Register(name, 32, "int32", Feature.CORE) for name in SELECTORS]
    out += [Register(f"st{i}", 80, "i387_ext", Feature.CORE) for i in range(8)]
    out += [Register(name, 32, "int", Feature.CORE, "float") for name in _X87_CONTROL]
    return out


REGISTERS: tuple[Register, ...] = (
    *_core(),
    *(Register(f"xmm{i}", 128, "vec128", Feature.SSE) for i in range(16)),
    Register("mxcsr", 32, "x86_mxcsr", Feature.SSE, "vector"),
    Register("fs_base", 64, "int", Feature.SEGMENTS),
    Register("gs_base", 64, "int", Feature.SEGMENTS),
)
NUMBER = {register.name: index for index, register in enumerate(REGISTERS)}
RIP = NUMBER["rip"]
G_PACKET_SIZE = sum(register.size for register in REGISTERS)

# Named bits gdb shows for EFLAGS and MXCSR (SDM Vol. 1 §3.4.3, §10.2.3).
_EFLAGS_BITS = ("CF", "", "PF", "", "AF", "", "ZF", "SF", "TF", "IF", "DF", "OF",
                "", "", "NT", "", "RF", "VM", "AC", "VIF", "VIP", "ID")  # fmt: skip
_MXCSR_BITS = ("IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM", "", "", "FZ")


def _flags_type(type_id: str, size: int, names: tuple[str, ...]) -> list[str]:
    lines = [f'  <flags id="{type_id}" size="{size}">']
    lines += [
        f'    <field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in enumerate(names) if name
    ]
    return [*lines, "  </flags>"]


def _vec128_types() -> list[str]:
    """xmm registers as a union of vectors, with the field names gdb users type
    (`p $xmm0.v4_int32`)."""
    vectors = (("v4_float", "v4f", "ieee_single", 4), ("v2_double", "v2d", "ieee_double", 2),
               ("v16_int8", "v16i8", "int8", 16), ("v8_int16", "v8i16", "int16", 8),
               ("v4_int32", "v4i32", "int32", 4), ("v2_int64", "v2i64", "int64", 2))  # fmt: skip
    lines = [f'  <vector id="{vid}" type="{element}" count="{count}"/>' for _, vid, element, count in vectors]
    lines.append('  <union id="vec128">')
    lines += [f'    <field name="{name}" type="{vid}"/>' for name, vid, _element, _count in vectors]
    lines.append('    <field name="uint128" type="uint128"/>')
    return [*lines, "  </union>"]


def target_xml() -> str:
    """The target description gdb reads with qXfer:features:read:target.xml."""
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>"]
    lines += ["<architecture>i386:x86-64</architecture>"]
    types = {
        Feature.CORE: _flags_type("x86_eflags", 4, _EFLAGS_BITS),
        Feature.SSE: _vec128_types() + _flags_type("x86_mxcsr", 4, _MXCSR_BITS),
        Feature.SEGMENTS: [],
    }
    for feature in Feature:
        lines.append(f"<feature name={quoteattr(feature.value)}>")
        lines += types[feature]
        for number, register in enumerate(REGISTERS):
            if register.feature is feature:
                group = f' group="{register.group}"' if register.group else ""
                lines.append(
                    f'  <reg name="{register.name}" bitsize="{register.bits}" type="{register.type}"'
                    f' regnum="{number}"{group}/>'
                )
        lines.append("</feature>")
    lines.append("</target>")
    return "\n".join(lines) + "\n"


# --- values --------------------------------------------------------------------------

_TAG_VALID, _TAG_ZERO, _TAG_SPECIAL, _TAG_EMPTY = 0, 1, 2, 3


def _x87_tag(value: int) -> int:
    """The full tag of a non-empty 80-bit register (SDM Vol. 1 §8.1.7)."""
    exponent = (value >> 64) & 0x7FFF
    fraction = value & ((1 << 64) - 1)
    if exponent == 0x7FFF:
        return _TAG_SPECIAL
    if exponent == 0:
        return _TAG_ZERO if fraction == 0 else _TAG_SPECIAL
    return _TAG_VALID if fraction >> 63 else _TAG_SPECIAL


def full_tag_word(fpu: kvm_fpu) -> int:
    """The 16-bit x87 tag word from FXSAVE's abridged one (§10.5.1.1): tag i belongs to
    physical register i, which is st((i - TOP) mod 8)."""
    top = (fpu.fsw >> 11) & 7
    word = 0
    for physical in range(8):
        if fpu.ftwx >> physical & 1:
            value = int.from_bytes(bytes(fpu.fpr[(physical - top) % 8])[:10], "little")
            tag = _x87_tag(value)
        else:
            tag = _TAG_EMPTY
        word |= tag << (2 * physical)
    return word


def abridged_tag(word: int) -> int:
    return sum(1 << physical for physical in range(8) if (word >> (2 * physical)) & 3 != _TAG_EMPTY)


@dataclass(frozen=True)
class CpuState:
    """What gdb's registers are made of: copies of the vCPU's KVM structures."""

    regs: kvm_regs
    sregs: kvm_sregs
    fpu: kvm_fpu


def read_values(state: CpuState) -> list[int]:
    """Every register's value, in gdb's numbering."""
    regs, sregs, fpu = state.regs, state.sregs, state.fpu
    values = [getattr(regs, name) for name in _GPRS]
    values += [regs.rip, regs.rflags & 0xFFFF_FFFF]
    values += [getattr(sregs, name).selector for name in SELECTORS]
    values += [int.from_bytes(bytes(fpu.fpr[i])[:10], "little") for i in range(8)]
    values += [
        fpu.fcw,
        fpu.fsw,
        full_tag_word(fpu),
        fpu.last_ip >> 32,
        fpu.last_ip & 0xFFFF_FFFF,
        fpu.last_dp >> 32,
        fpu.last_dp & 0xFFFF_FFFF,
        fpu.last_opcode & 0x7FF,
    ]
    values += [int.from_bytes(bytes(fpu.xmm[i]), "little") for i in range(16)]
    values += [fpu.mxcsr, sregs.fs.base, sregs.gs.base]
    return values


def write_value(state: CpuState, number: int, value: int) -> None:
    """Set register `number` in the structures of `state` (to be written back)."""
    register = REGISTERS[number]
    value &= (1 << register.bits) - 1
    regs, sregs, fpu = state.regs, state.sregs, state.fpu
    name = register.name
    if name in _GPRS or name == "rip":
        setattr(regs, name, value)
    elif name == "eflags":
        regs.rflags = (regs.rflags & ~0xFFFF_FFFF) | value | 2  # bit 1 always reads as 1
    elif name in SELECTORS:
        segment = getattr(sregs, name)
        segment.selector = value & 0xFFFF
        if not sregs.cr0 & Cr0.PE:
            segment.base = (value & 0xFFFF) << 4  # real mode: the base follows the selector
    elif name.startswith("st"):
        fpu.fpr[int(name[2:])][:10] = list(value.to_bytes(10, "little"))
    elif name.startswith("xmm"):
        fpu.xmm[int(name[3:])][:] = list(value.to_bytes(16, "little"))
    else:
        _write_control(state, name, value)


def _write_control(state: CpuState, name: str, value: int) -> None:
    fpu, sregs = state.fpu, state.sregs
    if name == "fctrl":
        fpu.fcw = value & 0xFFFF
    elif name == "fstat":
        fpu.fsw = value & 0xFFFF
    elif name == "ftag":
        fpu.ftwx = abridged_tag(value)
    elif name in ("fiseg", "fioff"):
        high = name == "fiseg"
        fpu.last_ip = _replace_half(fpu.last_ip, value, high)
    elif name in ("foseg", "fooff"):
        fpu.last_dp = _replace_half(fpu.last_dp, value, name == "foseg")
    elif name == "fop":
        fpu.last_opcode = value & 0x7FF
    elif name == "mxcsr":
        fpu.mxcsr = value
    elif name == "fs_base":
        sregs.fs.base = value
    elif name == "gs_base":
        sregs.gs.base = value
    else:
        raise AssertionError(f"register {name} has no writer")


def _replace_half(current: int, value: int, high: bool) -> int:
    if high:
        return (current & 0xFFFF_FFFF) | (value & 0xFFFF_FFFF) << 32
    return (current & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF)


def encode(number: int, value: int) -> bytes:
    return value.to_bytes(REGISTERS[number].size, "little")


def decode(number: int, data: bytes) -> int:
    if len(data) != REGISTERS[number].size:
        raise ValueError(f"{REGISTERS[number].name} takes {REGISTERS[number].size} bytes, not {len(data)}")
    return int.from_bytes(data, "little")


def g_packet(state: CpuState) -> bytes:
    """The raw bytes of a `g` reply (before hex encoding)."""
    return b"".join(encode(number, value) for number, value in enumerate(read_values(state)))


def apply_g_packet(state: CpuState, data: bytes) -> None:
    """Write every register from the raw bytes of a `G` packet, which must be whole."""
    if len(data) != G_PACKET_SIZE:
        raise ValueError(f"a G packet carries {G_PACKET_SIZE} bytes, not {len(data)}")
    offset = 0
    current = read_values(state)
    for number, register in enumerate(REGISTERS):
        value = decode(number, data[offset : offset + register.size])
        offset += register.size
        if value != current[number]:  # untouched selectors keep their hidden parts
            write_value(state, number, value)


__all__ = [
    "G_PACKET_SIZE",
    "NUMBER",
    "REGISTERS",
    "RIP",
    "CpuState",
    "Feature",
    "Register",
    "apply_g_packet",
    "decode",
    "encode",
    "g_packet",
    "read_values",
    "target_xml",
    "write_value",
]
