/* mmioloop: exit-rate benchmark guest, MMIO flavour.
 *
 * A flat binary. pyvmm (flat-binary path of docs/boot.md) and the C
 * benchmark harness in benchmarks/ load it identically: the file's bytes
 * at guest physical 0x7C00, 16-bit real mode, CS:IP = 0000:7C00, nothing
 * else set up. It switches itself to 32-bit protected mode with its own
 * flat GDT (paging stays off), then stores a 32-bit word to physical
 * 0xD0000000, where there is no RAM (no memory slot), in a tight loop
 * forever: every iteration is exactly one KVM_EXIT_MMIO. The loop is one
 * MOV and one short JMP; the guest never stops by itself. */

    .section .text.entry, "ax"
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl gdtr
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32

    .code32
pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0xD0000000, %ebx
    xorl %eax, %eax
1:  movl %eax, (%ebx)
    jmp 1b

    .align 8
gdt:
    .quad 0x0000000000000000            /* null */
    .quad 0x00cf9a000000ffff            /* 0x08: code, base 0, 4 GiB, 32-bit */
    .quad 0x00cf92000000ffff            /* 0x10: data, base 0, 4 GiB */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt

    .section .note.GNU-stack, "", @progbits
