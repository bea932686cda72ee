/* echo: types back what it receives on COM1 (Multiboot v1, ELF32).
 *
 * Command-line token mode=poll (the default) or mode=irq. It prints
 *
 *     echo ready (<mode>)
 *
 * then sends every received byte back, letters a-z turned into A-Z. On
 * 'q' (echoed as 'Q') it prints
 *
 *     irqs=<interrupts taken on IRQ 4>      irq mode only, always > 0
 *     bye count=<bytes received, the q included>
 *
 * each on its own line, and exits through the debug-exit port with that
 * count as the code. Other exit codes: 0x7d (irq mode: the UART's
 * interrupt never arrived), 0x7e (CPU exception, see intr.c), 0x7f
 * (unknown mode, after "echo: unknown mode").
 *
 * mode=poll waits for LSR.DR and reads RBR, and writes with serial_putc
 * (LSR.THRE polling).
 *
 * mode=irq is interrupt driven in both directions. The PICs send IRQ 4 to
 * vector 0x24 (intr.c); the UART has IER = ERBFI | ETBEI and MCR.OUT2 set.
 * The handler reads IIR until it reports no interrupt pending. On
 * received data it drains RBR into rx_ring while LSR.DR is set; on "THR
 * empty" it moves up to a FIFO's worth of tx_ring to THR. That is the
 * only place that writes THR. The main loop sleeps in sti; hlt, takes
 * bytes from rx_ring and puts its output into tx_ring. Both rings are
 * bounded: when rx_ring is full, ERBFI is turned off until the main loop
 * has made room, so the UART keeps the rest; when tx_ring is full, the
 * main loop sleeps until the transmitter has made room.
 *
 * The PIC is edge triggered, so an IRQ is only seen when the UART's line
 * rises. Two consequences:
 * - The handler loops until IIR reports nothing pending: the line is then
 *   low, and the next event raises it again.
 * - Once the handler has found tx_ring empty it stops writing THR, so no
 *   "THR empty" follows. To start the transmitter again the main loop
 *   clears and sets IER.ETBEI, which (on a 16550A as on pyvmm's model)
 *   raises "THR empty" afresh because THR is empty.
 *
 * Handlers return with popfl; sti; ret rather than iret unless the
 * command line has iret=1 (intr.h explains why). */
#include "guest.h"
#include "image.h"
#include "intr.h"

/* 16550A registers (offsets from COM1_BASE, DLAB = 0) and bits. */
#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_IIR 2
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6

#define IER_ERBFI 0x01 /* received data available */
#define IER_ETBEI 0x02 /* transmitter holding register empty */

#define IIR_NO_INT    0x01 /* bit 0 set: nothing pending */
#define IIR_ID_MASK   0x0e
#define IIR_MODEM     0x00
#define IIR_THRE      0x02
#define IIR_RX_DATA   0x04
#define IIR_LINE      0x06
#define IIR_RX_TIMEOUT 0x0c

#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT2 0x08 /* gates the UART's interrupt onto IRQ 4 on a PC */

#define LSR_DR   0x01
#define LSR_TEMT 0x40

#define COM1_IRQ        4
#define TX_FIFO_SIZE    16   /* bytes THR takes after "THR empty" */
#define RX_RING_SIZE    64   /* powers of two */
#define TX_RING_SIZE    256
#define IIR_ROUNDS      512  /* IIR reads per interrupt before re-arming */
#define FIRST_IRQ_POLLS 10000000u
#define TEMT_POLLS      1000000u

#define EXIT_NO_IRQ   0x7d
#define EXIT_BAD_MODE 0x7f

enum mode { MODE_POLL, MODE_IRQ };

static enum mode mode;

/* Shared between the IRQ 4 handler and the main loop, which touches them
 * only with interrupts off. Ring indices run freely; used = head - tail. */
static volatile uint8_t rx_ring[RX_RING_SIZE];
static volatile uint32_t rx_head, rx_tail;
static volatile uint8_t tx_ring[TX_RING_SIZE];
static volatile uint32_t tx_head, tx_tail;
static volatile int tx_active;  /* a "THR empty" interrupt is due */
static volatile int rx_stopped; /* ERBFI off because rx_ring is full */
static volatile uint8_t ier;    /* what IER holds */
static volatile uint32_t irq_count;

static void uart_set_ier(uint8_t value)
{
    ier = value;
    outb(COM1_BASE + UART_IER, value);
}

/* --- the IRQ 4 handler ------------------------------------------------ */

static void uart_receive(void)
{
    while (rx_head - rx_tail < RX_RING_SIZE) {
        if (!(inb(COM1_BASE + UART_LSR) & LSR_DR))
            return;
        rx_ring[rx_head % RX_RING_SIZE] = inb(COM1_BASE + UART_RBR);
        rx_head++;
    }
    /* Full: leave the rest in the UART until the main loop catches up. */
    rx_stopped = 1;
    uart_set_ier(ier & ~IER_ERBFI);
}

static void uart_transmit(void)
{
    if (tx_head == tx_tail) {
        tx_active = 0;
        return;
    }
    for (unsigned n = 0; n < TX_FIFO_SIZE && tx_head != tx_tail; n++) {
        outb(COM1_BASE + UART_THR, tx_ring[tx_tail % TX_RING_SIZE]);
        tx_tail++;
    }
}

