/* Real-mode start-up code for the application processors of the smp guest.
 *
 * It is assembled into the image's .rodata and copied by the BSP to
 * physical TRAMPOLINE_ADDR (0x8000) before the SIPIs; SIPI vector 0x08
 * starts each AP in real mode at CS:IP = 0800:0000. Everything inside is
 * therefore addressed as TRAMPOLINE_ADDR + (label - ap_trampoline_start);
 * symbols outside (ap_next_index, ap_stacks, ap_main) are ordinary
 * absolute addresses in the image at 1 MiB.
 *
 * Each AP: loads its own GDT (flat 4 GiB code 0x08 / data 0x10), sets
 * CR0.PE (clearing the CD/NW cache-disable bits of the reset state),
 * far-jumps into 32-bit code, takes the next index from the atomic
 * counter ap_next_index (first AP gets 1), uses stack number index-1 of
 * ap_stacks (its top is ap_stacks + index * AP_STACK_SIZE) and
 * calls ap_main(index). APs whose index exceeds MAX_APS halt at once. */

#include "smp.h"

#define T(x) (TRAMPOLINE_ADDR + ((x) - ap_trampoline_start))

    .section .rodata, "a"
    .globl ap_trampoline_start, ap_trampoline_end
    .align 16
ap_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl T(ap_gdtr)
    movl %cr0, %eax
    andl $0x9fffffff, %eax              /* clear CD and NW (set at reset) */
    orl $1, %eax                        /* PE */
    movl %eax, %cr0
    ljmpl $0x08, $T(ap_pm32)

    .code32
ap_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss

    movl $1, %eax
    lock xaddl %eax, ap_next_index      /* %eax = this AP's index */
    cmpl $MAX_APS, %eax
    ja 2f

    movl %eax, %ebx                     /* stack: ap_stacks + index * size */
    imull $AP_STACK_SIZE, %ebx
    addl $ap_stacks, %ebx
    movl %ebx, %esp

    subl $12, %esp                      /* 16-byte aligned at the call */
    pushl %eax
    movl $ap_main, %ecx                 /* absolute: this code was moved */
    call *%ecx
2:  cli
    hlt
    jmp 2b

    .align 8
ap_gdt:
    .quad 0x0000000000000000            /* null */
    .quad 0x00cf9a000000ffff            /* 0x08: code, base 0, 4 GiB, 32-bit */
    .quad 0x00cf92000000ffff            /* 0x10: data, base 0, 4 GiB */
ap_gdt_end:
ap_gdtr:
    .word ap_gdt_end - ap_gdt - 1
    .long T(ap_gdt)
ap_trampoline_end:

    .section .note.GNU-stack, "", @progbits
