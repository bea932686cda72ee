/* pioloop: exit-rate benchmark guest, port I/O flavour.
 *
 * A flat real-mode binary. pyvmm (flat-binary path of docs/boot.md) and
 * the C benchmark harness in benchmarks/ load it identically: the file's
 * bytes at guest physical 0x7C00, 16-bit real mode, CS:IP = 0000:7C00,
 * nothing else set up. It then writes AL to I/O port 0xf0 (no device
 * there in pyvmm) in a tight loop forever: every iteration is exactly one
 * KVM_EXIT_IO, so the exit rate of a VMM is what gets measured. The loop
 * is one OUT and one short JMP (4 bytes); the guest never stops by
 * itself. */
    .section .text.entry, "ax"
    .code16
    .globl _start
_start:
1:  outb %al, $0xf0
    jmp 1b

    .section .note.GNU-stack, "", @progbits