static void uart_interrupt(void)
{
    irq_count++;
    for (unsigned round = 0; round < IIR_ROUNDS; round++) {
        uint8_t iir = inb(COM1_BASE + UART_IIR);
        if (iir & IIR_NO_INT)
            return;
        switch (iir & IIR_ID_MASK) {
        case IIR_RX_DATA:
        case IIR_RX_TIMEOUT:
            uart_receive();
            break;
        case IIR_THRE:
            uart_transmit();
            break;
        case IIR_LINE:
            (void)inb(COM1_BASE + UART_LSR);
            break;
        default:
            (void)inb(COM1_BASE + UART_MSR);
            break;
        }
    }
    /* Still busy: the line may never have dropped, so the edge-triggered
     * PIC would see no new edge. Drop it and raise it again. */
    uint8_t enabled = ier;
    uart_set_ier(0);
    uart_set_ier(enabled);
}

/* --- the main loop's side (interrupts off in the *_locked functions) --- */

static void tx_start_locked(void)
{
    tx_active = 1;
    uart_set_ier(ier & ~IER_ETBEI);
    uart_set_ier(ier | IER_ETBEI);
}

static void irq_putc(char c)
{
    cli();
    while (tx_head - tx_tail == TX_RING_SIZE) {
        if (!tx_active)
            tx_start_locked();
        wait_for_interrupt();
    }
    tx_ring[tx_head % TX_RING_SIZE] = (uint8_t)c;
    tx_head++;
    if (!tx_active)
        tx_start_locked();
    sti();
}

static uint8_t irq_getc(void)
{
    cli();
    while (rx_head == rx_tail)
        wait_for_interrupt();
    uint8_t c = rx_ring[rx_tail % RX_RING_SIZE];
    rx_tail++;
    if (rx_stopped) {
        rx_stopped = 0;
        uart_set_ier(ier | IER_ERBFI);
    }
    sti();
    return c;
}

/* Waits until the handler has sent everything and the UART has shifted
 * the last byte out. */
static void irq_flush(void)
{
    cli();
    while (tx_active)
        wait_for_interrupt();
    for (unsigned n = 0; n < TEMT_POLLS; n++)
        if (inb(COM1_BASE + UART_LSR) & LSR_TEMT)
            break;
}

static void irq_setup(int with_iret)
{
    serial_init(); /* 8N1, FIFOs, IER = 0 */
    intr_init(with_iret);
    intr_set_irq_handler(COM1_IRQ, uart_interrupt);
    outb(COM1_BASE + UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    /* Enabling ETBEI with THR empty raises "THR empty" at once: that first
     * interrupt proves the path UART -> PIC -> CPU works. */
    tx_active = 1;
    uart_set_ier(IER_ERBFI | IER_ETBEI);
    sti();
    for (uint32_t n = 0; irq_count == 0 && n < FIRST_IRQ_POLLS; n++)
        cpu_relax();
    if (irq_count == 0) {
        cli();
        kprintf("echo: no interrupt from the UART (IRQ %d)\n", COM1_IRQ);
        debug_exit(EXIT_NO_IRQ);
    }
}

/* --- both modes ---------------------------------------------------------- */

static void put(char c)
{
    if (mode == MODE_IRQ)
        irq_putc(c);
    else
        serial_putc(c);
}

static void put_str(const char *s)
{
    while (*s)
        put(*s++);
}

static void put_uint(uint32_t v)
{
    char digits[10];
    unsigned n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put(digits[--n]);
}

static uint8_t get(void)
{
    if (mode == MODE_IRQ)
        return irq_getc();
    while (!(inb(COM1_BASE + UART_LSR) & LSR_DR))
        cpu_relax();
    return inb(COM1_BASE + UART_RBR);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The value of the first "mode=" token: 0 poll, 1 irq, -1 anything else. */
static int parse_mode(const char *cmdline)
{
    static const char key[] = "mode=";
    const char *p = cmdline;
    while (p && *p) {
        while (is_space(*p))
            p++;
        if (strncmp(p, key, sizeof(key) - 1) == 0) {
            const char *v = p + sizeof(key) - 1;
            size_t len = 0;
            while (v[len] && !is_space(v[len]))
                len++;
            if (len == 4 && strncmp(v, "poll", 4) == 0)
                return MODE_POLL;
            if (len == 3 && strncmp(v, "irq", 3) == 0)
                return MODE_IRQ;
            return -1;
        }
        while (*p && !is_space(*p))
            p++;
    }
    return MODE_POLL;
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    const char *cmdline = NULL;
    if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
        cmdline = (const char *)(uintptr_t)mbi->cmdline;

    int parsed = parse_mode(cmdline);
    if (parsed < 0) {
        serial_init();
        kprintf("echo: unknown mode\n");
        debug_exit(EXIT_BAD_MODE);
    }
    mode = (enum mode)parsed;
    if (mode == MODE_IRQ)
        irq_setup(cmdline_get_ulong(cmdline, "iret=", 0) != 0);
    else
        serial_init();
    put_str(mode == MODE_IRQ ? "echo ready (irq)\n" : "echo ready (poll)\n");

    uint32_t count = 0;
    for (;;) {
        uint8_t c = get();
        count++;
        put(c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : (char)c);
        if (c == 'q')
            break;
    }
    if (mode == MODE_IRQ) {
        put_str("\nirqs=");
        put_uint(irq_count);
    }
    put_str("\nbye count=");
    put_uint(count);
    put('\n');
    if (mode == MODE_IRQ)
        irq_flush();
    debug_exit(count);
}
