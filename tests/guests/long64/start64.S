/* Entry of the long64 guest (ELF64, EM_X86_64, linked and loaded at
 * 0x200000). The VMM enters _start already in 64-bit long mode with
 * paging on (identity map), interrupts off and RSI = physical address of
 * a Linux boot_params "zero page". We take our own stack, clear .bss
 * and call
 *
 *     void long64_main(const uint8_t *boot_params);
 *
 * and halt forever should it return. */
#include "entry.h"

    .section .text.entry, "ax"
    .code64
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    leaq stack_top(%rip), %rsp
    movq %rsi, %r12                     /* boot_params */

    clear_bss                           /* stack included */

    movq %r12, %rdi
    call long64_main
    halt_forever
    .size _start, . - _start

    entry_stack stack, stack_top

    .section .note.GNU-stack, "", @progbits
