/* A virtio-pci BAR moved over another device's BAR, then the other moved
 * away (PCI 3.0 §6.2.5.1 leaves overlapping BARs undefined; pyvmm leaves
 * the newcomer unmapped): once the overlap is gone, writing the same BAR
 * value again must map it. */
#include "cases.h"

#define PCI_BAR0      0x10
#define BAR_AWAY      (PCI_BAR_BASE + 0x100000u) /* free: virtio_find used 64 KiB steps */
#define CYCLES        50
#define COMMON_NUMQ   18 /* virtio_pci_common_cfg.num_queues (§4.1.4.3) */

/* Rewrites BAR 0's low dword with decoding left on, as a driver that
 * reprograms a BAR does; the high dword stays 0. */
static void set_bar(struct virtio_dev *d, uintptr_t base)
{
    virtio_pci_write32(d->slot, PCI_BAR0, (uint32_t)base);
    d->base = base;
}

/* num_queues as read at `base` through d's common structure: which device
 * answers there (0xffff: none). */
static uint16_t queues_at(const struct virtio_dev *d, uintptr_t base)
{
    return *(volatile uint16_t *)(base + d->common + COMMON_NUMQ);
}

void case_bar_overlap(void)
{
    if (!device_count || devices[0].transport != VIRTIO_PCI)
        verdict(0, "no virtio-pci device");
    struct virtio_dev *a = device_of(VIRTIO_ID_BLOCK), *b = NULL;
    uint16_t qa = virtio_num_queues(a), qb = 0;
    for (int i = 0; i < device_count && !b; i++) {
        if (&devices[i] != a && virtio_num_queues(&devices[i]) != qa) {
            b = &devices[i];
            qb = virtio_num_queues(b);
        }
    }
    if (!b)
        verdict(0, "no second device with another queue count");
    uintptr_t home_a = a->base, home_b = b->base;
    kprintf("bar-overlap a=%d (queues %u) at 0x%x, b=%d (queues %u) at 0x%x\n", a->slot, qa,
            (unsigned)home_a, b->slot, qb, (unsigned)home_b);
    for (int cycle = 0; cycle < CYCLES; cycle++) {
        set_bar(a, home_b);
        if (queues_at(b, home_b) != qb)
            verdict(0, "the first device lost its BAR to the one moved over it");
        set_bar(b, BAR_AWAY);
        if (queues_at(b, BAR_AWAY) != qb)
            verdict(0, "the first device does not answer where it moved");
        set_bar(a, home_b);
        uint16_t seen = queues_at(a, home_b);
        if (seen != qa) {
            kprintf("cycle %d: 0x%x reads num_queues 0x%x, not %u\n", cycle, (unsigned)home_b,
                    seen, qa);
            verdict(0, "a BAR refused over another device stays unmapped after the overlap is gone");
        }
        set_bar(a, home_a);
        set_bar(b, home_b);
        if (queues_at(a, home_a) != qa || queues_at(b, home_b) != qb)
            verdict(0, "the devices do not answer at home again");
        iterations++;
        heartbeat();
    }
    verdict(1, "the BAR maps again once the overlap is gone, every cycle");
}
