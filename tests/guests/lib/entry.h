/* What every C guest's entry code does around its main function, for the
 * 32-bit Multiboot entry (lib/mb_start.S) and the 64-bit one
 * (long64/start64.S), which include it: both are assembled with this
 * directory on the include path (the Makefile's -I lib). The boot protocol
 * (registers, mode) stays in each entry file; what they share is here.
 *
 *   clear_bss        zero .bss with rep stosb (the stack lives there too,
 *                    so it is done before anything is pushed)
 *   halt_forever     the end of _start: should main return, halt for good
 *                    (cli first, so no interrupt wakes the hlt)
 *   entry_stack a b  the 16 KiB boot stack in .bss, from label a to b,
 *                    16-byte aligned as both ABIs want at a call */
#ifndef GUEST_ENTRY_H
#define GUEST_ENTRY_H

    .macro clear_bss
#ifdef __x86_64__
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
#else
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
#endif
    xorl %eax, %eax
    rep stosb
    .endm

    .macro halt_forever
1:  cli
    hlt
    jmp 1b
    .endm

    .macro entry_stack bottom, top
    .section .bss
    .align 16
\bottom:
    .skip 16384
\top:
    .endm

#endif
