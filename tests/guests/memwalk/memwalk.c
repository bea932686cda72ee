/* memwalk: writes and verifies a signature in every usable RAM page
 * (Multiboot v1, ELF32; paging stays off so only memory below 4 GiB is
 * reachable).
 *
 * Usable pages are the whole 4 KiB pages of the type-1 regions of the
 * multiboot memory map (or, without a map, of [1 MiB, 1 MiB + mem_upper
 * KiB)), clipped to 4 GiB, minus: everything below 1 MiB, the guest image
 * [__kernel_start, _end) (which holds the stack), and every page holding
 * part of the information structure, the command line, the boot loader
 * name, the memory map, the module array, a module or a module string.
 *
 * Pass 1 writes two 32-bit words at the start of each page, both derived
 * from the page address; pass 2 reads every page back. Output:
 *
 *     memwalk pages=<n> bytes=<n*4096> top=0x<end of the highest usable region>
 *     memwalk ok                       -> debug exit 0
 * or
 *     memwalk bad at 0x<page address>  -> debug exit 1 (first bad page)
 *
 * If there is no usable memory information at all it prints
 * "memwalk no memory map" and exits with 2; with a wrong boot magic,
 * "memwalk bad magic" and exit 3. Numbers: decimal, addresses lowercase
 * hex. Only one word pair per page is touched, so this stays fast even
 * where every guest memory access is slow. */
#include "guest.h"
#include "image.h"

#define PAGE_SIZE  4096u
#define LOW_LIMIT  0x100000ull          /* skip the first 1 MiB */
#define ADDR_LIMIT 0x100000000ull       /* paging off: 32-bit addresses */
#define SIG_XOR    0x5a17c0deu
#define SIG_ADD    0x9e3779b9u

struct range {
    uint64_t start, end;                /* [start, end) */
};

#define MAX_EXCLUDE 160
#define MAX_REGIONS 128

static struct range excl[MAX_EXCLUDE];
static unsigned n_excl;
static struct range regions[MAX_REGIONS];
static unsigned n_regions;

static void exclude(uint64_t start, uint64_t len)
{
    if (len == 0 || n_excl == MAX_EXCLUDE)
        return;
    /* Whole pages: round outwards. */
    excl[n_excl].start = start & ~(uint64_t)(PAGE_SIZE - 1);
    excl[n_excl].end = (start + len + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    n_excl++;
}

static void exclude_string(uint32_t addr)
{
    if (addr)
        exclude(addr, strlen((const char *)(uintptr_t)addr) + 1);
}

static void add_region(uint64_t base, uint64_t len)
{
    uint64_t start = base, end = base + len;

    if (end < start || end > ADDR_LIMIT)    /* overflow or above 4 GiB */
        end = ADDR_LIMIT;
    if (start < LOW_LIMIT)
        start = LOW_LIMIT;
    start = (start + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    end &= ~(uint64_t)(PAGE_SIZE - 1);
    if (start >= end || n_regions == MAX_REGIONS)
        return;
    regions[n_regions].start = start;
    regions[n_regions].end = end;
    n_regions++;
}

/* If page p lies in an excluded range, returns that range's end (the next
 * page worth looking at); otherwise 0. */
static uint64_t excluded_until(uint64_t p)
{
    for (unsigned i = 0; i < n_excl; i++)
        if (p >= excl[i].start && p < excl[i].end)
            return excl[i].end;
    return 0;
}

static inline uint32_t sig0(uint32_t a) { return a ^ SIG_XOR; }
static inline uint32_t sig1(uint32_t a) { return ~a + SIG_ADD; }

/* Walks every usable page; writes (pass 0) or checks (pass 1). Returns
 * the number of pages visited, or sets *bad to the first bad page. */
static uint32_t walk(int check, uint64_t *bad)
{
    uint32_t pages = 0;

    for (unsigned r = 0; r < n_regions; r++) {
        uint64_t p = regions[r].start;
        while (p < regions[r].end) {
            uint64_t skip = excluded_until(p);
            if (skip) {
                p = skip;
                continue;
            }
            uint32_t a = (uint32_t)p;
            volatile uint32_t *w = (volatile uint32_t *)(uintptr_t)a;
            if (!check) {
                w[0] = sig0(a);
                w[1] = sig1(a);
            } else if (w[0] != sig0(a) || w[1] != sig1(a)) {
                *bad = p;
                return pages;
            }
            pages++;
            p += PAGE_SIZE;
        }
    }
    return pages;
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    uint64_t top = 0;

    serial_init();
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        kprintf("memwalk bad magic\n");
        debug_exit(3);
    }

    /* What must not be overwritten. */
    exclude((uintptr_t)__kernel_start,
            (uintptr_t)_end - (uintptr_t)__kernel_start);
    exclude((uintptr_t)mbi, sizeof(*mbi));
    if (mbi->flags & MBI_FLAG_CMDLINE)
        exclude_string(mbi->cmdline);
    if (mbi->flags & MBI_FLAG_LOADER_NAME)
        exclude_string(mbi->boot_loader_name);
    if (mbi->flags & MBI_FLAG_MMAP)
        exclude(mbi->mmap_addr, mbi->mmap_length);
    if ((mbi->flags & MBI_FLAG_MODS) && mbi->mods_count) {
        struct multiboot_module *mods =
            (struct multiboot_module *)(uintptr_t)mbi->mods_addr;
        exclude(mbi->mods_addr, (uint64_t)mbi->mods_count * sizeof(*mods));
        for (uint32_t i = 0; i < mbi->mods_count && n_excl + 2 <= MAX_EXCLUDE; i++) {
            if (mods[i].mod_end > mods[i].mod_start)
                exclude(mods[i].mod_start, mods[i].mod_end - mods[i].mod_start);
            exclude_string(mods[i].string);
        }
    }

    /* Where to write. */
    if (mbi->flags & MBI_FLAG_MMAP) {
        mmap_for_each(e, mbi) {
            if (e->type != MULTIBOOT_MEMORY_AVAILABLE || e->base_addr >= ADDR_LIMIT)
                continue;
            uint64_t end = e->base_addr + e->length;
            if (end > ADDR_LIMIT || end < e->base_addr)
                end = ADDR_LIMIT;
            if (end > top)
                top = end;
            add_region(e->base_addr, e->length);
        }
    } else if (mbi->flags & MBI_FLAG_MEM) {
        top = LOW_LIMIT + (uint64_t)mbi->mem_upper * 1024;
        add_region(LOW_LIMIT, (uint64_t)mbi->mem_upper * 1024);
    } else {
        kprintf("memwalk no memory map\n");
        debug_exit(2);
    }

    uint64_t bad = 0;
    uint32_t pages = walk(0, &bad);
    uint32_t checked = walk(1, &bad);

    kprintf("memwalk pages=%u bytes=%llu top=0x%llx\n", pages,
            (unsigned long long)pages * PAGE_SIZE, (unsigned long long)top);
    if (checked != pages) {
        kprintf("memwalk bad at 0x%llx\n", (unsigned long long)bad);
        debug_exit(1);
    }
    kprintf("memwalk ok\n");
    debug_exit(0);
}
