#include "string.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        d += n;
        s += n;
        while (n--)
            *--d = *--s;
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int digit_value(char c, unsigned base)
{
    unsigned v;
    if (c >= '0' && c <= '9')
        v = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
        v = (unsigned)(c - 'a') + 10;
    else if (c >= 'A' && c <= 'F')
        v = (unsigned)(c - 'A') + 10;
    else
        return -1;
    return v < base ? (int)v : -1;
}

unsigned long cmdline_get_ulong(const char *cmdline, const char *key,
                                unsigned long def)
{
    size_t klen = strlen(key);
    const char *p = cmdline;

    if (!p)
        return def;
    for (;;) {
        while (is_space(*p))
            p++;
        if (!*p)
            return def;
        if (strncmp(p, key, klen) == 0) {
            const char *v = p + klen;
            unsigned base = 10;
            unsigned long val = 0;
            int any = 0, d;
            if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
                base = 16;
                v += 2;
            }
            while ((d = digit_value(*v, base)) >= 0) {
                val = val * base + (unsigned long)d;
                any = 1;
                v++;
            }
            if (any && (*v == '\0' || is_space(*v)))
                return val;
        }
        while (*p && !is_space(*p))
            p++;
    }
}
