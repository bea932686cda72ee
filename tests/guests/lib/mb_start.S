/* Entry code shared by the Multiboot v1 (ELF32) guests.
 *
 * The boot loader enters _start in 32-bit protected mode, paging off,
 * flat segments, EAX = 0x2BADB002 and EBX = physical address of the
 * multiboot information structure. We keep the loader's segments (the
 * guests never reload a segment register), take our own stack, clear .bss
 * and call
 *
 *     void guest_main(uint32_t magic, struct multiboot_info *mbi);
 *
 * If guest_main ever returns the CPU halts forever. */
#include "entry.h"
#include "multiboot.h"

#define MB_HEADER_FLAGS (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO)

    .section .multiboot, "a"
    .align 4
    .globl multiboot_header
multiboot_header:
    .long MULTIBOOT_HEADER_MAGIC
    .long MB_HEADER_FLAGS
    .long -(MULTIBOOT_HEADER_MAGIC + MB_HEADER_FLAGS)

    .section .text.entry, "ax"
    .code32
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movl $boot_stack_top, %esp
    movl %eax, %esi                 /* magic */
    movl %ebx, %ebp                 /* mbi */

    clear_bss                       /* a loader should have done it; be sure */

    subl $8, %esp                   /* keep %esp 16-byte aligned at the call */
    pushl %ebp
    pushl %esi
    call guest_main
    halt_forever
    .size _start, . - _start

    entry_stack boot_stack, boot_stack_top

    .section .note.GNU-stack, "", @progbits
