/* The transports of virtio.h: virtio-pci (virtio 1.2 §4.1) and virtio-mmio
 * version 2 (§4.2), and split virtqueue layout (§2.7). */
#include "virtio.h"
#include "io.h"
#include "string.h"

/* --- PCI configuration mechanism #1 (PCI 3.0 §3.2.2.3.2) ------------------ */

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA    0xcfc
#define PCI_ENABLE         0x80000000u

#define PCI_ID             0x00
#define PCI_COMMAND        0x04 /* low half; Status is the high half */
#define PCI_BAR0           0x10
#define PCI_BAR1           0x14
#define PCI_CAP_POINTER    0x34
#define PCI_STATUS_CAPS    (1u << (16 + 4)) /* Status bit 4 in the dword at 0x04 */
#define PCI_CMD_MEMORY     (1u << 1)
#define PCI_CMD_MASTER     (1u << 2)
#define PCI_CAP_VENDOR     0x09

#define VIRTIO_PCI_VENDOR  0x1af4
#define VIRTIO_PCI_MODERN  0x1040 /* device ID = 0x1040 + virtio device ID (§4.1.2.1) */

/* cfg_type of a virtio capability (§4.1.4). */
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_ISR    3
#define VIRTIO_PCI_CAP_DEVICE 4

/* struct virtio_pci_common_cfg (§4.1.4.3). */
#define COMMON_DFSELECT  0
#define COMMON_DF        4
#define COMMON_GFSELECT  8
#define COMMON_GF        12
#define COMMON_NUMQ      18
#define COMMON_STATUS    20
#define COMMON_Q_SELECT  22
#define COMMON_Q_SIZE    24
#define COMMON_Q_MSIX    26
#define COMMON_Q_ENABLE  28
#define COMMON_Q_NOFF    30
#define COMMON_Q_DESC    32
#define COMMON_Q_DRIVER  40
#define COMMON_Q_DEVICE  48

/* virtio-mmio registers (§4.2.2). */
#define MMIO_MAGIC         0x000
#define MMIO_VERSION       0x004
#define MMIO_DEVICE_ID     0x008
#define MMIO_DF            0x010
#define MMIO_DFSELECT      0x014
#define MMIO_GF            0x020
#define MMIO_GFSELECT      0x024
#define MMIO_Q_SELECT      0x030
#define MMIO_Q_NUM_MAX     0x034
#define MMIO_Q_NUM         0x038
#define MMIO_Q_READY       0x044
#define MMIO_Q_NOTIFY      0x050
#define MMIO_STATUS        0x070
#define MMIO_Q_DESC_LOW    0x080
#define MMIO_Q_DESC_HIGH   0x084
#define MMIO_Q_DRIVER_LOW  0x090
#define MMIO_Q_DRIVER_HIGH 0x094
#define MMIO_Q_DEVICE_LOW  0x0a0
#define MMIO_Q_DEVICE_HIGH 0x0a4
#define MMIO_CONFIG        0x100
#define MMIO_MAGIC_VALUE   0x74726976u /* "virt" */
#define MMIO_VERSION_2     2

#define RESET_POLLS        100000u

static inline void barrier(void)
{
    __asm__ volatile("" : : : "memory");
}

uint32_t virtio_pci_read32(int slot, uint32_t reg)
{
    outl(PCI_CONFIG_ADDRESS, PCI_ENABLE | (uint32_t)slot << 11 | (reg & 0xfc));
    return inl(PCI_CONFIG_DATA);
}

void virtio_pci_write32(int slot, uint32_t reg, uint32_t value)
{
    outl(PCI_CONFIG_ADDRESS, PCI_ENABLE | (uint32_t)slot << 11 | (reg & 0xfc));
    outl(PCI_CONFIG_DATA, value);
}

static volatile uint8_t *reg8(uintptr_t addr) { return (volatile uint8_t *)addr; }
static volatile uint16_t *reg16(uintptr_t addr) { return (volatile uint16_t *)addr; }
static volatile uint32_t *reg32(uintptr_t addr) { return (volatile uint32_t *)addr; }

static uintptr_t common(const struct virtio_dev *d, uint32_t field)
{
    return d->base + d->common + field;
}

static uintptr_t mmio(const struct virtio_dev *d, uint32_t reg)
{
    return d->base + reg;
}

