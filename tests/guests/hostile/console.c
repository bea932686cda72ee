/* Cases on virtio-console (virtio 1.2 §5.3), one port: receiveq 0 takes
 * the host's input, transmitq 1 carries the guest's output. */
#include "cases.h"

#define CONSOLE_RX        0
#define CONSOLE_TX        1
#define CONSOLE_QUEUE_MAX 64
#define CONSOLE_BUFFER    4096
#define FLOOD_CHAINS      16

#define RXQ_AT   0x00000
#define TXQ_AT   0x04000
#define TXBUF_AT 0x10000

static uint32_t sent;

static void flood_extra(void)
{
    kprintf(" sent=%u", sent);
}

/* A receive buffer where there is no RAM, found by the host's input (or by
 * a notify) while the driver resets the console from both vCPUs. */
void case_console_reset_race(void)
{
    struct virtio_dev *d = device_of(VIRTIO_ID_CONSOLE);
    uintptr_t area = device_area(d);
    struct virtq rx, tx;
    uint32_t seed = 54321;
    race_device = d;
    if (!start_ap(ap_reset_loop))
        verdict(0, "the second vCPU did not start");
    for (;;) {
        negotiate(d, VIRTIO_F_VERSION_1);
        virtq_init(&rx, area + RXQ_AT, queue_size(d, CONSOLE_RX, CONSOLE_QUEUE_MAX));
        rx.desc[0].addr = OUTSIDE_RAM;
        rx.desc[0].len = CONSOLE_BUFFER;
        rx.desc[0].flags = VIRTQ_DESC_F_WRITE;
        virtq_post(&rx, 0);
        virtq_program(d, CONSOLE_RX, &rx);
        virtq_init(&tx, area + TXQ_AT, queue_size(d, CONSOLE_TX, CONSOLE_QUEUE_MAX));
        virtq_program(d, CONSOLE_TX, &tx);
        driver_ok(d);
        if (iterations & 1)
            virtio_notify(d, CONSOLE_RX);
        spin(random32(&seed) % 8192); /* the host's keystrokes meet the bad buffer */
        virtio_set_status(d, 0);
        iterations++;
        heartbeat();
    }
}

/* Output as fast as the device takes it: 16 chains of the same 4 KiB, each posted
 * again once used (a well-behaved driver; the host is the hostile side
 * here, when nobody reads pyvmm's stdout). */
void case_console_flood(void)
{
    struct virtio_dev *d = device_of(VIRTIO_ID_CONSOLE);
    uintptr_t area = device_area(d);
    struct virtq rx, tx;
    if (!negotiate(d, VIRTIO_F_VERSION_1))
        verdict(0, "FEATURES_OK refused");
    virtq_init(&rx, area + RXQ_AT, queue_size(d, CONSOLE_RX, CONSOLE_QUEUE_MAX));
    virtq_program(d, CONSOLE_RX, &rx);
    virtq_init(&tx, area + TXQ_AT, queue_size(d, CONSOLE_TX, CONSOLE_QUEUE_MAX));
    char *text = (char *)(area + TXBUF_AT);
    for (uint32_t i = 0; i < CONSOLE_BUFFER; i++)
        text[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
    for (uint16_t h = 0; h < FLOOD_CHAINS; h++) {
        tx.desc[h].addr = (uintptr_t)text; /* the same 4 KiB in every chain */
        tx.desc[h].len = CONSOLE_BUFFER;
        tx.desc[h].flags = 0;
        virtq_post(&tx, h);
    }
    virtq_program(d, CONSOLE_TX, &tx);
    driver_ok(d);
    virtio_notify(d, CONSOLE_TX);
    heartbeat_extra = flood_extra;
    uint16_t seen = 0;
    for (;;) {
        int posted = 0;
        while (seen != virtq_used_idx(&tx)) {
            virtq_post(&tx, (uint16_t)virtq_used_id(&tx, seen++));
            sent++;
            posted = 1;
        }
        if (posted)
            virtio_notify(d, CONSOLE_TX);
        iterations++;
        heartbeat();
    }
}
