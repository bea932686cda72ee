"""The emulator never raises on guest state: for arbitrary instruction bytes, in each
CPU mode, over arbitrary register, control-register, segment, XSAVE and memory state
(page tables included), the only outcomes are

- emulated: `emulate` returns (and, when the instruction faulted, `last_fault` is the
  exception it left in KVM_SET_VCPU_EVENTS),
- not emulated: an `EmulatorError` (`UnsupportedInstruction` for an instruction, mode
  or operand not covered; a page-table entry outside RAM), which stops the VM with
  a report.

Anything else (a KeyError, an IndexError, an OverflowError from a ctypes field...) is
an emulator bug that would stop the VM with a traceback.

Examples per mode: PYVMM_FUZZ_EXAMPLES (default 60, for a fast suite); raise it for
a real hunt, e.g. `PYVMM_FUZZ_EXAMPLES=5000 pytest tests/arch/x86/emulator -k fuzz`.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

import pytest
from fakes import XSAVE_SIZE, FakeVcpu, P, PageTables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instruction_bytes import instruction_bytes

from pyvmm.arch.x86.emulator import Emulator, EmulatorError, UnsupportedInstruction, XsaveLayout
from pyvmm.arch.x86.emulator.xsave_area import Component
from pyvmm.kvm import x86
from pyvmm.memory import GuestMemory

EXAMPLES = int(os.environ.get("PYVMM_FUZZ_EXAMPLES", "60"))
RAM_SIZE = 4 << 20
CODE = 0x1000  # code page (linear = physical where paging maps it)
IDT, STACK = 0x3000, 0x5000  # a #PF gate and frame for the lost-syscall check
IA32_STAR, IA32_LSTAR, IA32_FMASK, IA32_XSS = 0xC000_0081, 0xC000_0082, 0xC000_0084, 0xDA0
TABLES = 0x200000  # page-table pool
MODES = ["real", "protected16", "protected32", "paging32", "pae", "compat32", "long64", "la57"]

# Addresses where accesses get interesting: page and segment edges, the end of RAM,
# the MMIO hole, the canonical boundary, the top of the address space.
_EDGES = [0, CODE, 0xFFF, 0x1000 - 3, RAM_SIZE - 8, RAM_SIZE, 0xFEC0_0000, 0xFFFF_FFF0,
          0x1_0000_0000, 0x7FFF_FFFF_FFF8, 0xFFFF_8000_0000_0000, (1 << 64) - 8]  # fmt: skip
# The XSAVE layouts KVM reports: x87/SSE only, AVX, Intel and AMD AVX-512 offsets.
LAYOUTS = [
    XsaveLayout({}),
    XsaveLayout.typical(),
    XsaveLayout(
        {
            2: Component(2, 256, 576, False),
            5: Component(5, 64, 1088, False),
            6: Component(6, 512, 1152, False),
            7: Component(7, 1024, 1664, False),
        }
    ),
    XsaveLayout(
        {
            2: Component(2, 256, 576, False),
            5: Component(5, 64, 832, False),
            6: Component(6, 512, 896, False),
            7: Component(7, 1024, 1408, False),
        }
    ),
]
XCR0S = [1, 3, 7, 0xE7, 0x3 | 0xE0]


@pytest.fixture(scope="module")
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, RAM_SIZE)])
    yield guest
    guest.close()


class MsrVcpu(FakeVcpu):
    """A fake vCPU with MSRs (IA32_XSS for XSAVES, the SYSCALL MSRs)."""

    def __init__(self, msrs: dict[int, int]) -> None:
        super().__init__()
        self.msrs = msrs

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        return {index: self.msrs[index] for index in indices if index in self.msrs}


def lost_syscall_frame(vcpu: MsrVcpu, memory: GuestMemory, rng: random.Random) -> None:
    """The state `lost_syscall.repair` looks for, more or less: the vCPU at the #PF
    handler of its IDT, a frame on the stack whose RIP is LSTAR (or nearly)."""
    lstar = rng.choice([CODE + 0x800, rng.getrandbits(64)])
    vcpu.msrs.update({IA32_STAR: rng.getrandbits(64), IA32_LSTAR: lstar, IA32_FMASK: rng.getrandbits(64)})
    vcpu.sregs.idt.base, vcpu.sregs.idt.limit = IDT, 0xFFF
    handler = CODE
    gate = struct.pack("<HHHHIxxxx", handler & 0xFFFF, 0x10, 0x8E00, handler >> 16 & 0xFFFF, handler >> 32)
    memory.write(IDT + 14 * 16, gate)
    vcpu.regs.rsp = rng.choice([STACK, STACK + 4096 - 16, rng.getrandbits(64)])
    if vcpu.regs.rsp == STACK:
        error = rng.choice([0x14, 0x15, rng.getrandbits(64)])
        rip = rng.choice([lstar, rng.getrandbits(64)])
        cs = rng.choice([0x33, rng.getrandbits(64)])
        frame = (error, rip, cs, rng.getrandbits(64), rng.getrandbits(64), 0x2B)
        memory.write(STACK, struct.pack("<6Q", *frame))


class Mmio:
    """Answers accesses outside RAM as the MMIO bus does for an unclaimed address."""

    def read(self, address: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, address: int, size: int, value: int) -> None:
        assert 0 <= value < 1 << (8 * size)


def _segment(
    rng: random.Random, *, code: bool, flat: bool, dpl: int, db: int, long: int = 0
) -> x86.kvm_segment:
    if flat:
        kind = 0xB if code else 0x3
        return x86.kvm_segment(limit=0xFFFF_FFFF, selector=0x10 | dpl, type=kind, present=1, dpl=dpl,
                               db=db, s=1, l=long, g=1)  # fmt: skip
    return x86.kvm_segment(
        base=rng.choice([0, rng.getrandbits(32)]),
        limit=rng.choice([0xFFFF, 0xFFFF_FFFF, rng.getrandbits(32)]),
        selector=rng.getrandbits(16),
        type=rng.getrandbits(4) | (0x8 if code else 0),
        present=rng.random() < 0.9,
        dpl=dpl,
        db=db,
        s=1,
        l=long,
        g=rng.getrandbits(1),
        unusable=rng.random() < 0.05,
    )


def _page_tables(memory: GuestMemory, rng: random.Random, mode: str) -> int:
    """Tables mapping the code page and a few random pages, some entries then
    replaced by random values (reserved bits, tables outside RAM, ...)."""
    if mode in ("paging32", "pae"):
        # A 32-bit or PAE root of random entries, with the code page identity-mapped
        # through a 4 MiB (32-bit PSE) or random hierarchy: the walker must cope.
        root = TABLES
        for slot in range(0, 4096, 4 if mode == "paging32" else 8):
            if rng.random() < 0.3:
                width = 4 if mode == "paging32" else 8
                memory.write(root + slot, rng.getrandbits(8 * width).to_bytes(width, "little"))
        if mode == "paging32":
            memory.write_u32(root, 0x87)  # 4 MiB page at 0, P RW US PS
        return root
    tables = PageTables(memory, TABLES, levels=5 if mode == "la57" else 4)
    tables.map(CODE, CODE)
    tables.map(IDT, IDT)
    tables.map(STACK, STACK)
    for _ in range(rng.randrange(8)):
        linear = rng.choice([*_EDGES, rng.getrandbits(48)]) & 0x0000_FFFF_FFFF_F000
        tables.map(
            linear, rng.choice([0, rng.getrandbits(40) & ~0xFFF, RAM_SIZE - 4096]), rng.getrandbits(3) | P
        )
    for _ in range(rng.randrange(4)):
        table = TABLES + 4096 * rng.randrange((tables.next - TABLES) // 4096)
        memory.write_u64(table + 8 * rng.randrange(512), rng.getrandbits(64))
    return tables.root


def machine_state(vcpu: MsrVcpu, memory: GuestMemory, rng: random.Random, mode: str) -> None:
    """Registers, segments, control registers, XCR0, the XSAVE area and memory."""
    regs = vcpu.regs
    for name in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15"):  # fmt: skip
        setattr(regs, name, rng.choice([0, rng.getrandbits(64), rng.getrandbits(32), rng.choice(_EDGES)]))
    # Rare: VM (virtual-8086 mode is not covered) and TF (every instruction a #DB).
    regs.rflags = rng.getrandbits(22) & ~((1 << 17) | (1 << 8)) | 2
    if rng.random() < 0.05:
        regs.rflags |= rng.choice([1 << 17, 1 << 8])
    regs.rip = CODE
    sregs = vcpu.sregs
    cpl = 0 if mode == "real" else rng.choice([0, 3])
    flat = rng.random() < 0.7
    long = mode in ("long64", "la57")
    db = 0 if mode in ("real", "protected16") else 1
    sregs.cs = _segment(rng, code=True, flat=flat, dpl=cpl, db=0 if long else db, long=int(long))
    sregs.cs.base, sregs.cs.limit = 0, 0xFFFF_FFFF  # the code stays where it was written
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _segment(rng, code=False, flat=flat, dpl=cpl, db=db))
    if mode == "real":
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            getattr(sregs, name).limit = 0xFFFF if rng.random() < 0.8 else 0xFFFF_FFFF
    sregs.fs.base = rng.choice([sregs.fs.base, rng.getrandbits(64)])
    sregs.gs.base = rng.choice([sregs.gs.base, rng.getrandbits(64)])
    optional_cr0 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 16) | (1 << 18)
    optional_cr4 = (1 << 4) | (1 << 9) | (1 << 10) | (1 << 18) | (1 << 20) | (1 << 21)
    sregs.cr0 = (rng.getrandbits(32) & optional_cr0) | 0x10 | (0 if mode == "real" else 1)
    sregs.cr4 = rng.getrandbits(32) & optional_cr4
    if rng.random() < 0.05:
        sregs.cr4 |= 1 << 22  # PKE: the page walker refuses it, rarely worth a draw
    if rng.random() < 0.7:
        sregs.cr4 |= (1 << 9) | (1 << 18)  # OSFXSR, OSXSAVE: let SSE/AVX/XSAVE run
        sregs.cr0 &= ~((1 << 2) | (1 << 3))
    sregs.efer = rng.choice([0, 1 << 11])
    if mode not in ("real", "protected16", "protected32"):
        sregs.cr0 |= 1 << 31
        sregs.cr3 = _page_tables(memory, rng, mode)
        if mode != "paging32":
            sregs.cr4 |= 1 << 5
        else:
            sregs.cr4 = sregs.cr4 & ~(1 << 5) | 1 << 4
    if mode in ("compat32", "long64", "la57"):
        sregs.efer |= 0x500
        sregs.cs.l = int(mode != "compat32")
        sregs.cs.db = int(mode == "compat32")
        if mode == "la57":
            sregs.cr4 |= 1 << 12
    sregs.idt.base = rng.choice([0, rng.getrandbits(64), RAM_SIZE - 8])
    sregs.idt.limit = rng.choice([0, 0x3FF, 0xFFF, 0xFFFF])
    vcpu.xcrs.xcrs[0].value = rng.choice(XCR0S)
    area = bytes(rng.getrandbits(8) for _ in range(1024)) * (XSAVE_SIZE // 1024)
    struct.pack_into(f"{XSAVE_SIZE}s", vcpu.xsave, 0, area)
    struct.pack_into("<Q", vcpu.xsave, 512, rng.getrandbits(64) & vcpu.xcrs.xcrs[0].value)
    struct.pack_into("<I", vcpu.xsave, 28, rng.choice([0, 0xFFFF, 0x2FFFF, rng.getrandbits(32)]))
    vcpu.msrs[IA32_XSS] = rng.choice([0, rng.getrandbits(64)])
    if mode in ("long64", "la57") and cpl == 0 and rng.random() < 0.3:
        lost_syscall_frame(vcpu, memory, rng)
    for _ in range(rng.randrange(6)):  # data the memory operands may land on
        address = rng.choice([*_EDGES, rng.randrange(RAM_SIZE)]) % RAM_SIZE
        chunk = bytes(rng.getrandbits(8) for _ in range(min(256, RAM_SIZE - address)))
        memory.write(address, chunk)


def bitness(mode: str) -> int:
    return {"real": 16, "protected16": 16, "long64": 64, "la57": 64}.get(mode, 32)


@pytest.mark.parametrize("mode", MODES)
def test_emulate_never_raises_anything_else(memory: GuestMemory, mode: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(
        code=instruction_bytes(bitness(mode)),
        seed=st.integers(0, 1 << 32),
        layout=st.sampled_from(LAYOUTS),
        given_bytes=st.booleans(),
        mmio=st.booleans(),
        run_ahead=st.sampled_from([0, 64]),
        payload=st.booleans(),
        syscall_check=st.booleans(),
    )
    def one(code: bytes, seed: int, layout: XsaveLayout, given_bytes: bool, mmio: bool, run_ahead: int,
            payload: bool, syscall_check: bool) -> None:  # fmt: skip
        memory.fill(0, RAM_SIZE)
        rng = random.Random(seed)
        vcpu = MsrVcpu({})
        machine_state(vcpu, memory, rng, mode)
        memory.write(CODE, code + bytes(rng.getrandbits(8) for _ in range(32 - len(code))))
        emulator = Emulator(
            vcpu,
            memory,
            xsave_layout=layout,
            maxphyaddr=rng.choice([36, 46, 52]),
            mmio=Mmio() if mmio else None,
            exception_payload=payload,
            run_ahead=run_ahead,
            read_msrs=vcpu.get_msrs if syscall_check else None,
        )
        try:
            names = emulator.emulate(code if given_bytes else None)
        except EmulatorError:
            return
        assert names and all(isinstance(name, str) for name in names)
        exception = vcpu.events.exception
        if emulator.last_fault is not None and not emulator.last_fault.software:
            assert exception.injected or exception.pending
            assert exception.nr == emulator.last_fault.vector

    one()


# --- what the property found, kept as plain regression tests --------------------------------


def test_avx_state_missing_from_the_layout_is_not_emulated(memory: GuestMemory) -> None:
    """XCR0 enables AVX, KVM's CPUID leaf 0DH does not place it: a VEX write to a
    YMM register used to end in KeyError(2)."""
    memory.fill(0, RAM_SIZE)
    vcpu = FakeVcpu()
    vcpu.protected_mode()
    code = bytes.fromhex("c5 fd f8 00")  # vpsubb ymm0, ymm0, [eax]
    memory.write(CODE, code)
    vcpu.regs.rip, vcpu.regs.rax = CODE, 0x8000
    with pytest.raises(UnsupportedInstruction, match="state component 2 missing"):
        Emulator(vcpu, memory, xsave_layout=XsaveLayout({})).emulate(code)


def test_lost_syscall_check_with_protection_keys_is_no_crash(memory: GuestMemory) -> None:
    """On a host that loses SYSCALLs every emulation first reads the #PF gate; with
    CR4.PKE the page walker refuses, which used to escape as NotCovered."""
    memory.fill(0, RAM_SIZE)
    vcpu = MsrVcpu({IA32_LSTAR: CODE})
    tables = PageTables(memory, TABLES)
    tables.map(CODE, CODE)
    vcpu.long_mode(tables.root, cpl=0, cr4=0x20 | 0x200 | 0x40000 | 1 << 22)
    code = bytes.fromhex("0f 01 cb")  # stac
    memory.write(CODE, code)
    vcpu.regs.rip = CODE
    emulator = Emulator(vcpu, memory, xsave_layout=XsaveLayout.typical(), read_msrs=vcpu.get_msrs)
    assert emulator.emulate(code) == ["stac"]
    assert vcpu.regs.rflags & (1 << 18)
