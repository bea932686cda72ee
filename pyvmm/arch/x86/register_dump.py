"""A vCPU's registers as text, laid out as QEMU's `info registers` prints them for an
x86-64 CPU (target/i386 `x86_cpu_dump_state`), so that people and scripts used to
QEMU's monitor read pyvmm's the same way."""

from __future__ import annotations

from pyvmm.kvm.x86 import kvm_dtable, kvm_regs, kvm_segment, kvm_sregs

# EFLAGS bits shown in brackets, most significant first (QEMU: "[D-ITSZAPC]" order).
_FLAGS = (("D", 10), ("O", 11), ("S", 7), ("Z", 6), ("A", 4), ("P", 2), ("C", 0))
_GPRS = (
    ("RAX", "rax"), ("RBX", "rbx"), ("RCX", "rcx"), ("RDX", "rdx"),
    ("RSI", "rsi"), ("RDI", "rdi"), ("RBP", "rbp"), ("RSP", "rsp"),
    ("R8 ", "r8"), ("R9 ", "r9"), ("R10", "r10"), ("R11", "r11"),
    ("R12", "r12"), ("R13", "r13"), ("R14", "r14"), ("R15", "r15"),
)  # fmt: skip
_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")


def _segment_flags(segment: kvm_segment) -> int:
    """The descriptor's attribute bits where QEMU shows them (bits 8-23 of the second
    descriptor word: type, S, DPL, P, AVL, L, D/B, G)."""
    return int(
        (segment.type << 8) | (segment.s << 12) | (segment.dpl << 13) | (segment.present << 15)
        | (segment.avl << 20) | (segment.l << 21) | (segment.db << 22) | (segment.g << 23)
    )  # fmt: skip


def _segment(name: str, segment: kvm_segment) -> str:
    return (
        f"{name.upper():<3}={segment.selector:04x} {segment.base:016x} "
        f"{segment.limit:08x} {_segment_flags(segment):08x}"
    )


def _table(name: str, table: kvm_dtable) -> str:
    return f"{name}=     {table.base:016x} {table.limit:08x}"


def format_registers(regs: kvm_regs, sregs: kvm_sregs) -> str:
    """The general, segment, descriptor-table and control registers, QEMU's layout."""
    lines = []
    for row in range(0, len(_GPRS), 4):
        lines.append(
            " ".join(f"{label}={getattr(regs, field):016x}" for label, field in _GPRS[row : row + 4])
        )
    flags = "".join(letter if regs.rflags >> bit & 1 else "-" for letter, bit in _FLAGS)
    lines.append(f"RIP={regs.rip:016x} RFL={regs.rflags:08x} [{flags}] CPL={sregs.cs.dpl}")
    lines += [_segment(name, getattr(sregs, name)) for name in _SEGMENTS]
    lines.append(_segment("LDT", sregs.ldt))
    lines.append(_segment("TR", sregs.tr))
    lines += [_table("GDT", sregs.gdt), _table("IDT", sregs.idt)]
    lines.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x}")
    lines.append(f"EFER={sregs.efer:016x} APIC_BASE={sregs.apic_base:016x}")
    return "\n".join(lines) + "\n"
