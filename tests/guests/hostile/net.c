/* Cases on virtio-net (virtio 1.2 §5.1): receiveq1 is queue 0, transmitq1
 * queue 1; every buffer starts with the 12-byte virtio_net_hdr_v1. */
#include "cases.h"

#define NET_F_MAC      (1ull << 5)
#define NET_F_STATUS   (1ull << 16)
#define NET_FEATURES   (VIRTIO_F_VERSION_1 | NET_F_MAC | NET_F_STATUS)
#define NET_RX         0
#define NET_TX         1
#define NET_QUEUE_MAX  256
#define NET_HDR_SIZE   12
#define NET_BUFFER     2048   /* a 1514-byte frame and its header fit */
#define NET_RX_BUFFERS 16
#define NET_STATUS     6      /* virtio_net_config.status (§5.1.4) */
#define NET_LINK_UP    1
#define ETH_FRAME      60     /* the shortest Ethernet frame, without FCS */
#define ETH_LOCAL_TYPE 0x88b5 /* IEEE 802 local experimental EtherType */
#define SEND_EVERY_MS  100
#define AP_RESET_GAP_US 2000

/* Where each part lives in the device's area. */
#define RXQ_AT   0x00000
#define TXQ_AT   0x04000
#define TXBUF_AT 0x08000
#define RXBUF_AT 0x10000

struct net {
    struct virtio_dev *d;
    struct virtq rx, tx;
    uintptr_t area;
};

static int link_up(const struct net *n)
{
    return virtio_config8(n->d, NET_STATUS) & NET_LINK_UP;
}

/* A broadcast frame of the local experimental type from the card's MAC. */
static void tx_frame(struct net *n)
{
    uint8_t *buf = (uint8_t *)(n->area + TXBUF_AT);
    memset(buf, 0, NET_HDR_SIZE + ETH_FRAME);
    uint8_t *eth = buf + NET_HDR_SIZE;
    memset(eth, 0xff, 6);
    for (int i = 0; i < 6; i++)
        eth[6 + i] = virtio_config8(n->d, (uint32_t)i);
    eth[12] = ETH_LOCAL_TYPE >> 8;
    eth[13] = ETH_LOCAL_TYPE & 0xff;
    n->tx.desc[0].addr = (uintptr_t)buf;
    n->tx.desc[0].len = NET_HDR_SIZE + ETH_FRAME;
    n->tx.desc[0].flags = 0;
}

/* §3.1.1 and §5.1.5 done right: both queues, receive buffers posted. */
static int net_start(struct net *n)
{
    n->area = device_area(n->d);
    if (!negotiate(n->d, NET_FEATURES))
        return 0;
    virtq_init(&n->rx, n->area + RXQ_AT, queue_size(n->d, NET_RX, NET_QUEUE_MAX));
    for (uint16_t h = 0; h < NET_RX_BUFFERS; h++) {
        n->rx.desc[h].addr = n->area + RXBUF_AT + (uintptr_t)h * NET_BUFFER;
        n->rx.desc[h].len = NET_BUFFER;
        n->rx.desc[h].flags = VIRTQ_DESC_F_WRITE;
        virtq_post(&n->rx, h);
    }
    virtq_program(n->d, NET_RX, &n->rx);
    virtq_init(&n->tx, n->area + TXQ_AT, queue_size(n->d, NET_TX, NET_QUEUE_MAX));
    tx_frame(n);
    virtq_program(n->d, NET_TX, &n->tx);
    driver_ok(n->d);
    virtio_notify(n->d, NET_RX);
    return 1;
}

/* The OR of the status values read over `ms`. */
static uint8_t watch_status(const struct virtio_dev *d, uint32_t ms)
{
    uint8_t seen = 0;
    uint32_t end = now_ms() + ms;
    while (now_ms() < end) {
        seen |= virtio_status(d);
        iterations++;
        heartbeat();
    }
    return seen;
}

/* DRIVER_OK with receiveq1 never set up (§3.1.1 step 7 skipped): the device
 * should set DEVICE_NEEDS_RESET (§2.1.2) and the VM go on; after a reset
 * and a proper start the card works again. */
