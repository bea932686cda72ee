/* Polling driver for the COM1 16550A UART (I/O 0x3f8). */
#ifndef GUEST_SERIAL_H
#define GUEST_SERIAL_H

#define COM1_BASE 0x3f8

/* 8N1, divisor 1 (115200 baud), FIFOs enabled and cleared, no interrupts. */
void serial_init(void);
/* Waits for LSR.THRE (bit 5), then writes the byte to THR. Bytes are
 * sent as they are: '\n' is NOT turned into "\r\n". */
void serial_putc(char c);
void serial_puts(const char *s);

#endif
