"""XSAVE and XRSTOR outside 64-bit mode with AVX-512 state requested (Intel SDM Vol. 1
§13.13): the Hi16_ZMM component (ZMM16-31) does not exist there, so the instruction
touches none of its bytes, in memory or in the register state, yet completes."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from fakes import FakeVcpu

from pyvmm.arch.x86.emulator import Emulator, XsaveLayout
from pyvmm.arch.x86.emulator.xsave_area import Component
from pyvmm.memory import GuestMemory

# KVM's layout on an AMD Zen 4 host (CPUID 0DH): Hi16_ZMM at 1408 (0x580).
AVX512_LAYOUT = XsaveLayout(
    {
        2: Component(2, 256, 576, False),
        5: Component(5, 64, 832, False),
        6: Component(6, 512, 896, False),
        7: Component(7, 1024, 1408, False),
    }
)
HI16_ZMM_OFFSET, HI16_ZMM_SIZE = 1408, 1024
XCR0_AVX512 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
CODE, AREA = 0x8000, 0x10000


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, 1 << 20)])
    yield guest
    guest.close()


def protected_mode_vcpu() -> FakeVcpu:
    vcpu = FakeVcpu()
    vcpu.protected_mode()
    vcpu.xcrs.xcrs[0].value = XCR0_AVX512
    return vcpu


def run(vcpu: FakeVcpu, memory: GuestMemory, code: str) -> list[str]:
    insn = bytes.fromhex(code)
    memory.write(CODE, insn)
    vcpu.regs.rip, vcpu.regs.rdi, vcpu.regs.rax, vcpu.regs.rdx = CODE, AREA, 0xFF, 0
    return Emulator(vcpu, memory, xsave_layout=AVX512_LAYOUT, maxphyaddr=48).emulate(insn)


def test_32bit_xsave_with_hi16_zmm_requested_leaves_its_bytes(memory: GuestMemory) -> None:
    vcpu = protected_mode_vcpu()
    struct.pack_into("<Q", vcpu.xsave, 512, XCR0_AVX512)  # every component in use
    struct.pack_into(f"{HI16_ZMM_SIZE}s", vcpu.xsave, HI16_ZMM_OFFSET, b"\x11" * HI16_ZMM_SIZE)
    memory.write(AREA + HI16_ZMM_OFFSET, b"\xaa" * HI16_ZMM_SIZE)
    assert run(vcpu, memory, "0f ae 27") == ["xsave"]  # xsave [edi]
    assert not vcpu.events.exception.injected and vcpu.regs.rip == CODE + 3
    assert memory.read(AREA + HI16_ZMM_OFFSET, HI16_ZMM_SIZE) == b"\xaa" * HI16_ZMM_SIZE
    assert memory.read_u64(AREA + 512) == XCR0_AVX512


def test_32bit_xrstor_with_hi16_zmm_in_xstate_bv_leaves_zmm16_31(memory: GuestMemory) -> None:
    vcpu = protected_mode_vcpu()
    struct.pack_into(f"{HI16_ZMM_SIZE}s", vcpu.xsave, HI16_ZMM_OFFSET, b"\x11" * HI16_ZMM_SIZE)
    memory.write_u64(AREA + 512, XCR0_AVX512)
    memory.write(AREA + HI16_ZMM_OFFSET, b"\xaa" * HI16_ZMM_SIZE)
    assert run(vcpu, memory, "0f ae 2f") == ["xrstor"]  # xrstor [edi]
    assert not vcpu.events.exception.injected and vcpu.regs.rip == CODE + 3
    assert bytes(vcpu.xsave)[HI16_ZMM_OFFSET : HI16_ZMM_OFFSET + HI16_ZMM_SIZE] == b"\x11" * HI16_ZMM_SIZE