void case_driver_ok_early(void)
{
    struct net n = {.d = device_of(VIRTIO_ID_NET)};
    n.area = device_area(n.d);
    if (!negotiate(n.d, NET_FEATURES))
        verdict(0, "FEATURES_OK refused");
    virtq_init(&n.tx, n.area + TXQ_AT, queue_size(n.d, NET_TX, NET_QUEUE_MAX));
    virtq_program(n.d, NET_TX, &n.tx);
    driver_ok(n.d);
    uint8_t early = watch_status(n.d, hold_ms);
    kprintf("status after DRIVER_OK without receiveq: 0x%x\n", early);

    net_start(&n);
    uint8_t after = watch_status(n.d, hold_ms / 2);
    kprintf("status after a reset and a proper start: 0x%x\n", after);
    int flagged = (early & VIRTIO_STATUS_NEEDS_RESET) != 0;
    int works = (after & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET)) ==
                VIRTIO_STATUS_DRIVER_OK;
    if (!flagged)
        verdict(0, "DRIVER_OK without a receive queue was not DEVICE_NEEDS_RESET");
    verdict(works, works ? "DEVICE_NEEDS_RESET, then the card works after a reset"
                         : "the card stays broken after a reset and a proper start");
}

struct virtio_dev *race_device;

/* Paced (0-2 ms apart): a vCPU that exits back to back would hold the
 * VMM's interpreter lock and only slow the other vCPU down. */
void ap_reset_loop(void)
{
    uint32_t seed = 0x9e3779b9u;
    for (;;) {
        virtio_set_status(race_device, 0);
        delay_us(random32(&seed) % AP_RESET_GAP_US);
    }
}

/* A receive buffer where there is no RAM makes the I/O thread handle a
 * receive queue fault while the driver resets the card, from this vCPU
 * and from the second one: the VMM's locks must not deadlock. */
void case_net_reset_race(void)
{
    struct net n = {.d = device_of(VIRTIO_ID_NET)};
    uint32_t seed = 12345;
    n.area = device_area(n.d);
    race_device = n.d;
    if (!start_ap(ap_reset_loop))
        verdict(0, "the second vCPU did not start");
    for (;;) {
        negotiate(n.d, NET_FEATURES);
        virtq_init(&n.rx, n.area + RXQ_AT, queue_size(n.d, NET_RX, NET_QUEUE_MAX));
        n.rx.desc[0].addr = OUTSIDE_RAM;
        n.rx.desc[0].len = NET_BUFFER;
        n.rx.desc[0].flags = VIRTQ_DESC_F_WRITE;
        virtq_post(&n.rx, 0);
        virtq_program(n.d, NET_RX, &n.rx);
        virtq_init(&n.tx, n.area + TXQ_AT, queue_size(n.d, NET_TX, NET_QUEUE_MAX));
        virtq_program(n.d, NET_TX, &n.tx);
        driver_ok(n.d);
        virtio_notify(n.d, NET_RX);
        spin(random32(&seed) % 2048);
        virtio_set_status(n.d, 0);
        iterations++;
        heartbeat();
    }
}

static struct net link_net;
static uint32_t rx_frames, tx_frames;

static void link_extra(void)
{
    kprintf(" link=%d rx=%u tx=%u status=0x%x", link_up(&link_net), rx_frames, tx_frames,
            virtio_status(link_net.d));
}

/* A working card, a frame sent every 100 ms and receive buffers recycled,
 * while the host deletes the TAP under it: the link should go down
 * (§5.1.4 status) and the VM run on. */
void case_net_link(void)
{
    struct net *n = &link_net;
    n->d = device_of(VIRTIO_ID_NET);
    if (!net_start(n))
        verdict(0, "FEATURES_OK refused");
    int was_up = link_up(n), reported = 0;
    kprintf("net link %s at start\n", was_up ? "up" : "down");
    heartbeat_extra = link_extra;
    uint16_t rx_seen = 0;
    uint32_t next_send = now_ms();
    for (;;) {
        while (rx_seen != virtq_used_idx(&n->rx)) {
            virtq_post(&n->rx, (uint16_t)virtq_used_id(&n->rx, rx_seen++));
            rx_frames++;
            virtio_notify(n->d, NET_RX);
        }
        if (now_ms() >= next_send && virtq_used_idx(&n->tx) == n->tx.next_avail) {
            virtq_post(&n->tx, 0);
            virtio_notify(n->d, NET_TX);
            tx_frames++;
            next_send = now_ms() + SEND_EVERY_MS;
        }
        if (!reported && was_up && !link_up(n)) {
            report(1, "net link down after the TAP went away");
            reported = 1;
        }
        iterations++;
        heartbeat();
    }
}
