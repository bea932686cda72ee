/* smp: brings up every CPU with INIT-SIPI-SIPI (Multiboot v1, ELF32).
 *
 * The bootstrap CPU reads the CPU count from fw_cfg (key 0x05), enables
 * its local APIC (spurious-interrupt vector register), copies the real-mode
 * trampoline (trampoline.S) to 0x8000 and sends, through the xAPIC ICR at
 * 0xFEE00300/0xFEE00310 with the "all excluding self" shorthand, INIT,
 * then SIPI vector 0x08 twice, with uncalibrated busy-loop delays. Every
 * AP enters 32-bit protected mode, takes its own stack and prints a line
 * under a spinlock. Output:
 *
 *     cpu 0 online apic_id=<BSP APIC ID>        (always first)
 *     cpu <n> online apic_id=<APIC ID>          (n = 1..count-1, in the
 *                                                order the APs arrive)
 *     all <count> cpus online                   -> debug exit 0
 * or, if not every CPU showed up within the (bounded) wait,
 *     timeout: <online>/<count>                 -> debug exit 1
 *
 * Numbers are decimal. Without fw_cfg (no "QEMU" signature) the count is
 * taken as 1. The wait for the APs is at most WAIT_LIMIT (300 million)
 * polls of the online counter; a "wait=N" token on the command line
 * replaces that number (e.g. to make the timeout path quick in a test). */
#include "guest.h"
#include "image.h"
#include "spinlock.h"
#include "smp.h"

#define LAPIC_BASE       0xFEE00000u
#define LAPIC_ID         (LAPIC_BASE + 0x020)
#define LAPIC_SVR        (LAPIC_BASE + 0x0F0)
#define LAPIC_ICR_LO     (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI     (LAPIC_BASE + 0x310)
#define IA32_APIC_BASE   0x1B
#define APIC_BASE_ENABLE (1u << 11)

#define ICR_INIT         0x00000500u
#define ICR_STARTUP      0x00000600u
#define ICR_LEVEL_ASSERT 0x00004000u
#define ICR_DELIVERY_PENDING 0x00001000u
#define ICR_ALL_BUT_SELF 0x000C0000u

#define SIPI_VECTOR      (TRAMPOLINE_ADDR >> 12)     /* 0x08 */

/* Busy-loop lengths: not calibrated, just "long enough" in practice. */
#define INIT_DELAY       2000000u
#define SIPI_DELAY       400000u
#define WAIT_LIMIT       300000000u

extern const char ap_trampoline_start[], ap_trampoline_end[];

/* Used by trampoline.S. */
volatile uint32_t ap_next_index = 1;
uint8_t ap_stacks[MAX_APS][AP_STACK_SIZE] __attribute__((aligned(16)));
void ap_main(uint32_t index);

static spinlock_t print_lock = SPINLOCK_INIT;
static volatile uint32_t online;

static inline uint32_t apic_id(void)
{
    return mmio_read32(LAPIC_ID) >> 24;
}

static void delay(uint32_t loops)
{
    for (volatile uint32_t i = 0; i < loops; i++)
        cpu_relax();
}

static void send_ipi_all_but_self(uint32_t icr_lo)
{
    uint32_t n = 0;
    mmio_write32(LAPIC_ICR_HI, 0);
    mmio_write32(LAPIC_ICR_LO, ICR_ALL_BUT_SELF | icr_lo);
    while ((mmio_read32(LAPIC_ICR_LO) & ICR_DELIVERY_PENDING) && n++ < 1000000u)
        cpu_relax();
}

static void lapic_enable(void)
{
    uint64_t base = rdmsr(IA32_APIC_BASE);
    if (!(base & APIC_BASE_ENABLE))
        wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
    /* APIC software enable (bit 8), spurious vector 0xFF. */
    mmio_write32(LAPIC_SVR, mmio_read32(LAPIC_SVR) | 0x100 | 0xFF);
}

void ap_main(uint32_t index)
{
    lapic_enable();
    spin_lock(&print_lock);
    kprintf("cpu %u online apic_id=%u\n", index, apic_id());
    spin_unlock(&print_lock);
    __atomic_add_fetch(&online, 1, __ATOMIC_SEQ_CST);
    halt_forever();
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    uint32_t wait_limit = WAIT_LIMIT;

    serial_init();
    if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
        wait_limit = (uint32_t)cmdline_get_ulong(
            (const char *)(uintptr_t)mbi->cmdline, "wait=", WAIT_LIMIT);

    uint32_t count = 1;
    if (fw_cfg_present())
        count = fw_cfg_read_u16(FW_CFG_NB_CPUS);
    if (count == 0)
        count = 1;

    lapic_enable();
    online = 1;
    spin_lock(&print_lock);
    kprintf("cpu 0 online apic_id=%u\n", apic_id());
    spin_unlock(&print_lock);

    if (count > 1) {
        memcpy((void *)(uintptr_t)TRAMPOLINE_ADDR, ap_trampoline_start,
               (size_t)(ap_trampoline_end - ap_trampoline_start));
        __atomic_thread_fence(__ATOMIC_SEQ_CST);

        send_ipi_all_but_self(ICR_INIT | ICR_LEVEL_ASSERT);
        delay(INIT_DELAY);
        send_ipi_all_but_self(ICR_STARTUP | SIPI_VECTOR);
        delay(SIPI_DELAY);
        send_ipi_all_but_self(ICR_STARTUP | SIPI_VECTOR);
    }

    uint32_t n = 0;
    while (__atomic_load_n(&online, __ATOMIC_SEQ_CST) < count && n++ < wait_limit)
        cpu_relax();

    uint32_t seen = __atomic_load_n(&online, __ATOMIC_SEQ_CST);
    spin_lock(&print_lock);
    if (seen == count) {
        kprintf("all %u cpus online\n", count);
        spin_unlock(&print_lock);
        debug_exit(0);
    }
    kprintf("timeout: %u/%u\n", seen, count);
    spin_unlock(&print_lock);
    debug_exit(1);
}