void virtio_pci_move_bar(struct virtio_dev *d, uintptr_t base)
{
    uint32_t command = virtio_pci_read32(d->slot, PCI_COMMAND) & 0xffff;
    virtio_pci_write32(d->slot, PCI_COMMAND, command & ~PCI_CMD_MEMORY);
    virtio_pci_write32(d->slot, PCI_BAR0, (uint32_t)base);
    virtio_pci_write32(d->slot, PCI_BAR1, 0);
    virtio_pci_write32(d->slot, PCI_COMMAND, command | PCI_CMD_MEMORY | PCI_CMD_MASTER);
    d->base = base;
}

/* The virtio capabilities of the function in `slot` (§4.1.4): 1 if the
 * four structures this driver needs are all in BAR 0. */
static int pci_caps(struct virtio_dev *d)
{
    int found = 0;
    if (!(virtio_pci_read32(d->slot, PCI_COMMAND) & PCI_STATUS_CAPS))
        return 0;
    uint32_t at = virtio_pci_read32(d->slot, PCI_CAP_POINTER) & 0xfc;
    for (int guard = 0; at && guard < 48; guard++) {
        uint32_t head = virtio_pci_read32(d->slot, at);
        uint32_t bar = virtio_pci_read32(d->slot, at + 4) & 0xff;
        if ((head & 0xff) == PCI_CAP_VENDOR && bar == 0) {
            uint32_t offset = virtio_pci_read32(d->slot, at + 8);
            switch (head >> 24) {
            case VIRTIO_PCI_CAP_COMMON: d->common = offset; found |= 1; break;
            case VIRTIO_PCI_CAP_NOTIFY:
                d->notify = offset;
                d->notify_multiplier = virtio_pci_read32(d->slot, at + 16);
                found |= 2;
                break;
            case VIRTIO_PCI_CAP_ISR: d->isr = offset; found |= 4; break;
            case VIRTIO_PCI_CAP_DEVICE: d->device = offset; found |= 8; break;
            }
        }
        at = (head >> 8) & 0xfc;
    }
    return found == 0xf;
}

static int find_pci(struct virtio_dev *devs, int max, uintptr_t bar_base)
{
    int n = 0;
    for (int slot = 0; slot < 32 && n < max; slot++) {
        uint32_t id = virtio_pci_read32(slot, PCI_ID);
        uint32_t device = id >> 16;
        if ((id & 0xffff) != VIRTIO_PCI_VENDOR || device < VIRTIO_PCI_MODERN)
            continue;
        struct virtio_dev *d = &devs[n];
        memset(d, 0, sizeof(*d));
        d->transport = VIRTIO_PCI;
        d->id = device - VIRTIO_PCI_MODERN;
        d->slot = slot;
        if (!pci_caps(d))
            continue;
        virtio_pci_move_bar(d, bar_base + (uintptr_t)n * 0x10000u);
        uint16_t queues = *reg16(common(d, COMMON_NUMQ));
        for (uint16_t q = 0; q < queues && q < VIRTIO_MAX_QUEUES; q++) {
            *reg16(common(d, COMMON_Q_SELECT)) = q;
            d->notify_off[q] = *reg16(common(d, COMMON_Q_NOFF));
        }
        *reg16(common(d, COMMON_Q_SELECT)) = 0;
        n++;
    }
    return n;
}

static int find_mmio(struct virtio_dev *devs, int max)
{
    int n = 0;
    for (int i = 0; i < VIRTIO_MMIO_SLOTS && n < max; i++) {
        uintptr_t base = VIRTIO_MMIO_FIRST + (uintptr_t)i * VIRTIO_MMIO_STRIDE;
        if (*reg32(base + MMIO_MAGIC) != MMIO_MAGIC_VALUE ||
            *reg32(base + MMIO_VERSION) != MMIO_VERSION_2)
            continue;
        uint32_t id = *reg32(base + MMIO_DEVICE_ID);
        if (id == 0) /* §4.2.2: a placeholder window with no device */
            continue;
        struct virtio_dev *d = &devs[n++];
        memset(d, 0, sizeof(*d));
        d->transport = VIRTIO_MMIO;
        d->id = id;
        d->base = base;
        d->slot = -1;
    }
    return n;
}

int virtio_find(struct virtio_dev *devs, int max, uintptr_t bar_base)
{
    /* No host bridge at 00:00.0 (the port reads all ones): no PCI. */
    if ((virtio_pci_read32(0, PCI_ID) & 0xffff) != 0xffff)
        return find_pci(devs, max, bar_base);
    return find_mmio(devs, max);
}

