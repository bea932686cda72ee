/* Symbols from the Multiboot guests' linker script (lib/mb.ld). */
#ifndef GUEST_IMAGE_H
#define GUEST_IMAGE_H

#include <stdint.h>
#include "multiboot.h"

extern char __kernel_start[]; /* first byte of the image (0x100000) */
extern char _end[];           /* one past the last byte, .bss included */

void guest_main(uint32_t magic, struct multiboot_info *mbi);

#endif
