#include <stdint.h>
#include <stddef.h>
#include "printf.h"
#include "serial.h"

/* n / 10 and n % 10 for 64-bit n using only 32-bit divisions, so that a
 * 32-bit build never needs libgcc's __udivdi3/__umoddi3. */
static uint64_t udiv10(uint64_t n, unsigned *rem)
{
    uint32_t hi = (uint32_t)(n >> 32), lo = (uint32_t)n;
    uint32_t qhi = hi / 10, r = hi % 10;
    uint32_t mid = (r << 16) | (lo >> 16);     /* < 10 * 65536 */
    uint32_t q1 = mid / 10;
    uint32_t low = ((mid % 10) << 16) | (lo & 0xffff);
    uint32_t q0 = low / 10;
    *rem = low % 10;
    return ((uint64_t)qhi << 32) | ((uint64_t)q1 << 16) | q0;
}

static void emit_number(uint64_t v, unsigned base, int upper, int neg,
                        int width, char pad)
{
    char buf[24];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";

    if (v == 0)
        buf[n++] = '0';
    while (v) {
        if (base == 16) {
            buf[n++] = digits[v & 0xf];
            v >>= 4;
        } else {
            unsigned rem;
            v = udiv10(v, &rem);
            buf[n++] = digits[rem];
        }
    }
    if (neg && pad == '0') {
        serial_putc('-');
        width--;
    } else if (neg) {
        buf[n++] = '-';
    }
    for (int i = n; i < width; i++)
        serial_putc(pad);
    while (n)
        serial_putc(buf[--n]);
}

void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        for (;;) {
            if (*fmt == 'l') {
                lng++;
                fmt++;
            } else if (*fmt == 'z') {
                lng = sizeof(size_t) == 8 ? 2 : 0;
                fmt++;
            } else {
                break;
            }
        }

        uint64_t u;
        int64_t s;
        switch (*fmt) {
        case '\0':
            return;
        case '%':
            serial_putc('%');
            break;
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int len = 0;
            while (str[len])
                len++;
            for (int i = len; i < width; i++)
                serial_putc(' ');
            while (*str)
                serial_putc(*str++);
            break;
        }
        case 'd':
        case 'i':
            if (lng >= 2)
                s = va_arg(ap, long long);
            else if (lng == 1)
                s = va_arg(ap, long);
            else
                s = va_arg(ap, int);
            if (s < 0)
                emit_number((uint64_t)0 - (uint64_t)s, 10, 0, 1, width, pad);
            else
                emit_number((uint64_t)s, 10, 0, 0, width, pad);
            break;
        case 'u':
        case 'x':
        case 'X':
            if (lng >= 2)
                u = va_arg(ap, unsigned long long);
            else if (lng == 1)
                u = va_arg(ap, unsigned long);
            else
                u = va_arg(ap, unsigned int);
            emit_number(u, *fmt == 'u' ? 10 : 16, *fmt == 'X', 0, width, pad);
            break;
        case 'p':
            serial_putc('0');
            serial_putc('x');
            emit_number((uintptr_t)va_arg(ap, void *), 16, 0, 0, width, pad);
            break;
        default:
            /* Unknown conversion: print it as it was written. */
            serial_putc('%');
            serial_putc(*fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}
