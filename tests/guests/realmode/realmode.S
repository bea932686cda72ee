/* realmode: a flat 16-bit real-mode guest (docs/boot.md, "flat binary").
 *
 * Loaded at physical 0x7C00 and entered at CS:IP = 0000:7C00. Sets up
 * COM1 (8N1, divisor 1, FIFO), prints "hello from real mode\n" with
 * polling (LSR.THRE before every byte) and ends the VM through the
 * debug-exit port with code 0x2a (a 32-bit OUT: the 0x66 operand-size
 * prefix is emitted by the assembler for `outl %eax, %dx` in .code16),
 * which pyvmm reports as exit status (0x2a << 1) | 1 = 85. */

#define COM1 0x3f8

    .section .text.entry, "ax"
    .code16
    .globl _start
_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp

    /* UART: IER=0, DLAB=1, divisor 1, 8N1, FIFO on and cleared, DTR|RTS. */
    movw $COM1+1, %dx
    xorb %al, %al
    outb %al, %dx
    movw $COM1+3, %dx
    movb $0x80, %al
    outb %al, %dx
    movw $COM1+0, %dx
    movb $0x01, %al
    outb %al, %dx
    movw $COM1+1, %dx
    xorb %al, %al
    outb %al, %dx
    movw $COM1+3, %dx
    movb $0x03, %al
    outb %al, %dx
    movw $COM1+2, %dx
    movb $0xc7, %al
    outb %al, %dx
    movw $COM1+4, %dx
    movb $0x03, %al
    outb %al, %dx

    movw $message, %si
next_char:
    lodsb
    testb %al, %al
    jz done
    movb %al, %bl
    movw $COM1+5, %dx
wait_thre:
    inb %dx, %al
    testb $0x20, %al
    jz wait_thre
    movw $COM1, %dx
    movb %bl, %al
    outb %al, %dx
    jmp next_char

done:
    movw $0xf4, %dx
    movl $0x2a, %eax
    outl %eax, %dx
hang:
    cli
    hlt
    jmp hang

message:
    .asciz "hello from real mode\n"

    .section .note.GNU-stack, "", @progbits
