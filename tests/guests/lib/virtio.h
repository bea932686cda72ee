/* A small virtio 1.2 driver core for test guests (paging off, polling): finds
 * the devices on virtio-pci (§4.1, modern only) or virtio-mmio (§4.2,
 * version 2), reaches their registers through one interface, and lays out
 * split virtqueues (§2.7). What a driver does with them, right or wrong, is
 * the guest's business: nothing here checks the device's answers. */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include <stdint.h>

/* Device status bits (§2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER      0x02
#define VIRTIO_STATUS_DRIVER_OK   0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

/* Reserved feature bits (§6). */
#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTIO_F_EVENT_IDX     (1ull << 29)
#define VIRTIO_F_VERSION_1     (1ull << 32)

/* Device IDs (§5). */
#define VIRTIO_ID_NET     1
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_ENTROPY 4

#define VIRTIO_MMIO_FIRST  0xc0000000u /* where a VMM like pyvmm puts the windows */
#define VIRTIO_MMIO_STRIDE 0x1000u
#define VIRTIO_MMIO_SLOTS  32
#define VIRTIO_PCI_BAR_SIZE 0x8000u    /* pyvmm's BAR 0 */
#define VIRTIO_MAX_QUEUES  4           /* queues a test guest drives per device */

enum virtio_transport { VIRTIO_PCI, VIRTIO_MMIO };

struct virtio_dev {
    enum virtio_transport transport;
    uint32_t id;                /* device type (§5) */
    uintptr_t base;             /* MMIO: the window; PCI: where BAR 0 was put */
    int slot;                   /* PCI: slot on bus 0; MMIO: -1 */
    /* PCI: where each structure is in BAR 0 (§4.1.4) */
    uint32_t common, notify, isr, device;
    uint32_t notify_multiplier;
    uint16_t notify_off[VIRTIO_MAX_QUEUES]; /* PCI: queue_notify_off per queue */
};

/* Every virtio device: over PCI when there is a host bridge (BAR 0 of the
 * n-th device found is moved below 4 GiB, to bar_base + n * 64 KiB, so
 * that a guest without paging reaches it), else over MMIO. Returns how
 * many were written to devs (at most max). */
int virtio_find(struct virtio_dev *devs, int max, uintptr_t bar_base);
const char *virtio_transport_name(const struct virtio_dev *d);

/* The status field and a reset (status 0; on PCI read back until 0,
 * §4.1.4.3.2). */
uint8_t virtio_status(const struct virtio_dev *d);
void virtio_set_status(const struct virtio_dev *d, uint8_t status);
void virtio_reset(const struct virtio_dev *d);

/* Features, 64 bits through the 32-bit select windows (§4.1.4.3, §4.2.2). */
uint64_t virtio_device_features(const struct virtio_dev *d);
void virtio_set_driver_features(const struct virtio_dev *d, uint64_t features);

/* Queue registers, for the queue selected last. */
void virtio_select_queue(const struct virtio_dev *d, uint16_t queue);
uint16_t virtio_queue_max(const struct virtio_dev *d);      /* PCI: queue_size as read */
void virtio_queue_set_size(const struct virtio_dev *d, uint16_t size);
void virtio_queue_set_rings(const struct virtio_dev *d, uint64_t desc, uint64_t driver,
                            uint64_t device);
void virtio_queue_enable(const struct virtio_dev *d);
uint16_t virtio_queue_ready(const struct virtio_dev *d);
/* PCI only (MMIO has no such fields): num_queues, and queue_msix_vector
 * written then read back. On MMIO: 0, and `vector` as given. */
uint16_t virtio_num_queues(const struct virtio_dev *d);
uint16_t virtio_queue_vector(const struct virtio_dev *d, uint16_t vector);

/* An available buffer notification for `queue` (§4.1.4.4, §4.2.2 QueueNotify). */
void virtio_notify(const struct virtio_dev *d, uint16_t queue);

/* The device configuration space (§4.1.4.6, §4.2.2 offset 0x100). */
uint8_t virtio_config8(const struct virtio_dev *d, uint32_t offset);
void virtio_config_write8(const struct virtio_dev *d, uint32_t offset, uint8_t value);

/* PCI configuration space of a device's function (mechanism #1). */
uint32_t virtio_pci_read32(int slot, uint32_t reg);
void virtio_pci_write32(int slot, uint32_t reg, uint32_t value);
/* Moves BAR 0 (64-bit) to `base` below 4 GiB, decoding off while it moves. */
void virtio_pci_move_bar(struct virtio_dev *d, uintptr_t base);

/* --- split virtqueues (§2.7) ----------------------------------------------- */

#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} __attribute__((packed));

struct virtq_used_elem {
    uint32_t id;
    uint32_t len;
} __attribute__((packed));

/* One queue's three parts, each in a 4 KiB page of its own (enough up to
 * 256 entries). */
struct virtq {
    uint16_t size;
    uint16_t next_avail;                 /* the driver's avail idx */
    volatile struct virtq_desc *desc;
    volatile uint16_t *avail;            /* flags, idx, ring[size], used_event */
    volatile uint16_t *used;             /* flags, idx, then elements; avail_event */
};

#define VIRTQ_AREA 0x3000u /* bytes a queue takes from its `base` */

void virtq_init(struct virtq *q, uintptr_t base, uint16_t size);
/* Selects queue `index`, programs size and rings, enables it. */
void virtq_program(const struct virtio_dev *d, uint16_t index, const struct virtq *q);
/* Puts `head` in the next available slot and publishes the new idx. */
void virtq_post(struct virtq *q, uint16_t head);
uint16_t virtq_used_idx(const struct virtq *q);
/* The descriptor id of used element `index` (taken mod the queue size). */
uint32_t virtq_used_id(const struct virtq *q, uint16_t index);
/* The device's avail_event (with EVENT_IDX: the next entry it will read). */
uint16_t virtq_avail_event(const struct virtq *q);

#endif
