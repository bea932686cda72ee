/* long64: a 64-bit guest entered directly in long mode (docs/boot.md,
 * "64-bit ELF"). Output, one fact per line, hex in lowercase:
 *
 *     hello from long mode
 *     cs=0x<CS selector>
 *     efer=0x<IA32_EFER>
 *     cr0=0x<CR0> cr4=0x<CR4>
 *     cmdline=<string>                (empty if cmd_line_ptr is 0)
 *     e820 addr=0x<a> size=0x<s> type=<t>    (one per entry, in order)
 *     exit_code=<n>
 *
 * then it exits through the debug-exit port with the number N of the
 * first "exit=N" token of the command line (decimal or 0x hex; default 0).
 * If RSI (the boot_params pointer) is 0 it prints "no boot_params" and
 * exits with code 0x7f. */
#include "guest.h"

/* struct boot_params offsets (Linux Documentation/arch/x86/zero-page.rst). */
#define BP_E820_ENTRIES 0x1e8   /* u8 */
#define BP_CMD_LINE_PTR 0x228   /* u32 */
#define BP_E820_TABLE   0x2d0   /* 128 x { u64 addr, u64 size, u32 type } */
#define BP_E820_MAX     128

#define MSR_EFER 0xC0000080u

struct __attribute__((packed)) e820_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
};

void long64_main(const uint8_t *bp);

void long64_main(const uint8_t *bp)
{
    uint16_t cs;
    uint64_t cr0, cr4;

    serial_init();
    kprintf("hello from long mode\n");

    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    kprintf("cs=0x%x\n", cs);
    kprintf("efer=0x%lx\n", (unsigned long)rdmsr(MSR_EFER));
    kprintf("cr0=0x%lx cr4=0x%lx\n", (unsigned long)cr0, (unsigned long)cr4);

    if (!bp) {
        kprintf("no boot_params\n");
        debug_exit(0x7f);
    }

    uint32_t cmd_ptr = *(const volatile uint32_t *)(bp + BP_CMD_LINE_PTR);
    const char *cmdline = cmd_ptr ? (const char *)(uintptr_t)cmd_ptr : "";
    kprintf("cmdline=%s\n", cmdline);

    unsigned n = bp[BP_E820_ENTRIES];
    if (n > BP_E820_MAX)
        n = BP_E820_MAX;
    const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
    for (unsigned i = 0; i < n; i++)
        kprintf("e820 addr=0x%lx size=0x%lx type=%u\n",
                (unsigned long)e[i].addr, (unsigned long)e[i].size, e[i].type);

    uint32_t code = (uint32_t)cmdline_get_ulong(cmdline, "exit=", 0);
    kprintf("exit_code=%u\n", code);
    debug_exit(code);
}
