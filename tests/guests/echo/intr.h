/* Interrupts for the echo guest: an IDT for vectors 0x00-0x2f and the two
 * legacy 8259A PICs remapped to vectors 0x20-0x2f (Intel 8259A datasheet,
 * "Programming the 8259A"). Exceptions (0x00-0x1f) print what happened on
 * COM1 by polling and exit; IRQs go to the handler registered for them and
 * are acknowledged with a non-specific EOI afterwards. */
#ifndef ECHO_INTR_H
#define ECHO_INTR_H

#include <stdint.h>

#define PIC_MASTER_VECTOR 0x20 /* IRQ 0-7  -> 0x20-0x27 */
#define PIC_SLAVE_VECTOR  0x28 /* IRQ 8-15 -> 0x28-0x2f */
#define PIC_CASCADE_IRQ   2    /* the slave sits on master input 2 */
#define IDT_VECTORS       0x30 /* exceptions and the 16 PIC vectors */

/* Debug-exit code after an unexpected CPU exception. */
#define EXIT_EXCEPTION    0x7e

/* What vectors.S pushes: pushal's registers, then the vector, the error
 * code (0 where the CPU pushes none), then the CPU's own frame. */
struct intr_frame {
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vector, error;
    uint32_t eip, cs, eflags;
};

typedef void (*irq_handler_t)(void);

/* Loads the IDT and initialises both PICs (ICW1-ICW4) with every IRQ
 * masked. Call with interrupts off.
 *
 * with_iret chooses how a handler returns. With 0 it is popfl; sti;
 * ret $4 (vectors.S), which works wherever iret does and also under a
 * KVM that runs guest kernel code through its instruction emulator
 * (software-assisted KVM such as PVM): that emulator implements iret
 * only in real mode and fails with an emulation error on a
 * protected-mode iret. With 1 it is a plain iret. */
void intr_init(int with_iret);
/* Runs handler for IRQ irq (0-15) and unmasks it (and the cascade for a
 * slave IRQ). The handler runs with interrupts off; the EOI is sent after
 * it returns. */
void intr_set_irq_handler(unsigned irq, irq_handler_t handler);
/* Interrupts taken on PIC vectors that had no handler (spurious IRQ 7/15
 * included). */
uint32_t intr_unhandled_count(void);

static inline void sti(void)
{
    __asm__ volatile("sti" : : : "memory");
}

/* With interrupts off: enable them and halt until one has been handled,
 * then disable them again. sti delays interrupts by one instruction, so
 * none can slip in between the caller's check and hlt and be missed. */
static inline void wait_for_interrupt(void)
{
    __asm__ volatile("sti; hlt; cli" : : : "memory");
}

#endif