const char *virtio_transport_name(const struct virtio_dev *d)
{
    return d->transport == VIRTIO_PCI ? "pci" : "mmio";
}

/* --- status and features ------------------------------------------------- */

uint8_t virtio_status(const struct virtio_dev *d)
{
    if (d->transport == VIRTIO_PCI)
        return *reg8(common(d, COMMON_STATUS));
    return (uint8_t)*reg32(mmio(d, MMIO_STATUS));
}

void virtio_set_status(const struct virtio_dev *d, uint8_t status)
{
    if (d->transport == VIRTIO_PCI)
        *reg8(common(d, COMMON_STATUS)) = status;
    else
        *reg32(mmio(d, MMIO_STATUS)) = status;
}

void virtio_reset(const struct virtio_dev *d)
{
    virtio_set_status(d, 0);
    for (uint32_t n = 0; n < RESET_POLLS && virtio_status(d) != 0; n++)
        cpu_relax();
}

uint64_t virtio_device_features(const struct virtio_dev *d)
{
    uint64_t features = 0;
    for (uint32_t window = 0; window < 2; window++) {
        uint32_t bits;
        if (d->transport == VIRTIO_PCI) {
            *reg32(common(d, COMMON_DFSELECT)) = window;
            bits = *reg32(common(d, COMMON_DF));
        } else {
            *reg32(mmio(d, MMIO_DFSELECT)) = window;
            bits = *reg32(mmio(d, MMIO_DF));
        }
        features |= (uint64_t)bits << (32 * window);
    }
    return features;
}

void virtio_set_driver_features(const struct virtio_dev *d, uint64_t features)
{
    for (uint32_t window = 0; window < 2; window++) {
        uint32_t bits = (uint32_t)(features >> (32 * window));
        if (d->transport == VIRTIO_PCI) {
            *reg32(common(d, COMMON_GFSELECT)) = window;
            *reg32(common(d, COMMON_GF)) = bits;
        } else {
            *reg32(mmio(d, MMIO_GFSELECT)) = window;
            *reg32(mmio(d, MMIO_GF)) = bits;
        }
    }
}

/* --- queues -------------------------------------------------------------- */

void virtio_select_queue(const struct virtio_dev *d, uint16_t queue)
{
    if (d->transport == VIRTIO_PCI)
        *reg16(common(d, COMMON_Q_SELECT)) = queue;
    else
        *reg32(mmio(d, MMIO_Q_SELECT)) = queue;
}

uint16_t virtio_queue_max(const struct virtio_dev *d)
{
    if (d->transport == VIRTIO_PCI)
        return *reg16(common(d, COMMON_Q_SIZE));
    return (uint16_t)*reg32(mmio(d, MMIO_Q_NUM_MAX));
}

void virtio_queue_set_size(const struct virtio_dev *d, uint16_t size)
{
    if (d->transport == VIRTIO_PCI)
        *reg16(common(d, COMMON_Q_SIZE)) = size;
    else
        *reg32(mmio(d, MMIO_Q_NUM)) = size;
}

static void write64(uintptr_t low, uintptr_t high, uint64_t value)
{
    *reg32(low) = (uint32_t)value;
    *reg32(high) = (uint32_t)(value >> 32);
}

void virtio_queue_set_rings(const struct virtio_dev *d, uint64_t desc, uint64_t driver,
                            uint64_t device)
{
    if (d->transport == VIRTIO_PCI) {
        write64(common(d, COMMON_Q_DESC), common(d, COMMON_Q_DESC + 4), desc);
        write64(common(d, COMMON_Q_DRIVER), common(d, COMMON_Q_DRIVER + 4), driver);
        write64(common(d, COMMON_Q_DEVICE), common(d, COMMON_Q_DEVICE + 4), device);
    } else {
        write64(mmio(d, MMIO_Q_DESC_LOW), mmio(d, MMIO_Q_DESC_HIGH), desc);
        write64(mmio(d, MMIO_Q_DRIVER_LOW), mmio(d, MMIO_Q_DRIVER_HIGH), driver);
        write64(mmio(d, MMIO_Q_DEVICE_LOW), mmio(d, MMIO_Q_DEVICE_HIGH), device);
    }
}

