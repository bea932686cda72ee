/* pcitest: PCI as a guest without firmware services sees it (Multiboot v1,
 * ELF32, paging off). See tests/guests/README.md for the output.
 *
 *  1. walks bus 0 through configuration mechanism #1 (ports 0xCF8/0xCFC,
 *     PCI Local Bus Specification 3.0 §3.2.2.3.2);
 *  2. finds the ECAM window in the ACPI MCFG table (RSDP scan of the BIOS
 *     area, ACPI 6.4 §5.2.5.1; PCI Firmware Specification 3.2 §4.1.2) and
 *     reads every function found again through it (PCIe base §7.2.2);
 *  3. finds QEMU's pci-testdev (1b36:0005), sizes BAR 0 (§6.2.5.1), moves
 *     it, and runs the device's tests on both BARs the way kvm-unit-tests'
 *     pci_testdev() does: select test n, 16 writes of the data byte at the
 *     test's offset, the count must be 16 (or 0: an ioeventfd took them);
 *  4. moves BAR 0 over RAM (undefined in PCI; the VMM must survive it),
 *     then back, and checks the device still answers;
 *  5. if pc-testdev is there, its scratch port and its iomem.
 *
 * Exit: debug-exit code 0 when every check passed, else 1. */
#include "guest.h"
#include "image.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA    0xcfc
#define PCI_COMMAND    0x04
#define PCI_BAR0       0x10
#define PCI_BAR1       0x14
#define CMD_IO         0x1
#define CMD_MEMORY     0x2
#define TESTDEV_ID     0x00051b36u
#define RAM_TARGET     0x00400000u  /* well inside RAM, clear of this image */
#define PC_TESTDEV_PORT  0xe0
#define PC_TESTDEV_IOMEM 0xff000000u
#define NR_WRITES      16

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        failures++;
        kprintf("FAIL %s\n", what);
    }
}

static uint32_t cf8_read(int slot, int reg)
{
    outl(CONFIG_ADDRESS, 0x80000000u | (uint32_t)slot << 11 | (reg & 0xfc));
    return inl(CONFIG_DATA);
}

static void cf8_write(int slot, int reg, uint32_t value)
{
    outl(CONFIG_ADDRESS, 0x80000000u | (uint32_t)slot << 11 | (reg & 0xfc));
    outl(CONFIG_DATA, value);
}

static uintptr_t ecam_base;

static volatile uint32_t *ecam(int slot, int reg)
{
    return (volatile uint32_t *)(ecam_base + ((uintptr_t)slot << 15) + reg);
}

/* The MCFG's bus-0 base address, or 0. */
static uintptr_t find_ecam(void)
{
    for (uintptr_t p = 0xe0000; p < 0x100000; p += 16) {
        if (memcmp((void *)p, "RSD PTR ", 8) != 0)
            continue;
        const uint8_t *rsdt = (const uint8_t *)*(const uint32_t *)(p + 16);
        uint32_t length = *(const uint32_t *)(rsdt + 4);
        for (uint32_t off = 36; off + 4 <= length; off += 4) {
            const uint8_t *table = (const uint8_t *)*(const uint32_t *)(rsdt + off);
            if (memcmp(table, "MCFG", 4) == 0) {
                uint64_t base = *(const uint64_t *)(table + 44);
                return base >> 32 ? 0 : (uintptr_t)base;
            }
        }
    }
    return 0;
}

/* One BAR's view of the device, so that the same test runs on MMIO and ports. */
struct bar {
    int io;
    uintptr_t base;
};

static void bar_writeb(struct bar *b, uint32_t off, uint8_t v)
{
    if (b->io)
        outb((uint16_t)(b->base + off), v);
    else
        *(volatile uint8_t *)(b->base + off) = v;
}

static uint8_t bar_readb(struct bar *b, uint32_t off)
{
    return b->io ? inb((uint16_t)(b->base + off)) : *(volatile uint8_t *)(b->base + off);
}

static uint32_t bar_readl(struct bar *b, uint32_t off)
{
    return b->io ? inl((uint16_t)(b->base + off)) : *(volatile uint32_t *)(b->base + off);
}

/* Test `n` of one BAR: 1 when it ran and counted right, 0 when there is no
 * such test (the header reads back nonsense) or the count is wrong. */
static int testdev_one(struct bar *b, int n)
{
    bar_writeb(b, 0, (uint8_t)n);           /* select: the count restarts */
    if (bar_readl(b, 12) != 0)
        return 0;
    uint8_t width = bar_readb(b, 1);
    if (width != 1)                         /* pyvmm's (and QEMU's) tests write bytes */
        return 0;
    uint32_t data = bar_readl(b, 8);
    uint32_t offset = bar_readl(b, 4);
    for (int i = 0; i < NR_WRITES; i++)
        bar_writeb(b, offset, (uint8_t)data);
    uint32_t count = bar_readl(b, 12);
    char name[32];
    int len = 0;
    while (len < 31 && (name[len] = (char)bar_readb(b, 16 + len)) != 0)
        len++;
    name[len] = 0;
    kprintf("testdev %s count=%u\n", name, count);
    return count == 0 || count == NR_WRITES;
}

