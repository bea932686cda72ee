"""The x86-64 register file: target.xml parses and agrees with the g packet, values
round-trip through KVM's structures, and the x87 tag word follows SDM Vol. 1 §10.5.1.1."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.gdb import registers
from pyvmm.gdb.registers import NUMBER, REGISTERS, CpuState
from pyvmm.kvm.x86 import kvm_fpu, kvm_regs, kvm_sregs


def state() -> CpuState:
    return CpuState(kvm_regs(), kvm_sregs(), kvm_fpu())


def test_target_xml_lists_every_register_with_its_size_and_number() -> None:
    root = ElementTree.fromstring(registers.target_xml().split("\n", 2)[2])
    assert root.findtext("architecture") == "i386:x86-64"
    features = {f.get("name"): f for f in root.iter("feature")}
    assert set(features) == {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"}
    regs = [(r.get("name"), int(r.get("bitsize", "0")), int(r.get("regnum", "-1"))) for r in root.iter("reg")]
    assert regs == [(r.name, r.bits, n) for n, r in enumerate(REGISTERS)]
    assert [name for name, _, _ in regs[:18]] == [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags",
    ]  # fmt: skip
    assert NUMBER["st0"] == 24 and NUMBER["fop"] == 39 and NUMBER["xmm0"] == 40 and NUMBER["mxcsr"] == 56
    # every type a register names is gdb's own or defined in the document
    defined = {e.get("id") for e in root.iter() if e.tag in ("flags", "vector", "union")}
    builtin = {"int", "int32", "int64", "data_ptr", "code_ptr", "i387_ext"}
    assert {r.get("type") for r in root.iter("reg")} <= defined | builtin
    assert registers.G_PACKET_SIZE == 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8


def test_kvm_values_land_where_gdb_expects_them() -> None:
    cpu = state()
    cpu.regs.rax, cpu.regs.rsp, cpu.regs.r15, cpu.regs.rip = 1, 0x7FF0, 0xF00D, 0x100000
    cpu.regs.rflags = 0x246
    cpu.sregs.cs.selector, cpu.sregs.gs.selector, cpu.sregs.fs.base = 0x10, 0x18, 0xFEED_0000
    cpu.fpu.xmm[3][:] = list(range(16))
    cpu.fpu.mxcsr = 0x1F80
    cpu.fpu.last_ip = 0x1_2345_6789
    data = registers.g_packet(cpu)
    assert len(data) == registers.G_PACKET_SIZE

    def field(name: str) -> int:
        offset = sum(r.size for r in REGISTERS[: NUMBER[name]])
        return int.from_bytes(data[offset : offset + REGISTERS[NUMBER[name]].size], "little")

    assert field("rax") == 1 and field("rsp") == 0x7FF0 and field("r15") == 0xF00D
    assert field("rip") == 0x100000 and field("eflags") == 0x246
    assert field("cs") == 0x10 and field("gs") == 0x18 and field("fs_base") == 0xFEED_0000
    assert field("xmm3") == int.from_bytes(bytes(range(16)), "little") and field("mxcsr") == 0x1F80
    assert field("fioff") == 0x2345_6789 and field("fiseg") == 1


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=len(REGISTERS), max_size=len(REGISTERS)))
@settings(max_examples=100)
def test_g_packet_round_trip_through_kvm_structures(raw: list[int]) -> None:
    values = [v & ((1 << r.bits) - 1) for v, r in zip(raw, REGISTERS, strict=True)]
    values[NUMBER["eflags"]] |= 2  # bit 1 reads as 1
    values[NUMBER["fop"]] &= 0x7FF
    for name in (*registers.SELECTORS, "fctrl", "fstat"):  # 16-bit registers in 32-bit slots
        values[NUMBER[name]] &= 0xFFFF
    values[NUMBER["ftag"]] = 0xFFFF  # all empty: the abridged tag keeps only "empty or not"
    cpu = state()
    cpu.sregs.cr0 = 1  # protected mode: selectors carry no base
    registers.apply_g_packet(cpu, b"".join(registers.encode(n, v) for n, v in enumerate(values)))
    assert registers.read_values(cpu) == values
    # the values live in the structures' bytes, which is what KVM_SET_* copies
    copied = CpuState(
        kvm_regs.from_buffer_copy(bytes(cpu.regs)),
        kvm_sregs.from_buffer_copy(bytes(cpu.sregs)),
        kvm_fpu.from_buffer_copy(bytes(cpu.fpu)),
    )
    assert registers.read_values(copied) == values


def test_x87_tag_word_from_the_abridged_one() -> None:
    cpu = state()
    cpu.fpu.fsw = 6 << 11  # TOP = 6: st0 is physical register 6
    one = (0x3FFF << 64) | (1 << 63)
    cpu.fpu.fpr[0][:10] = list(one.to_bytes(10, "little"))  # st0 = 1.0: valid
    cpu.fpu.fpr[1][:10] = [0] * 10  # st1 = +0: zero
    cpu.fpu.fpr[2][:10] = list(((0x7FFF << 64) | (1 << 63)).to_bytes(10, "little"))  # st2 = inf: special
    cpu.fpu.ftwx = (1 << 6) | (1 << 7) | (1 << 0)  # physical 6, 7, 0 = st0, st1, st2
    tag = registers.read_values(cpu)[NUMBER["ftag"]]
    # physical 7: zero (01), 6: valid (00), 5-1: empty (11), 0: special (10)
    assert tag == 0b01_00_11_11_11_11_11_10
    registers.write_value(cpu, NUMBER["ftag"], 0xFFFF & ~(3 << 4))  # only physical 2 in use
    assert cpu.fpu.ftwx == 1 << 2


def test_writes_reach_the_right_fields() -> None:
    cpu = state()
    registers.write_value(cpu, NUMBER["rip"], 0xFFFF_FFFF_8100_0000)
    registers.write_value(cpu, NUMBER["eflags"], 0x202)
    registers.write_value(cpu, NUMBER["st7"], 0x4000_8000_0000_0000_0000)
    registers.write_value(cpu, NUMBER["gs_base"], 0x1234)
    registers.write_value(cpu, NUMBER["ds"], 0x40)  # real mode (CR0.PE = 0): base = selector * 16
    assert cpu.regs.rip == 0xFFFF_FFFF_8100_0000 and cpu.regs.rflags == 0x202
    assert bytes(cpu.fpu.fpr[7])[:10] == (0x4000_8000_0000_0000_0000).to_bytes(10, "little")
    assert cpu.sregs.gs.base == 0x1234 and cpu.sregs.ds.base == 0x400 and cpu.sregs.ds.selector == 0x40


def test_a_short_or_long_value_is_refused() -> None:
    with pytest.raises(ValueError):
        registers.decode(NUMBER["rax"], b"\0" * 4)
    with pytest.raises(ValueError):
        registers.apply_g_packet(state(), b"\0" * (registers.G_PACKET_SIZE - 1))
