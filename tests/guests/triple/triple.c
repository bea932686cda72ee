/* triple: makes the CPU triple fault (Multiboot v1, ELF32).
 *
 * Prints "about to triple fault", loads an IDT whose limit is 0 and
 * executes ud2. Vector 6 (#UD) lies outside the IDT, so the CPU raises
 * #GP, whose vector is outside the IDT as well, then #DF, ditto: a triple
 * fault, i.e. a shutdown (KVM_EXIT_SHUTDOWN for the VMM). ud2 rather than
 * int3: software interrupts need KVM's instruction emulator on some hosts
 * (software-assisted KVM), an invalid opcode never does. This guest has
 * no path to the debug-exit or power-off ports. */
#include "guest.h"
#include "image.h"

struct __attribute__((packed)) idt_ptr {
    uint16_t limit;
    uint32_t base;
};

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    static const struct idt_ptr empty_idt = { 0, 0 };

    (void)magic;
    (void)mbi;
    serial_init();
    kprintf("about to triple fault\n");
    __asm__ volatile("lidt %0\n\t"
                     "ud2"
                     : : "m"(empty_idt) : "memory");
    /* Not reached; if it were, stay here rather than exit. */
    halt_forever();
}