static int testdev_all(struct bar *b)
{
    int n = 0;
    while (testdev_one(b, n))
        n++;
    return n;
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    kprintf("pcitest start\n");

    int testdev = -1;
    int found = 0;
    for (int slot = 0; slot < 32; slot++) {
        uint32_t id = cf8_read(slot, 0);
        if ((id & 0xffff) == 0xffff)
            continue;
        found++;
        kprintf("cf8 00:%02x.0 id=%04x:%04x class=%06x\n", slot, id & 0xffff, id >> 16,
                cf8_read(slot, 8) >> 8);
        if (id == TESTDEV_ID)
            testdev = slot;
    }

    ecam_base = find_ecam();
    kprintf("mcfg ecam=0x%x\n", (unsigned)ecam_base);
    check(ecam_base != 0, "MCFG table with an ECAM window below 4 GiB");
    if (ecam_base) {
        int same = 0;
        for (int slot = 0; slot < 32; slot++) {
            uint32_t id = *ecam(slot, 0);
            if ((id & 0xffff) == 0xffff)
                continue;
            kprintf("ecam 00:%02x.0 id=%04x:%04x\n", slot, id & 0xffff, id >> 16);
            same += id == cf8_read(slot, 0);
        }
        check(same == found, "ECAM and mechanism #1 see the same functions");
        /* Extended configuration space: reachable only through ECAM, reads 0 here. */
        check(*ecam(0, 0x100) == 0, "extended space of the host bridge reads 0");
    }

    check(testdev >= 0, "pci-testdev on bus 0");
    if (testdev < 0)
        debug_exit(1);

    uint32_t bar0 = cf8_read(testdev, PCI_BAR0);
    uint32_t bar1 = cf8_read(testdev, PCI_BAR1);
    uint32_t command = cf8_read(testdev, PCI_COMMAND) & 0xffff;
    kprintf("testdev bar0=0x%x bar1=0x%x command=0x%x\n", bar0, bar1, command);
    check((command & (CMD_IO | CMD_MEMORY)) == (CMD_IO | CMD_MEMORY), "BARs decoding at start");

    /* Sizing: decode off, all ones, read the mask, restore. */
    cf8_write(testdev, PCI_COMMAND, command & ~(CMD_IO | CMD_MEMORY));
    cf8_write(testdev, PCI_BAR0, 0xffffffffu);
    uint32_t size0 = ~(cf8_read(testdev, PCI_BAR0) & ~0xfu) + 1;
    cf8_write(testdev, PCI_BAR1, 0xffffffffu);
    uint32_t size1 = (~(cf8_read(testdev, PCI_BAR1) & ~0x3u) + 1) & 0xffff;
    kprintf("testdev size0=0x%x size1=0x%x\n", size0, size1);
    check(size0 == 0x1000 && size1 == 0x100, "BAR sizes 4 KiB and 256 ports");

    /* Move BAR 0 up by 1 MiB, through ECAM this time. */
    uint32_t moved = (bar0 & ~0xfu) + 0x100000;
    if (ecam_base)
        *ecam(testdev, PCI_BAR0) = moved;
    else
        cf8_write(testdev, PCI_BAR0, moved);
    cf8_write(testdev, PCI_BAR1, bar1);
    cf8_write(testdev, PCI_COMMAND, command);
    kprintf("testdev bar0 moved to 0x%x\n", cf8_read(testdev, PCI_BAR0));

    struct bar mem = {0, moved};
    struct bar io = {1, bar1 & ~0x3u};
    int tests = testdev_all(&mem) + testdev_all(&io);
    kprintf("testdev tests=%d\n", tests);
    check(tests == 6, "6 pci-testdev tests");
    check(*(volatile uint8_t *)(bar0 & ~0xfu) == 0xff, "nothing left at the old BAR 0");

    /* Over RAM: the VMM leaves it unmapped; RAM stays RAM. */
    *(volatile uint32_t *)RAM_TARGET = 0x12345678u;
    cf8_write(testdev, PCI_BAR0, RAM_TARGET);
    check(*(volatile uint32_t *)RAM_TARGET == 0x12345678u, "RAM under a BAR is still RAM");
    cf8_write(testdev, PCI_BAR0, moved);
    mem.base = moved;
    check(testdev_one(&mem, 0), "pci-testdev answers after the overlap");
    kprintf("overlap survived\n");

    if (inb(PC_TESTDEV_PORT) != 0xff || inb(PC_TESTDEV_PORT + 1) != 0xff) {
        outl(PC_TESTDEV_PORT, 0xdeadbeefu);
        check(inl(PC_TESTDEV_PORT) == 0xdeadbeefu && inb(PC_TESTDEV_PORT + 0x8 + 1) == 0xbe,
              "pc-testdev scratch register");
        *(volatile uint32_t *)(PC_TESTDEV_IOMEM + 0x100) = 0xcafef00du;
        check(*(volatile uint32_t *)(PC_TESTDEV_IOMEM + 0x100) == 0xcafef00du, "pc-testdev iomem");
        kprintf("pc-testdev ok\n");
    }

    kprintf("pcitest %s failures=%d\n", failures ? "FAILED" : "ok", failures);
    debug_exit(failures ? 1 : 0);
}
