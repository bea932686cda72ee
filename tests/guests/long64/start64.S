/* Entry of the long64 guest (ELF64, EM_X86_64, linked and loaded at
 * 0x200000). The VMM enters _start already in 64-bit long mode with
 * paging on (identity map), interrupts off and RSI = physical address of
 * a Linux boot_params "zero page". We take our own stack, clear .bss
 * and call
 *
 *     void long64_main(const uint8_t *boot_params);
 *
 * and halt forever should it return. */
    .section .text.entry, "ax"
    .code64
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    leaq stack_top(%rip), %rsp
    movq %rsi, %r12                     /* boot_params */

    leaq __bss_start(%rip), %rdi        /* clear .bss (stack included) */
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movq %r12, %rdi
    call long64_main
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

    .section .bss
    .align 16
stack:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
