/* Cases on every device's status, feature and queue registers (virtio 1.2
 * §2.1, §2.2, §3.1.1), and the two that need no virtio at all. */
#include "cases.h"

#define FUZZ_SPAN   0x10000u /* rings and buffers stay in this much of a device's area */
#define FUZZ_OPS    14
#define BAD_SELECT  0xffff   /* a queue past the last */

static const uint8_t status_steps[] = {
    VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_FEATURES_OK,
    VIRTIO_STATUS_DRIVER_OK,
};

uint16_t queue_size(const struct virtio_dev *d, uint16_t index, uint16_t limit)
{
    virtio_select_queue(d, index);
    uint16_t max = virtio_queue_max(d);
    return max && max < limit ? max : limit;
}

/* Nothing but heartbeats: the baseline the others are measured against. */
void case_idle(void)
{
    for (;;) {
        heartbeat();
        cpu_relax();
    }
}

/* §3.1.1 in the wrong order, on every device in turn: DRIVER_OK without
 * FEATURES_OK, then a reset. Each round is one "needs reset" for the
 * device to report; the host's log should not grow by a line per round. */
void case_status_storm(void)
{
    const uint8_t ack = VIRTIO_STATUS_ACKNOWLEDGE, driver = ack | VIRTIO_STATUS_DRIVER;
    for (;;) {
        for (int i = 0; i < device_count; i++) {
            virtio_set_status(&devices[i], 0);
            virtio_set_status(&devices[i], ack);
            virtio_set_status(&devices[i], driver);
            virtio_set_status(&devices[i], driver | VIRTIO_STATUS_DRIVER_OK);
        }
        iterations++;
        heartbeat();
    }
}

/* Queue 0 of every device made ready with its rings where there is no RAM
 * (§2.7: the device checks them at enable), again and again. */
void case_ring_storm(void)
{
    for (;;) {
        for (int i = 0; i < device_count; i++) {
            const struct virtio_dev *d = &devices[i];
            negotiate(d, VIRTIO_F_VERSION_1);
            virtio_select_queue(d, 0);
            virtio_queue_set_rings(d, OUTSIDE_RAM, OUTSIDE_RAM + 0x1000, OUTSIDE_RAM + 0x2000);
            virtio_queue_enable(d);
        }
        iterations++;
        heartbeat();
    }
}

/* A random address in the first FUZZ_SPAN bytes of `area`, aligned. */
static uintptr_t fuzz_addr(uintptr_t area, uint32_t r, uint32_t align)
{
    return area + ((r % FUZZ_SPAN) & ~(align - 1));
}

/* One random register write (or a write to what the rings may hold) on a
 * random device. Everything a device could write to stays in that
 * device's area: ring addresses and descriptor buffers are drawn inside
 * it, and random stores never touch a descriptor's address field. */
static void fuzz_once(uint32_t *seed)
{
    uint32_t r = random32(seed), s = random32(seed);
    const struct virtio_dev *d = &devices[r % (uint32_t)device_count];
    uintptr_t area = device_area(d);
    r /= (uint32_t)device_count;
    switch (r % FUZZ_OPS) {
    case 0:
        virtio_set_status(d, 0);
        break;
    case 1:
        virtio_set_status(d, (uint8_t)s);
        break;
    case 2:
        virtio_set_status(d, virtio_status(d) | status_steps[s % sizeof(status_steps)]);
        break;
    case 3: {
        uint64_t bits = (uint64_t)random32(seed) << 32 | s;
        virtio_set_driver_features(d, (r & 0x100) ? virtio_device_features(d) & bits : bits);
        break;
    }
    case 4:
        virtio_device_features(d);
        break;
    case 5:
        virtio_select_queue(d, (s & 0x10) ? BAD_SELECT : (uint16_t)(s % VIRTIO_MAX_QUEUES));
        break;
    case 6:
        virtio_queue_set_size(d, (s & 0x10000) ? (uint16_t)(1u << (s % 16)) : (uint16_t)s);
        break;
    case 7:
        if (s % 8 == 0)
            virtio_queue_set_rings(d, OUTSIDE_RAM, fuzz_addr(area, s, 2), fuzz_addr(area, r, 4));
        else
            virtio_queue_set_rings(d, fuzz_addr(area, s, 16), fuzz_addr(area, s >> 8, 2),
                                   fuzz_addr(area, r >> 4, 4));
        break;
    case 8:
        virtio_queue_enable(d);
        break;
    case 9:
        virtio_notify(d, (uint16_t)(s % VIRTIO_MAX_QUEUES));
        break;
    case 10:
        virtio_config_write8(d, s % 64, (uint8_t)(s >> 8));
        virtio_config8(d, (s >> 16) % 64);
        break;
    case 11:
        virtio_queue_vector(d, (s & 0x10) ? 0xffff : (uint16_t)(s % 8));
        break;
    case 12: /* a ring's idx or entry, or a descriptor's len, flags or next: the
              * upper half of each 16 bytes, never a (16-byte aligned) address */
        *(volatile uint16_t *)(fuzz_addr(area, s, 16) + 8 + ((s >> 16) % 4) * 2) = (uint16_t)r;
        break;
    default: { /* a descriptor whose buffer is inside the area */
        volatile struct virtq_desc *desc = (volatile struct virtq_desc *)fuzz_addr(area, s, 16);
        desc->addr = fuzz_addr(area, r, 1);
        desc->len = s % 4096;
        desc->flags = (uint16_t)(r % 8);
        desc->next = (uint16_t)((s >> 12) % 256);
        break;
    }
    }
}

/* Random writes to every register, seeded by seed=: survival only. */
void case_status_fuzz(void)
{
    uint32_t seed = fuzz_seed;
    if (!device_count)
        verdict(0, "no virtio device");
    for (;;) {
        fuzz_once(&seed);
        iterations++;
        heartbeat();
    }
}

/* COM1 written as fast as the guest can (run with nobody reading stdout). */
void case_serial_flood(void)
{
    for (;;)
        kprintf("hostile serial flood line %u\n", iterations++);
}
