/* long64-shim: TEST AID ONLY, not one of the guests pyvmm boots.
 *
 * QEMU's -kernel cannot start a plain ELF64 in long mode, so to run the
 * long64 guest under QEMU (qemu-check.sh) this Multiboot v1 kernel takes
 * it as module 0 (-initrd long64.elf) and starts it in the state
 * docs/boot.md promises for 64-bit ELF images:
 *   - PT_LOAD segments copied to their physical addresses, .bss zeroed;
 *   - long mode, paging on, identity map of the low 4 GiB (2 MiB pages);
 *   - CS = 0x10 (64-bit code), DS/ES/SS/FS/GS = 0x18, interrupts off;
 *   - RSI = a zeroed boot_params page at 0x7000 holding the e820 table
 *     (copied from the multiboot memory map) and cmd_line_ptr, which
 *     points to this shim's own command line minus its first word (the
 *     kernel file name QEMU puts there). */
#include "guest.h"
#include "image.h"

#define BP_ADDR  0x7000u
#define CMD_ADDR 0x6000u    /* at most 4 KiB, below BP_ADDR */

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));

struct __attribute__((packed)) elf64_ehdr {
    uint8_t ident[16];
    uint16_t type, machine;
    uint32_t version;
    uint64_t entry, phoff, shoff;
    uint32_t flags;
    uint16_t ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};

struct __attribute__((packed)) elf64_phdr {
    uint32_t type, flags;
    uint64_t offset, vaddr, paddr, filesz, memsz, align;
};

#define PT_LOAD 1
#define EM_X86_64 62

/* long64-shim-enter.S: switches to long mode and jumps to entry. */
void shim_enter64(uint32_t pml4_addr, uint32_t entry, uint32_t boot_params)
    __attribute__((noreturn));

static void __attribute__((noreturn)) fail(const char *why)
{
    kprintf("long64-shim: %s\n", why);
    debug_exit(0x7e);
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    serial_init();
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
        fail("bad multiboot magic");
    if (!(mbi->flags & MBI_FLAG_MODS) || mbi->mods_count < 1)
        fail("no module (use -initrd long64.elf)");

    /* Read everything from the multiboot structures before writing into
     * low memory: QEMU keeps them there. */
    const char *c = (mbi->flags & MBI_FLAG_CMDLINE)
                        ? (const char *)(uintptr_t)mbi->cmdline : "";
    while (*c && *c != ' ')
        c++;
    while (*c == ' ')
        c++;
    static char cmdline[4096];
    size_t n = strlen(c);
    if (n >= sizeof(cmdline))
        n = sizeof(cmdline) - 1;
    memcpy(cmdline, c, n);

    static uint8_t e820[128 * 20];
    unsigned count = 0;
    if (mbi->flags & MBI_FLAG_MMAP) {
        mmap_for_each(e, mbi) {
            if (count == 128)
                break;
            memcpy(e820 + count * 20, &e->base_addr, 8);
            memcpy(e820 + count * 20 + 8, &e->length, 8);
            memcpy(e820 + count * 20 + 16, &e->type, 4);
            count++;
        }
    }

    const struct multiboot_module *m =
        (const struct multiboot_module *)(uintptr_t)mbi->mods_addr;
    const uint8_t *img = (const uint8_t *)(uintptr_t)m->mod_start;
    const struct elf64_ehdr *eh = (const struct elf64_ehdr *)img;
    if (memcmp(eh->ident, "\177ELF", 4) || eh->ident[4] != 2 ||
        eh->machine != EM_X86_64)
        fail("module 0 is not an x86-64 ELF64");
    for (unsigned i = 0; i < eh->phnum; i++) {
        const struct elf64_phdr *ph =
            (const struct elf64_phdr *)(img + eh->phoff + i * eh->phentsize);
        if (ph->type != PT_LOAD)
            continue;
        if (ph->paddr + ph->memsz > 0x100000000ull ||
            (ph->paddr < (uintptr_t)_end &&
             ph->paddr + ph->memsz > (uintptr_t)__kernel_start))
            fail("segment overlaps the shim or lies above 4 GiB");
        uint8_t *dst = (uint8_t *)(uintptr_t)ph->paddr;
        memmove(dst, img + ph->offset, (size_t)ph->filesz);
        memset(dst + ph->filesz, 0, (size_t)(ph->memsz - ph->filesz));
    }

    uint8_t *bp = (uint8_t *)BP_ADDR;
    memset(bp, 0, 4096);
    memcpy((char *)CMD_ADDR, cmdline, n + 1);
    *(uint32_t *)(bp + 0x228) = CMD_ADDR;
    bp[0x1e8] = (uint8_t)count;
    memcpy(bp + 0x2d0, e820, count * 20);

    pml4[0] = (uint32_t)(uintptr_t)pdpt | 0x3;          /* present, writable */
    for (unsigned g = 0; g < 4; g++) {
        pdpt[g] = (uint32_t)(uintptr_t)pd[g] | 0x3;
        for (unsigned j = 0; j < 512; j++)
            pd[g][j] = ((uint64_t)g << 30) | ((uint64_t)j << 21) | 0x83; /* 2 MiB */
    }
    shim_enter64((uint32_t)(uintptr_t)pml4, (uint32_t)eh->entry, BP_ADDR);
}
