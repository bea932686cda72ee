/* Minimal string helpers. memcpy/memset/memmove/memcmp are also what gcc
 * may call on its own for struct copies, so they must exist. */
#ifndef GUEST_STRING_H
#define GUEST_STRING_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Looks through a space-separated command line for the first token
 * "KEY=VALUE" (KEY given with its '=' e.g. "exit=") and returns VALUE
 * parsed as a decimal or 0x-prefixed hex number; returns def if there is
 * no such token or the value is not a number. cmdline may be NULL. */
unsigned long cmdline_get_ulong(const char *cmdline, const char *key,
                                unsigned long def);

#endif