void virtio_queue_enable(const struct virtio_dev *d)
{
    if (d->transport == VIRTIO_PCI)
        *reg16(common(d, COMMON_Q_ENABLE)) = 1;
    else
        *reg32(mmio(d, MMIO_Q_READY)) = 1;
}

uint16_t virtio_queue_ready(const struct virtio_dev *d)
{
    if (d->transport == VIRTIO_PCI)
        return *reg16(common(d, COMMON_Q_ENABLE));
    return (uint16_t)*reg32(mmio(d, MMIO_Q_READY));
}

uint16_t virtio_num_queues(const struct virtio_dev *d)
{
    return d->transport == VIRTIO_PCI ? *reg16(common(d, COMMON_NUMQ)) : 0;
}

uint16_t virtio_queue_vector(const struct virtio_dev *d, uint16_t vector)
{
    if (d->transport != VIRTIO_PCI)
        return vector;
    *reg16(common(d, COMMON_Q_MSIX)) = vector;
    return *reg16(common(d, COMMON_Q_MSIX));
}

void virtio_notify(const struct virtio_dev *d, uint16_t queue)
{
    if (d->transport == VIRTIO_MMIO) {
        *reg32(mmio(d, MMIO_Q_NOTIFY)) = queue;
        return;
    }
    uint16_t off = queue < VIRTIO_MAX_QUEUES ? d->notify_off[queue] : queue;
    *reg16(d->base + d->notify + (uintptr_t)off * d->notify_multiplier) = queue;
}

uint8_t virtio_config8(const struct virtio_dev *d, uint32_t offset)
{
    uintptr_t at = d->transport == VIRTIO_PCI ? d->base + d->device : d->base + MMIO_CONFIG;
    return *reg8(at + offset);
}

void virtio_config_write8(const struct virtio_dev *d, uint32_t offset, uint8_t value)
{
    uintptr_t at = d->transport == VIRTIO_PCI ? d->base + d->device : d->base + MMIO_CONFIG;
    *reg8(at + offset) = value;
}

/* --- split virtqueues ------------------------------------------------------ */

#define VIRTQ_AVAIL_IDX 1
#define VIRTQ_AVAIL_RING 2
#define VIRTQ_USED_IDX 1

void virtq_init(struct virtq *q, uintptr_t base, uint16_t size)
{
    q->size = size;
    q->next_avail = 0;
    q->desc = (volatile struct virtq_desc *)base;
    q->avail = (volatile uint16_t *)(base + 0x1000);
    q->used = (volatile uint16_t *)(base + 0x2000);
    /* Only the fields a device reads before the driver writes them: the
     * rings' flags and idx and the event indices (a device reads entries and
     * descriptors only up to what idx publishes). Cheap on purpose: guest
     * kernel code can be very slow (a software KVM such as kvm_pvm). */
    q->avail[0] = q->avail[VIRTQ_AVAIL_IDX] = q->avail[VIRTQ_AVAIL_RING + size] = 0;
    q->used[0] = q->used[VIRTQ_USED_IDX] = q->used[2 + 4u * size] = 0;
}

void virtq_program(const struct virtio_dev *d, uint16_t index, const struct virtq *q)
{
    virtio_select_queue(d, index);
    virtio_queue_set_size(d, q->size);
    virtio_queue_set_rings(d, (uintptr_t)q->desc, (uintptr_t)q->avail, (uintptr_t)q->used);
    virtio_queue_enable(d);
}

void virtq_post(struct virtq *q, uint16_t head)
{
    q->avail[VIRTQ_AVAIL_RING + (q->next_avail & (q->size - 1))] = head;
    barrier(); /* §2.7.13.2: the entry before the idx that publishes it (x86: stores in order) */
    q->next_avail++;
    q->avail[VIRTQ_AVAIL_IDX] = q->next_avail;
}

uint16_t virtq_used_idx(const struct virtq *q)
{
    return q->used[VIRTQ_USED_IDX];
}

uint32_t virtq_used_id(const struct virtq *q, uint16_t index)
{
    /* element i (id, len: 8 bytes) starts at byte 4 + 8 * i, u16 index 2 + 4 * i */
    uint32_t at = 2 + 4u * (index & (q->size - 1));
    return q->used[at] | (uint32_t)q->used[at + 1] << 16;
}

uint16_t virtq_avail_event(const struct virtq *q)
{
    /* after flags, idx and size elements of 8 bytes: u16 index 2 + 4 * size */
    return q->used[2 + 4u * q->size];
}
