/* hello: the project's default demo guest (Multiboot v1, ELF32).
 *
 * Prints exactly
 *     Hello from the pyvmm demo guest!
 *     bye
 * and powers off through ACPI PM1a control (16-bit write of 0x3400 to
 * port 0x604), which pyvmm turns into exit status 0. */
#include "guest.h"
#include "image.h"

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    kprintf("Hello from the pyvmm demo guest!\n");
    kprintf("bye\n");
    poweroff();
}
