/* The second vCPU, for the races: started with INIT-SIPI-SIPI through the
 * local APIC (Intel SDM vol. 3 §8.4.4.1) into smp/trampoline.S, which the
 * smp guest uses too, then handed the case's work. */
#include "hostile.h"
#include "../smp/smp.h"

#define LAPIC_BASE       0xfee00000u
#define LAPIC_SVR        (LAPIC_BASE + 0x0f0)
#define LAPIC_ICR_LO     (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI     (LAPIC_BASE + 0x310)
#define IA32_APIC_BASE   0x1b
#define APIC_BASE_ENABLE (1u << 11)
#define SVR_ENABLE       0x100
#define SVR_SPURIOUS     0xff

#define ICR_INIT         0x00000500u
#define ICR_STARTUP      0x00000600u
#define ICR_LEVEL_ASSERT 0x00004000u
#define ICR_PENDING      0x00001000u
#define ICR_ALL_BUT_SELF 0x000c0000u
#define SIPI_VECTOR      (TRAMPOLINE_ADDR >> 12)

#define INIT_WAIT_MS     10
#define SIPI_WAIT_MS     1
#define ONLINE_WAIT_MS   2000
#define ICR_POLLS        1000000u

extern const char ap_trampoline_start[], ap_trampoline_end[];

/* What smp/trampoline.S expects. */
volatile uint32_t ap_next_index = 1;
uint8_t ap_stacks[MAX_APS][AP_STACK_SIZE] __attribute__((aligned(16)));
void ap_main(uint32_t index);

static void (*volatile ap_work)(void);
static volatile uint32_t ap_online;

static void lapic_enable(void)
{
    uint64_t base = rdmsr(IA32_APIC_BASE);
    if (!(base & APIC_BASE_ENABLE))
        wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
    mmio_write32(LAPIC_SVR, mmio_read32(LAPIC_SVR) | SVR_ENABLE | SVR_SPURIOUS);
}

static void ipi_all_but_self(uint32_t icr)
{
    mmio_write32(LAPIC_ICR_HI, 0);
    mmio_write32(LAPIC_ICR_LO, ICR_ALL_BUT_SELF | icr);
    for (uint32_t n = 0; n < ICR_POLLS && (mmio_read32(LAPIC_ICR_LO) & ICR_PENDING); n++)
        cpu_relax();
}

static void wait_ms(uint32_t ms)
{
    uint32_t end = now_ms() + ms;
    while (now_ms() < end)
        cpu_relax();
}

void ap_main(uint32_t index)
{
    if (index == 1) {
        __atomic_store_n(&ap_online, 1, __ATOMIC_SEQ_CST);
        ap_work();
    }
    halt_forever();
}

int start_ap(void (*work)(void))
{
    ap_work = work;
    lapic_enable();
    memcpy((void *)(uintptr_t)TRAMPOLINE_ADDR, ap_trampoline_start,
           (size_t)(ap_trampoline_end - ap_trampoline_start));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    ipi_all_but_self(ICR_INIT | ICR_LEVEL_ASSERT);
    wait_ms(INIT_WAIT_MS);
    ipi_all_but_self(ICR_STARTUP | SIPI_VECTOR);
    wait_ms(SIPI_WAIT_MS);
    ipi_all_but_self(ICR_STARTUP | SIPI_VECTOR);
    uint32_t end = now_ms() + ONLINE_WAIT_MS;
    while (!__atomic_load_n(&ap_online, __ATOMIC_SEQ_CST) && now_ms() < end)
        cpu_relax();
    return (int)ap_online;
}
