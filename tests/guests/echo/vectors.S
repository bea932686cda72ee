/* Entry stubs for vectors 0x00-0x2f of the echo guest (see intr.h).
 *
 * Each stub makes the stack look the same, whether or not the CPU pushed
 * an error code, then joins isr_common, which saves the registers and
 * calls intr_dispatch(struct intr_frame *). The gates are interrupt
 * gates, so the handlers run with IF clear; the return restores it.
 *
 * The return is iret only if intr_return_with_iret is set (intr.h says
 * why it is not by default). */

    .code32
    .text

/* Exceptions that push an error code (Intel SDM vol. 3, table 6-1). */
#define PUSHES_ERROR(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || \
                         (v) == 21 || (v) == 29 || (v) == 30)

    .macro STUB vec
    .type isr_\vec, @function
isr_\vec:
    .if !PUSHES_ERROR(\vec)
    pushl $0
    .endif
    pushl $\vec
    jmp isr_common
    .size isr_\vec, . - isr_\vec
    .endm

#define VECTORS 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23, \
                24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44, \
                45,46,47

    .irp vec, VECTORS
    STUB \vec
    .endr

    .type isr_common, @function
isr_common:
    pushal
    cld
    pushl %esp                      /* struct intr_frame * */
    call intr_dispatch
    addl $4, %esp
    cmpl $0, intr_return_with_iret
    je return_without_iret
    popal
    addl $8, %esp                   /* vector and error code */
    iret

/* The same return to the same privilege level, as popfl + ret. The frame
 * is rewritten from (eip, cs, eflags) to (eflags without IF, eip, -):
 * popfl, then sti (whose one-instruction delay keeps interrupts off until
 * the ret has taken the return address, so the stack never grows), and
 * ret $4 drops the last slot. Frame offsets: see struct intr_frame. */
return_without_iret:
    movl 40(%esp), %eax             /* eip (eax and ecx come back with popal) */
    movl 48(%esp), %ecx             /* eflags */
    movl %eax, 44(%esp)
    btrl $9, %ecx                   /* CF = IF, and clear IF */
    movl %ecx, 40(%esp)
    jc 1f
    popal
    addl $8, %esp
    popfl
    ret $4
1:  popal
    addl $8, %esp
    popfl
    sti
    ret $4
    .size isr_common, . - isr_common

    .section .rodata
    .align 4
    .globl isr_table
isr_table:
    .irp vec, VECTORS
    .long isr_\vec
    .endr
    .size isr_table, . - isr_table

    .section .note.GNU-stack, "", @progbits
