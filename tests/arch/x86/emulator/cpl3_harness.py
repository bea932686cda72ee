"""A tiny 64-bit guest, built directly in guest memory, that runs one instruction at
CPL 3 on /dev/kvm, and the same instruction through the `Emulator` from the same
state, so that a test can compare the two.

The guest (everything written by this module; no image is loaded):
- 4-level paging with 4 KiB pages for the first 2 MiB: kernel pages (GDT, IDT,
  handlers, TSS, stack, page tables) supervisor-only; a user code page; 16 user data
  pages; a read-only user page, a not-present page and a supervisor page after them;
- a GDT with 64-bit kernel and user segments and a TSS (RSP0 = kernel stack);
- an IDT whose gate n leads to a stub `push n; out 0xe1, al; hlt` (gates 3 and 4
  have DPL 3, the others DPL 0).

A run: the code page holds the instruction and then `hlt`. The vCPU is put at CPL 3
on the instruction (registers, memory, XSAVE state as the case says). Natively, KVM
runs it and then `hlt` raises #GP, or the instruction itself raises an exception;
either way the stub exits to us on port 0xe1 with the exception frame on the kernel
stack. Emulated, the `Emulator` performs the instruction on the stopped vCPU (and
delivers its exception, if any), then KVM runs on from there into the same `hlt` or
handler. The `Outcome`s of the two runs must be identical.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

from pyvmm.arch.x86 import cpuid as cpuid_table
from pyvmm.arch.x86.emulator import Emulator
from pyvmm.kvm import Cap, ExitReason, Kvm, x86
from pyvmm.memory import GuestMemory

P, W, U = 1, 2, 4
NX = 1 << 63
GDT, IDT, HANDLERS, TSS, KERNEL_STACK_TOP = 0x1000, 0x2000, 0x3000, 0x4000, 0x7000
PML4, PDPT, PD, PT = 0x8000, 0x9000, 0xA000, 0xB000
CODE = 0x10000
DATA = 0x20000
DATA_SIZE = 0x10000
READ_ONLY = 0x30000
NOT_PRESENT = 0x31000
SUPERVISOR = 0x32000
FS_BASE = DATA + 0x800
GS_BASE = DATA + 0x400
USER_CS, USER_SS, KERNEL_CS, TSS_SELECTOR = 0x23, 0x1B, 0x08, 0x28
EXCEPTION_PORT = 0xE1
WITH_ERROR_CODE = {8, 10, 11, 12, 13, 14, 17, 21}
XCR0_WANTED = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM (if KVM has them)

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip


def _descriptor(base: int, limit: int, kind: int, s: int, dpl: int, long: int, db: int, g: int) -> int:
    limit_field = limit >> 12 if g else limit
    access = kind | (s << 4) | (dpl << 5) | (1 << 7)
    flags = (long << 1) | (db << 2) | (g << 3)
    return (
        (limit_field & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
        | (((limit_field >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56)
    )  # fmt: skip


def _segment(
    selector: int, kind: int, dpl: int, *, long: int = 0, db: int = 1, base: int = 0
) -> x86.kvm_segment:
    return x86.kvm_segment(
        base=base, limit=0xFFFF_FFFF, selector=selector, type=kind, present=1, dpl=dpl,
        db=db, s=1, l=long, g=1,
    )  # fmt: skip


def data_pattern() -> bytes:
    return bytes((index * 37 + 11) & 0xFF for index in range(DATA_SIZE))


@dataclass
class Case:
    """One instruction and the state it starts from."""

    code: bytes
    regs: dict[str, int] = field(default_factory=dict)
    memory: dict[int, bytes] = field(default_factory=dict)  # guest-physical -> bytes
    rflags: int = 0x2
    xmm: dict[int, bytes] = field(default_factory=dict)  # register -> 16 bytes
    ymm_high: dict[int, bytes] = field(default_factory=dict)  # register -> upper 16 bytes
    mxcsr: int | None = None
    cr0_extra: int = 0


def effective_xsave(raw: bytes) -> bytes:
    """KVM's XSAVE area with every component whose XSTATE_BV bit is clear replaced by
    its initial value, and XSTATE_BV dropped: the register state, without the host's
    init tracking (which differs between a natively raised and an injected exception
    on kvm_pvm)."""
    area = bytearray(raw)
    in_use = struct.unpack_from("<Q", area, 512)[0]
    if not in_use & 1:
        area[0:24] = struct.pack("<H", 0x37F).ljust(24, b"\0")
        area[32:160] = bytes(128)
    if not in_use & 2:
        area[160:416] = bytes(256)
    area[512:520] = bytes(8)
    return bytes(area)


@dataclass
class Outcome:
    """What a run left behind when the exception stub reported."""

    vector: int
    error_code: int | None
    frame: tuple[int, ...]  # RIP, CS, RFLAGS, RSP, SS as pushed
    gprs: dict[str, int]
    cr2: int
    data: bytes
    read_only: bytes
    page_table: bytes
    xsave: bytes


class Cpl3Machine:
    """One VM with one vCPU, reused for every run."""

    def __init__(self) -> None:
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(0xFFFB_D000)
        self.vm.set_identity_map_addr(0xFFFB_C000)
        self.vm.create_irqchip()
        if self.kvm.check_extension(Cap.EXIT_ON_EMULATION_FAILURE):
            self.vm.enable_cap(Cap.EXIT_ON_EMULATION_FAILURE, 1)
        self.memory = GuestMemory([(0, 4 << 20)])
        self.memory.register(self.vm)
        self.vcpu = self.vm.create_vcpu(0)
        supported = self.kvm.supported_cpuid()
        entries = cpuid_table.vcpu_cpuid(supported, apic_id=0, cpus=1)
        for entry in entries:
            if entry.function == 1:
                entry.ecx |= 1 << 26  # XSAVE, so that CR4.OSXSAVE can be set
        self.vcpu.set_cpuid2(entries)
        leaf_d = cpuid_table.find(supported, 0xD, 0)
        self.xcr0 = XCR0_WANTED & (leaf_d.eax if leaf_d is not None else 3)
        self._build_tables()
        self._set_control_state()
        xcrs = x86.kvm_xcrs(nr_xcrs=1)
        xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, self.xcr0
        self.vcpu.set_xcrs(xcrs)
        self.initial_xsave = bytes(self.vcpu.get_xsave())

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.memory.close()
        self.kvm.close()

    # --- the guest's tables ------------------------------------------------------------------

    def _build_tables(self) -> None:
        memory = self.memory
        gdt = [
            0,
            _descriptor(0, 0xFFFFF, 0xB, 1, 0, 1, 0, 1),  # 0x08 kernel code
            _descriptor(0, 0xFFFFF, 0x3, 1, 0, 0, 1, 1),  # 0x10 kernel data
            _descriptor(0, 0xFFFFF, 0x3, 1, 3, 0, 1, 1),  # 0x18 user data
            _descriptor(0, 0xFFFFF, 0xB, 1, 3, 1, 0, 1),  # 0x20 user code
            _descriptor(TSS, 0x67, 0x9, 0, 0, 0, 0, 0),  # 0x28 TSS (16 bytes)
            TSS >> 32,
        ]
        self.gdt_limit = len(gdt) * 8 - 1
        memory.write(GDT, struct.pack(f"<{len(gdt)}Q", *gdt))
        idt = bytearray()
        for vector in range(256):
            handler = HANDLERS + vector * 16
            dpl = 3 if vector in (3, 4) else 0
            low = (
                (handler & 0xFFFF) | (KERNEL_CS << 16) | ((0xE | (dpl << 5) | 0x80) << 40)
                | (((handler >> 16) & 0xFFFF) << 48)
            )  # fmt: skip
            idt += struct.pack("<QQ", low, handler >> 32)
            memory.write(handler, bytes([0x6A, vector, 0xE6, EXCEPTION_PORT, 0xF4]))
        memory.write(IDT, bytes(idt))
        memory.write(TSS, bytes(0x68))
        memory.write(TSS + 4, struct.pack("<Q", KERNEL_STACK_TOP))
        memory.write(PML4, struct.pack("<Q", PDPT | P | W | U).ljust(4096, b"\0"))
        memory.write(PDPT, struct.pack("<Q", PD | P | W | U).ljust(4096, b"\0"))
        memory.write(PD, struct.pack("<Q", PT | P | W | U).ljust(4096, b"\0"))

    def page_table(self) -> list[int]:
        table = [0] * 512
        for page in range(0x10):
            table[page] = page * 4096 | P | W | (0 if page * 4096 == HANDLERS else NX)
        table[PT >> 12] = PT | P | W | NX
        table[CODE >> 12] = CODE | P | U
        for page in range(DATA_SIZE // 4096):
            table[(DATA >> 12) + page] = DATA + page * 4096 | P | W | U | NX
        table[READ_ONLY >> 12] = READ_ONLY | P | U | NX
        table[SUPERVISOR >> 12] = SUPERVISOR | P | W | NX
        return table

    def _set_control_state(self) -> None:
        sregs = self.vcpu.get_sregs()
        sregs.cs = _segment(USER_CS, 0xB, 3, long=1, db=0)
        for name in ("ds", "es", "ss"):
            setattr(sregs, name, _segment(USER_SS, 0x3, 3))
        sregs.fs = _segment(USER_SS, 0x3, 3, base=FS_BASE)
        sregs.gs = _segment(USER_SS, 0x3, 3, base=GS_BASE)
        sregs.tr = x86.kvm_segment(base=TSS, limit=0x67, selector=TSS_SELECTOR, type=0xB, present=1)
        sregs.ldt = x86.kvm_segment(unusable=1)
        sregs.gdt.base, sregs.gdt.limit = GDT, self.gdt_limit
        sregs.idt.base, sregs.idt.limit = IDT, 4095
        sregs.cr0 = 0x8005_0033  # PE MP ET NE WP PG
        sregs.cr2 = 0
        sregs.cr3 = PML4
        sregs.cr4 = 0x20 | 0x200 | 0x400 | (1 << 18)  # PAE OSFXSR OSXMMEXCPT OSXSAVE
        sregs.efer = 0x500 | 0x800  # LME LMA NXE
        self.sregs = bytes(sregs)

    # --- one run ---------------------------------------------------------------------------------

    def _forget_shadow_pages(self) -> None:
        """Deleting and re-adding the memory slot makes KVM drop every shadow page
        table built from the guest's page tables, which this harness rewrites from
        user space behind KVM's back (kvm_pvm shadows them; stale shadows would keep
        old accessed/dirty state)."""
        for region in self.memory.regions:
            self.vm.set_user_memory_region(region.slot, region.gpa, 0, region.host_address)
        self.memory.register(self.vm)

    def prepare(self, case: Case) -> None:
        memory = self.memory
        self._forget_shadow_pages()
        memory.write(CODE, case.code + b"\xf4" + bytes(4096 - len(case.code) - 1))
        memory.write(DATA, data_pattern())
        memory.write(READ_ONLY, data_pattern()[:4096])
        memory.write(SUPERVISOR, bytes(4096))
        memory.fill(KERNEL_STACK_TOP - 0x1000, 0x1000)
        memory.write(PT, struct.pack("<512Q", *self.page_table()))
        for address, data in case.memory.items():
            memory.write(address, data)
        sregs = x86.kvm_sregs.from_buffer_copy(self.sregs)
        sregs.cr0 |= case.cr0_extra
        self.vcpu.set_sregs(sregs)
        regs = x86.kvm_regs()
        for index, name in enumerate(GPRS):
            setattr(regs, name, 0x0101_0101_0101_0101 * (index + 1) ^ 0x8040_2010_0804_0201)
        regs.rsp = DATA + 0x8000
        for name, value in case.regs.items():
            setattr(regs, name, value)
        regs.rip = CODE
        regs.rflags = case.rflags
        self.vcpu.set_regs(regs)
        area = self.vcpu.get_xsave()
        raw = bytearray(self.initial_xsave)
        in_use = struct.unpack_from("<Q", raw, 512)[0]
        for number, value in case.xmm.items():
            raw[160 + 16 * number : 176 + 16 * number] = value
            in_use |= 2
        if case.ymm_high:
            avx_offset = cpuid_table.find(self.kvm.supported_cpuid(), 0xD, 2).ebx  # type: ignore[union-attr]
            for number, value in case.ymm_high.items():
                raw[avx_offset + 16 * number : avx_offset + 16 * number + 16] = value
            in_use |= 4
        if case.mxcsr is not None:
            struct.pack_into("<I", raw, 24, case.mxcsr)
            in_use |= 2
        struct.pack_into("<Q", raw, 512, in_use)
        ctypes.memmove(ctypes.addressof(area), bytes(raw), len(raw))
        self.vcpu.set_xsave(area)
        events = self.vcpu.get_vcpu_events()
        events.exception.injected = events.exception.pending = 0
        events.interrupt.injected = 0
        events.flags = 0
        self.vcpu.set_vcpu_events(events)

    def run(self, case: Case, *, emulate: bool, fetch: bool = False, run_ahead: int = 0) -> Outcome:
        """Run `case` natively (emulate=False) or through the emulator; `fetch` makes
        the emulator fetch the instruction from guest memory instead of being given it;
        `run_ahead` is the emulator's (what it emulated is left in `emulated`)."""
        self.prepare(case)
        self.emulated: list[str] = []
        if emulate:
            emulator = Emulator(self.vcpu, self.memory, run_ahead=run_ahead)
            self.emulated = emulator.emulate(None if fetch else case.code)
        reason = self.vcpu.run()
        regs = self.vcpu.get_regs()
        if reason != ExitReason.IO or self.vcpu.run_state.io.port != EXCEPTION_PORT:
            raise AssertionError(f"unexpected exit {ExitReason(reason).name} at RIP {regs.rip:#x}")
        stack = [self.memory.read_u64(regs.rsp + 8 * i) for i in range(7)]
        vector = stack[0]
        error_code = stack[1] if vector in WITH_ERROR_CODE else None
        frame = tuple(stack[2:7] if error_code is not None else stack[1:6])
        return Outcome(
            vector=vector,
            error_code=error_code,
            frame=frame,
            gprs={name: int(getattr(regs, name)) for name in GPRS},
            cr2=int(self.vcpu.get_sregs().cr2),
            data=self.memory.read(DATA, DATA_SIZE),
            read_only=self.memory.read(READ_ONLY, 4096),
            page_table=self.memory.read(PT, 4096),
            xsave=effective_xsave(bytes(self.vcpu.get_xsave())),
        )
