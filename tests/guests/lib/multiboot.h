/* Multiboot version 1 (specification 0.6.96) definitions: the header a
 * kernel carries (§3.1) and the information structure the boot loader
 * hands over in EBX (§3.3). Addresses are 32-bit physical addresses. */
#ifndef GUEST_MULTIBOOT_H
#define GUEST_MULTIBOOT_H

#define MULTIBOOT_HEADER_MAGIC     0x1BADB002 /* in the kernel image */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002 /* in EAX at entry */

/* Header flags (§3.1.2). */
#define MULTIBOOT_PAGE_ALIGN  0x00000001 /* modules on 4 KiB boundaries */
#define MULTIBOOT_MEMORY_INFO 0x00000002 /* want mem_* and mmap_* */
#define MULTIBOOT_VIDEO_MODE  0x00000004
#define MULTIBOOT_AOUT_KLUDGE 0x00010000

#ifndef __ASSEMBLER__
#include <stdint.h>

/* Information structure flags (§3.3): which fields are valid. */
#define MBI_FLAG_MEM         (1u << 0)  /* mem_lower, mem_upper */
#define MBI_FLAG_BOOTDEV     (1u << 1)  /* boot_device */
#define MBI_FLAG_CMDLINE     (1u << 2)  /* cmdline */
#define MBI_FLAG_MODS        (1u << 3)  /* mods_count, mods_addr */
#define MBI_FLAG_AOUT_SYMS   (1u << 4)
#define MBI_FLAG_ELF_SHDR    (1u << 5)
#define MBI_FLAG_MMAP        (1u << 6)  /* mmap_length, mmap_addr */
#define MBI_FLAG_DRIVES      (1u << 7)
#define MBI_FLAG_CONFIG      (1u << 8)
#define MBI_FLAG_LOADER_NAME (1u << 9)  /* boot_loader_name */
#define MBI_FLAG_APM         (1u << 10)
#define MBI_FLAG_VBE         (1u << 11)

struct multiboot_info {
    uint32_t flags;             /*  0 */
    uint32_t mem_lower;         /*  4: KiB below 1 MiB */
    uint32_t mem_upper;         /*  8: KiB from 1 MiB to the first hole */
    uint32_t boot_device;       /* 12 */
    uint32_t cmdline;           /* 16: physical address of a C string */
    uint32_t mods_count;        /* 20 */
    uint32_t mods_addr;         /* 24: array of struct multiboot_module */
    uint32_t syms[4];           /* 28: a.out symbols or ELF section headers */
    uint32_t mmap_length;       /* 44: bytes of the memory map buffer */
    uint32_t mmap_addr;         /* 48 */
    uint32_t drives_length;     /* 52 */
    uint32_t drives_addr;       /* 56 */
    uint32_t config_table;      /* 60 */
    uint32_t boot_loader_name;  /* 64: physical address of a C string */
    uint32_t apm_table;         /* 68 */
    uint32_t vbe_control_info;  /* 72 */
    uint32_t vbe_mode_info;     /* 76 */
    uint16_t vbe_mode;          /* 80 */
    uint16_t vbe_interface_seg; /* 82 */
    uint16_t vbe_interface_off; /* 84 */
    uint16_t vbe_interface_len; /* 86 */
} __attribute__((packed));      /* 88 bytes */

struct multiboot_module {
    uint32_t mod_start;         /* first byte */
    uint32_t mod_end;           /* one past the last byte */
    uint32_t string;            /* physical address of a C string, or 0 */
    uint32_t reserved;
} __attribute__((packed));

/* One memory map entry. 'size' is the size of the rest of the entry (not
 * counting 'size' itself), so the next entry starts size + 4 bytes on. */
struct multiboot_mmap_entry {
    uint32_t size;
    uint64_t base_addr;
    uint64_t length;
    uint32_t type;              /* 1 = available RAM, anything else reserved */
} __attribute__((packed));

#define MULTIBOOT_MEMORY_AVAILABLE 1

/* Iterate the memory map of an information structure (flags bit 6 set). */
#define mmap_for_each(e, mbi)                                                 \
    for (struct multiboot_mmap_entry *e =                                     \
             (struct multiboot_mmap_entry *)(uintptr_t)(mbi)->mmap_addr;      \
         (uintptr_t)e + sizeof(e->size) <=                                    \
             (uintptr_t)(mbi)->mmap_addr + (mbi)->mmap_length;                \
         e = (struct multiboot_mmap_entry *)((uintptr_t)e + e->size +         \
                                             sizeof(e->size)))

#endif /* !__ASSEMBLER__ */
#endif
