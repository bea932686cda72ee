/* Part of long64-shim (TEST AID ONLY, see long64-shim.c):
 * void shim_enter64(uint32_t pml4, uint32_t entry, uint32_t boot_params)
 * From 32-bit protected mode with paging off: load a GDT with a 64-bit
 * code segment at 0x10 and a data segment at 0x18, enable PAE, load CR3,
 * set EFER.LME, enable paging, far-jump to 64-bit code, load the data
 * segments and jump to entry with RSI = boot_params. */
    .text
    .code32
    .globl shim_enter64
shim_enter64:
    movl 4(%esp), %eax          /* pml4 */
    movl 8(%esp), %edi          /* entry */
    movl 12(%esp), %esi         /* boot_params */
    lgdt gdtr
    movl %cr4, %ecx
    orl $0x20, %ecx             /* PAE */
    movl %ecx, %cr4
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $0x10, $long_entry
    .code64
long_entry:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl %edi, %edi
    jmp *%rdi

    .data
    .align 8
gdt:
    .quad 0
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x18: data */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
    .section .note.GNU-stack, "", @progbits
