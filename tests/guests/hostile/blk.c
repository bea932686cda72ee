/* Cases on virtio-blk (virtio 1.2 §5.2): one request queue, each request a
 * 16-byte header, the data, and a status byte the device writes. */
#include "cases.h"

#define BLK_T_OUT      1      /* a write (§5.2.6) */
#define BLK_T_FLUSH    4      /* fdatasync on pyvmm's side: the slow kind */
#define BLK_SECTOR     512
#define BLK_QUEUE_MAX  256
#define BLK_DATA       4096
#define DESCS_PER_REQ  3      /* header, data, status */
#define QUEUE_PAST     0xffff /* a queue_select past the last queue */

#define REQQ_AT   0x00000
#define STATUS_AT 0x04000
#define HEADER_AT 0x08000
#define DATA_AT   0x10000

struct blk_req {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
} __attribute__((packed));

/* A flood's ring and its counts: posted by the driver, taken by the device
 * (its avail_event, §2.7.10), completed (the used idx). */
static struct flood {
    struct virtio_dev *d;
    struct virtq q;
    uint16_t requests;     /* distinct chains, reused round robin */
    uint16_t last_event, last_used;
    uint32_t posted, taken, used, max_in_flight;
} flood;

static void flood_extra(void)
{
    kprintf(" posted=%u taken=%u used=%u inflight=%u max_inflight=%u", flood.posted, flood.taken,
            flood.used, flood.taken - flood.used, flood.max_in_flight);
}

/* EVENT_IDX, so that avail_event tells how far the device has read; a
 * request per three descriptors: writes, each to sectors of its own, and
 * flushes in turn (a flush ignores its data descriptor), so that the disk
 * takes longer to serve them than the driver to post them. */
static void flood_start(void)
{
    struct flood *f = &flood;
    uintptr_t area = device_area(f->d);
    if (!negotiate(f->d, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX))
        verdict(0, "FEATURES_OK refused");
    virtq_init(&f->q, area + REQQ_AT, queue_size(f->d, 0, BLK_QUEUE_MAX));
    f->requests = (uint16_t)(f->q.size / DESCS_PER_REQ);
    for (uint16_t r = 0; r < f->requests; r++) {
        volatile struct virtq_desc *desc = &f->q.desc[r * DESCS_PER_REQ];
        struct blk_req *header = (struct blk_req *)(area + HEADER_AT) + r;
        header->type = (r & 1) ? BLK_T_FLUSH : BLK_T_OUT;
        header->reserved = 0;
        header->sector = (uint64_t)r * (BLK_DATA / BLK_SECTOR);
        desc[0].addr = (uintptr_t)header;
        desc[0].len = sizeof(*header);
        desc[0].flags = VIRTQ_DESC_F_NEXT;
        desc[0].next = (uint16_t)(r * DESCS_PER_REQ + 1);
        desc[1].addr = area + DATA_AT + (uintptr_t)r * BLK_DATA;
        desc[1].len = BLK_DATA;
        desc[1].flags = VIRTQ_DESC_F_NEXT;
        desc[1].next = (uint16_t)(r * DESCS_PER_REQ + 2);
        desc[2].addr = area + STATUS_AT + r;
        desc[2].len = 1;
        desc[2].flags = VIRTQ_DESC_F_WRITE;
    }
    virtq_program(f->d, 0, &f->q);
    driver_ok(f->d);
    f->last_event = f->last_used = 0;
    f->posted = f->taken = f->used = 0;
}

/* Fill the ring up to what the device has read, with heads whether or not
 * their requests are done: §2.7.13.1 lets the driver reuse a buffer only
 * once it is used. The ring itself stays valid (never more than its size
 * ahead of the device), so only the reuse is wrong. */
static void flood_step(void)
{
    struct flood *f = &flood;
    uint16_t used = virtq_used_idx(&f->q);
    uint16_t event = virtq_avail_event(&f->q); /* read second: never behind `used` */
    f->taken += (uint16_t)(event - f->last_event);
    f->used += (uint16_t)(used - f->last_used);
    f->last_event = event;
    f->last_used = used;
    if (f->taken - f->used > f->max_in_flight)
        f->max_in_flight = f->taken - f->used;
    int posted = 0;
    while ((uint16_t)(f->q.next_avail - event) < f->q.size) {
        virtq_post(&f->q, (uint16_t)((f->posted++ % f->requests) * DESCS_PER_REQ));
        posted = 1;
    }
    if (posted)
        virtio_notify(f->d, 0);
}

/* Requests posted without waiting for their completions, for ever. */
void case_blk_flood(void)
{
    flood.d = device_of(VIRTIO_ID_BLOCK);
    heartbeat_extra = flood_extra;
    flood_start();
    for (;;) {
        flood_step();
        iterations++;
        heartbeat();
    }
}

/* The flood for hold= ms, then a reset with the requests still in flight,
 * and again: the VMM must not stall the vCPU for as long as it takes to
 * serve them. */
void case_blk_flood_reset(void)
{
    flood.d = device_of(VIRTIO_ID_BLOCK);
    heartbeat_extra = flood_extra;
    for (;;) {
        flood_start();
        uint32_t end = now_ms() + hold_ms;
        while (now_ms() < end) {
            flood_step();
            iterations++;
            heartbeat();
        }
        uint32_t in_flight = flood.taken - flood.used, start = now_ms();
        virtio_reset(flood.d);
        kprintf("reset took %u ms with %u requests in flight\n", now_ms() - start, in_flight);
    }
}

static struct virtio_dev *select_device;

static void ap_select_loop(void)
{
    for (;;) {
        virtio_select_queue(select_device, 0);
        virtio_select_queue(select_device, QUEUE_PAST);
    }
}

/* One vCPU flips queue_select between queue 0 and none while this one
 * reads and writes the selected queue's fields (§4.1.4.3, §4.2.2). */
void case_queue_select_race(void)
{
    select_device = device_of(VIRTIO_ID_BLOCK);
    negotiate(select_device, VIRTIO_F_VERSION_1);
    if (!start_ap(ap_select_loop))
        verdict(0, "the second vCPU did not start");
    for (;;) {
        virtio_queue_vector(select_device, 0);
        virtio_queue_max(select_device);
        virtio_queue_ready(select_device);
        virtio_queue_set_size(select_device, BLK_QUEUE_MAX);
        iterations++;
        heartbeat();
    }
}
