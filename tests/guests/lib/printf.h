/* A tiny printf that writes straight to COM1 (see serial.h).
 *
 * Conversions: %s %c %d %i %u %x %X %p %%, with the length modifiers
 * l, ll and z (so %lx, %llx, %llu, %zu ...), an optional '0' flag and a
 * field width (e.g. %02x, %08llx). Hex is printed without "0x": write the
 * prefix in the format string. No floating point. 64-bit numbers are
 * formatted without libgcc helpers, so this also works in -m32 builds. */
#ifndef GUEST_PRINTF_H
#define GUEST_PRINTF_H

#include <stdarg.h>

void kvprintf(const char *fmt, va_list ap);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
