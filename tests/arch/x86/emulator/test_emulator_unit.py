"""The emulator on a fake vCPU (no KVM): flags, fault delivery through
KVM_SET_VCPU_EVENTS, the gate checks of software interrupts, what is written back,
32-bit protected mode, MMIO, and emulated atomics racing in threads."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import pytest
from fakes import RW, US, FakeVcpu, P, PageTables

from pyvmm.arch.x86.emulator import Emulator, UnsupportedInstruction, XsaveLayout
from pyvmm.arch.x86.emulator.flags import add, sub
from pyvmm.arch.x86.emulator.xsave_area import Component
from pyvmm.kvm.x86 import KVM_VCPUEVENT_VALID_PAYLOAD
from pyvmm.memory import GuestMemory

CODE, DATA, READ_ONLY, IDT = 0x400000, 0x500000, 0x503000, 0x600000
CF, PF, AF, ZF, SF, TF, OF, RF, AC = 1, 4, 0x10, 0x40, 0x80, 0x100, 0x800, 1 << 16, 1 << 18
STATUS = CF | PF | AF | ZF | SF | OF


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, 16 << 20)])
    yield guest
    guest.close()


def long_mode_vcpu(memory: GuestMemory, *, cpl: int = 3) -> FakeVcpu:
    tables = PageTables(memory, 0x100000)
    tables.map(CODE, CODE, P | US)
    tables.map(CODE + 0x1000, CODE + 0x1000, P | US)
    for page in range(3):
        tables.map(DATA + page * 0x1000, DATA + page * 0x1000)
    tables.map(READ_ONLY, READ_ONLY, P | US)
    tables.map(IDT, IDT, P | RW)
    vcpu = FakeVcpu()
    vcpu.long_mode(tables.root, cpl=cpl)
    vcpu.sregs.idt.base = IDT
    return vcpu


def gate(memory: GuestMemory, vector: int, dpl: int, present: int = 1) -> None:
    low = 0x1000 | (0x08 << 16) | ((0xE | dpl << 5 | present << 7) << 40)
    memory.write(IDT + 16 * vector, struct.pack("<QQ", low, 0))


def emulate(vcpu: FakeVcpu, memory: GuestMemory, code: str, *, at: int = CODE, **regs: int) -> list[str]:
    insn = bytes.fromhex(code.replace(" ", ""))
    memory.write(at, insn)
    vcpu.regs.rip = at
    for name, value in regs.items():
        setattr(vcpu.regs, name, value)
    return Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), maxphyaddr=48).emulate(insn)


def injected(vcpu: FakeVcpu) -> tuple[int, int | None]:
    exception = vcpu.events.exception
    assert exception.injected
    return exception.nr, exception.error_code if exception.has_error_code else None


@pytest.mark.parametrize(("accumulator", "current"), [(5, 5), (5, 7), (0x80, 0x7F), (0, 0xFF), (0xFF, 0)])
def test_cmpxchg_flags_are_those_of_cmp(memory: GuestMemory, accumulator: int, current: int) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write_u8(DATA, current)
    assert emulate(vcpu, memory, "0f b0 0b", rbx=DATA, rax=accumulator, rcx=0x42) == ["cmpxchg"]
    _, status = sub(accumulator, current, 1)
    assert vcpu.regs.rflags & STATUS == status
    assert memory.read_u8(DATA) == (0x42 if accumulator == current else current)
    assert vcpu.regs.rax & 0xFF == current
    assert vcpu.regs.rip == CODE + 3


def test_xadd_sets_add_flags_and_swaps(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write_u32(DATA, 0x7FFF_FFFF)
    emulate(vcpu, memory, "f0 0f c1 03", rbx=DATA, rax=1)
    assert memory.read_u32(DATA) == 0x8000_0000 and vcpu.regs.rax == 0x7FFF_FFFF
    assert vcpu.regs.rflags & STATUS == add(0x7FFF_FFFF, 1, 4)[1] == OF | SF | AF | PF


def test_popcnt_clears_flags_and_sets_zf_for_zero(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    emulate(vcpu, memory, "f3 48 0f b8 c3", rbx=0, rflags=2 | STATUS)
    assert vcpu.regs.rflags & STATUS == ZF and vcpu.regs.rax == 0
    emulate(vcpu, memory, "f3 48 0f b8 c3", rbx=0xF0F0, rflags=2 | STATUS)
    assert vcpu.regs.rflags & STATUS == 0 and vcpu.regs.rax == 8


def test_int3_is_a_trap_delivered_after_rip(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    gate(memory, 3, dpl=3)
    assert emulate(vcpu, memory, "cc") == ["int3"]
    assert injected(vcpu) == (3, None)
    assert vcpu.regs.rip == CODE + 1 and not vcpu.regs.rflags & RF


def test_int_n_checks_the_gate_dpl(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    gate(memory, 0x80, dpl=0)
    emulate(vcpu, memory, "cd 80")
    assert injected(vcpu) == (13, 0x80 * 8 + 2)
    assert vcpu.regs.rip == CODE and vcpu.regs.rflags & RF  # a fault: RIP stays, RF set


def test_int_n_through_an_open_gate_is_a_software_interrupt(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    gate(memory, 0x80, dpl=3)
    emulate(vcpu, memory, "cd 80")
    assert vcpu.events.interrupt.injected and vcpu.events.interrupt.nr == 0x80
    assert not vcpu.events.exception.injected and vcpu.regs.rip == CODE + 2


def test_int_n_to_a_missing_gate_is_np(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    gate(memory, 0x81, dpl=3, present=0)
    emulate(vcpu, memory, "cd 81")
    assert injected(vcpu) == (11, 0x81 * 8 + 2)


def test_page_fault_sets_cr2_and_changes_nothing_else(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    emulate(vcpu, memory, "48 89 18", rax=READ_ONLY + 8, rbx=1)
    assert injected(vcpu) == (14, 7)
    assert vcpu.sregs.cr2 == READ_ONLY + 8
    assert memory.read_u64(READ_ONLY + 8) == 0
    assert (vcpu.regs.rip, vcpu.regs.rax, vcpu.regs.rbx) == (CODE, READ_ONLY + 8, 1)
    assert vcpu.regs.rflags == 2 | RF  # a fault changes only RF


def test_page_fault_with_the_exception_payload_capability(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write(CODE, bytes.fromhex("48 89 18"))
    vcpu.regs.rip, vcpu.regs.rax = CODE, READ_ONLY
    Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), exception_payload=True).emulate(None)
    events = vcpu.events
    assert events.exception.pending and not events.exception.injected
    assert events.flags & KVM_VCPUEVENT_VALID_PAYLOAD and events.exception_payload == READ_ONLY
    assert vcpu.sregs.cr2 == 0


def test_fetch_across_into_a_missing_page_faults_there(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write(CODE + 0x1FFE, bytes.fromhex("48 89"))  # the rest would be on CODE + 0x2000
    vcpu.regs.rip = CODE + 0x1FFE
    Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical()).emulate(None)
    assert injected(vcpu) == (14, 0x14)  # not present, user, instruction fetch
    assert vcpu.sregs.cr2 == CODE + 0x2000


def test_undefined_opcodes_raise_ud(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    emulate(vcpu, memory, "0f 0b")
    assert injected(vcpu) == (6, None)
    vcpu.events = type(vcpu.events)()
    emulate(vcpu, memory, "0f 04")  # not an instruction at all
    assert injected(vcpu) == (6, None)


def test_clac_stac_at_cpl0_and_cpl3(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory, cpl=0)
    emulate(vcpu, memory, "0f 01 cb")
    assert vcpu.regs.rflags & AC
    emulate(vcpu, memory, "0f 01 ca")
    assert not vcpu.regs.rflags & AC
    user = long_mode_vcpu(memory, cpl=3)
    emulate(user, memory, "0f 01 cb")
    assert injected(user) == (6, None)


def test_uncovered_instructions_are_reported_not_skipped(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory, cpl=0)
    with pytest.raises(UnsupportedInstruction) as caught:
        emulate(vcpu, memory, "0f a2")
    message = str(caught.value)
    assert (
        "cpuid" in message and "0f a2" in message and f"RIP {CODE:#x}" in message and "64-bit mode" in message
    )
    assert vcpu.sets == {}


def test_privileged_instruction_at_cpl3_is_gp(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory, cpl=3)
    emulate(vcpu, memory, "0f 30")  # wrmsr
    assert injected(vcpu) == (13, 0)
    with pytest.raises(UnsupportedInstruction):
        emulate(long_mode_vcpu(memory, cpl=0), memory, "0f 30")


def test_only_changed_state_is_written_back(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    emulate(vcpu, memory, "87 d8", rax=1, rbx=2)
    assert vcpu.sets == {"regs": 1}
    assert (vcpu.regs.rax, vcpu.regs.rbx) == (2, 1)


def test_single_step_raises_db_after_the_instruction(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    emulate(vcpu, memory, "87 d8", rflags=2 | TF)
    assert injected(vcpu) == (1, None)
    assert vcpu.debugregs.dr6 & (1 << 14) and vcpu.regs.rip == CODE + 2


def test_32bit_protected_mode_segments(memory: GuestMemory) -> None:
    vcpu = FakeVcpu()
    vcpu.protected_mode(cpl=0)
    vcpu.sregs.es.base, vcpu.sregs.es.limit = 0x10000, 0xFFF
    emulate(vcpu, memory, "26 89 18", at=0x8000, rax=0x10, rbx=0xAABBCCDD)  # mov es:[eax], ebx
    assert memory.read_u32(0x10010) == 0xAABBCCDD and vcpu.regs.rip == 0x8003
    emulate(vcpu, memory, "26 89 18", at=0x8000, rax=0xFFE)  # crosses the limit
    assert injected(vcpu) == (13, 0)


def test_vm86_mode_is_not_covered(memory: GuestMemory) -> None:
    vcpu = FakeVcpu()
    vcpu.protected_mode()
    with pytest.raises(UnsupportedInstruction, match="virtual-8086"):
        emulate(vcpu, memory, "90", at=0x8000, rflags=2 | (1 << 17))


def test_mmio_outside_ram(memory: GuestMemory) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.accesses: list[tuple[str, int, int, int]] = []

        def read(self, address: int, size: int) -> int:
            self.accesses.append(("read", address, size, 0))
            return 0x1122334455667788 & ((1 << (8 * size)) - 1)

        def write(self, address: int, size: int, value: int) -> None:
            self.accesses.append(("write", address, size, value))

    vcpu = FakeVcpu()
    vcpu.protected_mode()
    device = Recorder()
    memory.write(0x8000, bytes.fromhex("89 18 8b 08"))
    vcpu.regs.rip, vcpu.regs.rax, vcpu.regs.rbx = 0x8000, 0xFEC0_0000, 0xCAFE
    emulator = Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), mmio=device)
    emulator.emulate(None)
    emulator.emulate(None)
    assert device.accesses == [("write", 0xFEC0_0000, 4, 0xCAFE), ("read", 0xFEC0_0000, 4, 0)]
    assert vcpu.regs.rcx == 0x55667788


def test_emulated_atomics_do_not_interleave(memory: GuestMemory) -> None:
    memory.write(CODE, bytes.fromhex("f0 0f c1 03"))

    def worker(vcpu: FakeVcpu) -> None:
        emulator = Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical())
        for _ in range(200):
            vcpu.regs.rip, vcpu.regs.rax, vcpu.regs.rbx = CODE, 1, DATA + 0x100
            emulator.emulate(bytes.fromhex("f0 0f c1 03"))

    # The vCPUs (and so the page tables, which each one rebuilds in the shared memory)
    # are made before any thread runs: a table zeroed under a running walk is a #PF,
    # not an increment.
    vcpus = [long_mode_vcpu(memory) for _ in range(4)]
    threads = [threading.Thread(target=worker, args=(vcpu,)) for vcpu in vcpus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert memory.read_u32(DATA + 0x100) == 800


def test_xsave_keeps_xstate_bv_bits_outside_rfbm(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write_u64(DATA + 512, 0x4)  # a stale AVX bit
    struct.pack_into("<Q", vcpu.xsave, 512, 0x2)  # SSE in use
    emulate(vcpu, memory, "0f ae 27", rdi=DATA, rax=3, rdx=0)  # x87 + SSE only
    assert memory.read_u64(DATA + 512) == 0x4 | 0x2


def test_xrstor_rejects_components_outside_xcr0(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write_u64(DATA + 512, 0x8)  # state component 3 is not in XCR0 (7)
    emulate(vcpu, memory, "48 0f ae 2f", rdi=DATA, rax=7, rdx=0)
    assert injected(vcpu) == (13, 0)


def test_compacted_offsets_follow_cpuid_alignment() -> None:
    layout = XsaveLayout({2: Component(2, 256, 576, False), 5: Component(5, 64, 832, True),
                          9: Component(9, 8, 2688, False)})  # fmt: skip
    assert layout.compacted_offsets(0b10_0010_0100) == {2: 576, 5: 832, 9: 896}
    assert layout.compacted_offsets(0b10_0010_0000) == {5: 576, 9: 640}
    assert layout.standard_size(0b111) == 832


PADDD_TWICE = "66 0f fe c1 66 0f fe c1"  # paddd xmm0,xmm1 (twice)


def test_run_ahead_writes_the_state_back_once(memory: GuestMemory) -> None:
    vcpu = long_mode_vcpu(memory)
    memory.write(CODE, bytes.fromhex(PADDD_TWICE))
    vcpu.regs.rip = CODE
    emulator = Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), run_ahead=8)
    assert emulator.emulate(None) == ["paddd", "paddd"]
    assert vcpu.regs.rip == CODE + 8
    assert vcpu.sets == {"regs": 1, "xsave": 1}


def test_no_run_ahead_while_dr7_enables_a_breakpoint(memory: GuestMemory) -> None:
    """An instruction breakpoint on the second instruction must still fire: only the
    instruction KVM failed on is emulated."""
    vcpu = long_mode_vcpu(memory)
    memory.write(CODE, bytes.fromhex(PADDD_TWICE))
    vcpu.regs.rip = CODE
    vcpu.debugregs.db[0] = CODE + 4
    vcpu.debugregs.dr7 = 0x2  # G0
    emulator = Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), run_ahead=8)
    assert emulator.emulate(None) == ["paddd"]
    assert vcpu.regs.rip == CODE + 4
