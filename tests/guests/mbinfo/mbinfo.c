/* mbinfo: prints what the Multiboot v1 loader handed over (ELF32).
 *
 * One fact per line, all numbers in lowercase hex with "0x" except the
 * counts and KiB sizes, which are decimal:
 *
 *     magic=0x2badb002
 *     mbi=0x<address of the information structure>
 *     flags=0x<mbi->flags>
 *     mem_lower=<KiB>                        (flags bit 0)
 *     mem_upper=<KiB>                        (flags bit 0)
 *     cmdline=<string>                       (flags bit 2)
 *     boot_loader_name=<string>              (flags bit 9)
 *     mmap base=0x<b> len=0x<l> type=<t>     (flags bit 6, one per entry)
 *     mods_count=<n>                         (always; 0 if flags bit 3 clear)
 *     mod<i> start=0x<s> end=0x<e> string=<s> head=<hex>   (one per module)
 *     kernel_start=0x<__kernel_start>
 *     kernel_end=0x<_end>
 *     mbi_overlaps_kernel=<0|1>
 *     exit_code=<n>
 *     end
 *
 * head= is the module's first 16 bytes (fewer if it is shorter) as two
 * hex digits each, no separators. mbi_overlaps_kernel is 1 if any of the
 * information structure, the command line, the boot loader name, the
 * memory map, the module array, a module or a module string overlaps the
 * image [__kernel_start, _end) or page 0 [0, 0x1000).
 *
 * Then it exits through the debug-exit port with the number N from the
 * first "exit=N" token of the command line (decimal or 0x hex; default 0).
 * If EAX is not the multiboot magic it prints "magic=0x...", "bad magic",
 * "end" and exits with code 0x7f without touching EBX. */
#include "guest.h"
#include "image.h"

#define MAX_MODS_SHOWN 64

static int overlap_found;

static void check_range(uint64_t start, uint64_t len)
{
    uint64_t end = start + len;
    uint64_t ks = (uintptr_t)__kernel_start, ke = (uintptr_t)_end;

    if (len == 0)
        return;
    if (start < 0x1000)
        overlap_found = 1;
    if (start < ke && end > ks)
        overlap_found = 1;
}

static void check_string(uint32_t addr)
{
    if (addr)
        check_range(addr, strlen((const char *)(uintptr_t)addr) + 1);
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    const char *cmdline = NULL;

    serial_init();
    kprintf("magic=0x%x\n", magic);
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        kprintf("bad magic\n");
        kprintf("end\n");
        debug_exit(0x7f);
    }

    kprintf("mbi=0x%x\n", (uint32_t)(uintptr_t)mbi);
    kprintf("flags=0x%x\n", mbi->flags);
    check_range((uintptr_t)mbi, sizeof(*mbi));

    if (mbi->flags & MBI_FLAG_MEM) {
        kprintf("mem_lower=%u\n", mbi->mem_lower);
        kprintf("mem_upper=%u\n", mbi->mem_upper);
    }
    if (mbi->flags & MBI_FLAG_CMDLINE) {
        cmdline = (const char *)(uintptr_t)mbi->cmdline;
        kprintf("cmdline=%s\n", cmdline ? cmdline : "");
        check_string(mbi->cmdline);
    }
    if (mbi->flags & MBI_FLAG_LOADER_NAME) {
        const char *name = (const char *)(uintptr_t)mbi->boot_loader_name;
        kprintf("boot_loader_name=%s\n", name ? name : "");
        check_string(mbi->boot_loader_name);
    }
    if (mbi->flags & MBI_FLAG_MMAP) {
        check_range(mbi->mmap_addr, mbi->mmap_length);
        mmap_for_each(e, mbi) {
            kprintf("mmap base=0x%llx len=0x%llx type=%u\n",
                    (unsigned long long)e->base_addr,
                    (unsigned long long)e->length, e->type);
        }
    }

    uint32_t mods_count = (mbi->flags & MBI_FLAG_MODS) ? mbi->mods_count : 0;
    kprintf("mods_count=%u\n", mods_count);
    if (mods_count) {
        struct multiboot_module *mods =
            (struct multiboot_module *)(uintptr_t)mbi->mods_addr;
        check_range(mbi->mods_addr, (uint64_t)mods_count * sizeof(*mods));
        for (uint32_t i = 0; i < mods_count && i < MAX_MODS_SHOWN; i++) {
            struct multiboot_module *m = &mods[i];
            const char *str = (const char *)(uintptr_t)m->string;
            const uint8_t *data = (const uint8_t *)(uintptr_t)m->mod_start;
            uint32_t len = m->mod_end > m->mod_start ? m->mod_end - m->mod_start : 0;

            check_range(m->mod_start, len);
            check_string(m->string);
            kprintf("mod%u start=0x%x end=0x%x string=%s head=", i,
                    m->mod_start, m->mod_end, str ? str : "");
            for (uint32_t j = 0; j < len && j < 16; j++)
                kprintf("%02x", data[j]);
            kprintf("\n");
        }
    }

    kprintf("kernel_start=0x%x\n", (uint32_t)(uintptr_t)__kernel_start);
    kprintf("kernel_end=0x%x\n", (uint32_t)(uintptr_t)_end);
    kprintf("mbi_overlaps_kernel=%d\n", overlap_found);

    uint32_t code = (uint32_t)cmdline_get_ulong(cmdline, "exit=", 0);
    kprintf("exit_code=%u\n", code);
    kprintf("end\n");
    debug_exit(code);
}
