#include "guest.h"
#include "intr.h"

/* 8259A ports and command words. */
#define PIC_MASTER_CMD  0x20
#define PIC_MASTER_DATA 0x21
#define PIC_SLAVE_CMD   0xa0
#define PIC_SLAVE_DATA  0xa1

#define ICW1_ICW4       0x01 /* ICW4 follows */
#define ICW1_INIT       0x10 /* edge triggered, cascade mode, start init */
#define ICW3_MASTER     (1u << PIC_CASCADE_IRQ) /* slave on input 2 */
#define ICW3_SLAVE      PIC_CASCADE_IRQ         /* slave's cascade identity */
#define ICW4_8086       0x01
#define OCW2_EOI        0x20 /* non-specific EOI */
#define OCW3_READ_ISR   0x0b

#define PIC_SPURIOUS_IRQ 7   /* on either PIC: IRQ 7 or IRQ 15 */

/* 32-bit interrupt gate, present, DPL 0 (Intel SDM vol. 3, 6.11). */
#define GATE_INTERRUPT32 0x8e

struct __attribute__((packed)) idt_gate {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t zero;
    uint8_t type_attr;
    uint16_t offset_hi;
};

struct __attribute__((packed)) idt_ptr {
    uint16_t limit;
    uint32_t base;
};

extern const uint32_t isr_table[IDT_VECTORS]; /* vectors.S */
void intr_dispatch(struct intr_frame *frame);

static struct idt_gate idt[IDT_VECTORS] __attribute__((aligned(8)));
static irq_handler_t irq_handlers[16];
static uint8_t pic_masks[2] = { 0xff, 0xff };
static volatile uint32_t unhandled;
uint32_t intr_return_with_iret; /* read by vectors.S */

/* Port 0x80 (POST codes) as the customary short delay between ICWs. */
static void pic_out(uint16_t port, uint8_t value)
{
    outb(port, value);
    outb(0x80, 0);
}

static void pic_write_masks(void)
{
    outb(PIC_MASTER_DATA, pic_masks[0]);
    outb(PIC_SLAVE_DATA, pic_masks[1]);
}

static void pic_init(void)
{
    pic_out(PIC_MASTER_CMD, ICW1_INIT | ICW1_ICW4);
    pic_out(PIC_SLAVE_CMD, ICW1_INIT | ICW1_ICW4);
    pic_out(PIC_MASTER_DATA, PIC_MASTER_VECTOR);
    pic_out(PIC_SLAVE_DATA, PIC_SLAVE_VECTOR);
    pic_out(PIC_MASTER_DATA, ICW3_MASTER);
    pic_out(PIC_SLAVE_DATA, ICW3_SLAVE);
    pic_out(PIC_MASTER_DATA, ICW4_8086);
    pic_out(PIC_SLAVE_DATA, ICW4_8086);
    pic_write_masks();
}

static uint8_t pic_in_service(uint16_t cmd_port)
{
    outb(cmd_port, OCW3_READ_ISR);
    return inb(cmd_port);
}

static void pic_eoi(unsigned irq)
{
    if (irq >= 8)
        outb(PIC_SLAVE_CMD, OCW2_EOI);
    outb(PIC_MASTER_CMD, OCW2_EOI);
}

void intr_init(int with_iret)
{
    uint16_t cs;
    intr_return_with_iret = with_iret != 0;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (unsigned v = 0; v < IDT_VECTORS; v++) {
        idt[v].offset_lo = (uint16_t)isr_table[v];
        idt[v].selector = cs;
        idt[v].zero = 0;
        idt[v].type_attr = GATE_INTERRUPT32;
        idt[v].offset_hi = (uint16_t)(isr_table[v] >> 16);
    }
    struct idt_ptr ptr = { sizeof(idt) - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(ptr) : "memory");
    pic_init();
}

void intr_set_irq_handler(unsigned irq, irq_handler_t handler)
{
    if (irq >= 16)
        return;
    irq_handlers[irq] = handler;
    if (irq >= 8) {
        pic_masks[1] &= (uint8_t)~(1u << (irq - 8));
        irq = PIC_CASCADE_IRQ;
    }
    pic_masks[0] &= (uint8_t)~(1u << irq);
    pic_write_masks();
}

uint32_t intr_unhandled_count(void)
{
    return unhandled;
}

static void __attribute__((noreturn)) exception(const struct intr_frame *f)
{
    kprintf("\necho: exception %u error=0x%x eip=0x%x\n", f->vector, f->error, f->eip);
    debug_exit(EXIT_EXCEPTION);
}

/* A spurious IRQ 7 (15) is one the PIC withdrew before the CPU acknowledged
 * it: the ISR bit is clear and it must not get an EOI (the master still
 * needs one for the cascade when the slave's IRQ 15 was spurious). */
static int spurious(unsigned irq)
{
    if (irq == PIC_SPURIOUS_IRQ)
        return !(pic_in_service(PIC_MASTER_CMD) & (1u << PIC_SPURIOUS_IRQ));
    if (irq == 8 + PIC_SPURIOUS_IRQ && !(pic_in_service(PIC_SLAVE_CMD) & (1u << PIC_SPURIOUS_IRQ))) {
        outb(PIC_MASTER_CMD, OCW2_EOI);
        return 1;
    }
    return 0;
}

void intr_dispatch(struct intr_frame *frame)
{
    if (frame->vector < PIC_MASTER_VECTOR || frame->vector >= IDT_VECTORS)
        exception(frame);
    unsigned irq = frame->vector - PIC_MASTER_VECTOR;
    irq_handler_t handler = irq_handlers[irq];
    if (handler) {
        handler();
    } else {
        unhandled++;
        if (spurious(irq))
            return;
    }
    pic_eoi(irq);
}
