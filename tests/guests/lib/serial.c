#include "serial.h"
#include "io.h"

#define UART_THR 0 /* transmit holding (DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1 /* interrupt enable (DLAB=0) */
#define UART_DLM 1 /* divisor latch high (DLAB=1) */
#define UART_FCR 2 /* FIFO control */
#define UART_LCR 3 /* line control */
#define UART_MCR 4 /* modem control */
#define UART_LSR 5 /* line status */

#define LSR_THRE 0x20

/* Upper bound on LSR polls per byte: a UART that never reports THRE must
 * not hang the guest; after this many polls the byte is written anyway. */
#define THRE_POLL_LIMIT 1000000u

void serial_init(void)
{
    outb(COM1_BASE + UART_IER, 0x00); /* no interrupts */
    outb(COM1_BASE + UART_LCR, 0x80); /* DLAB=1 */
    outb(COM1_BASE + UART_DLL, 0x01); /* divisor 1 */
    outb(COM1_BASE + UART_DLM, 0x00);
    outb(COM1_BASE + UART_LCR, 0x03); /* DLAB=0, 8 data bits, no parity, 1 stop */
    outb(COM1_BASE + UART_FCR, 0xc7); /* FIFO on, clear RX/TX, 14-byte trigger */
    outb(COM1_BASE + UART_MCR, 0x03); /* DTR, RTS */
}

void serial_putc(char c)
{
    unsigned int n = 0;
    while (!(inb(COM1_BASE + UART_LSR) & LSR_THRE) && n < THRE_POLL_LIMIT) {
        cpu_relax();
        n++;
    }
    outb(COM1_BASE + UART_THR, (uint8_t)c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}
