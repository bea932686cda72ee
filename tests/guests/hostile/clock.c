/* Time for the heartbeat and the cases' holds: the TSC, counted in
 * milliseconds through one 50 ms PIT count measured at boot (the way
 * Linux's quick PIT calibration does). The TSC keeps counting while the
 * VMM holds a vCPU, so a stall shows as time passed. */
#include "hostile.h"
#include "pit.h"

#define CALIBRATION_LIMIT (1ull << 32) /* TSC counts: give up on a PIT that never ends */
#define FALLBACK_TSC_PER_MS 1000000u /* no PIT: take the TSC as 1 GHz */

static uint64_t tsc_start;
static uint32_t tsc_per_ms = FALLBACK_TSC_PER_MS;

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* n / d without libgcc: one divl (the quotient fits 32 bits here). */
static uint32_t div64_32(uint64_t n, uint32_t d)
{
    uint32_t quotient, remainder;
    __asm__("divl %4" : "=a"(quotient), "=d"(remainder)
            : "a"((uint32_t)n), "d"((uint32_t)(n >> 32)), "rm"(d));
    return quotient;
}

void clock_init(void)
{
    tsc_start = rdtsc();
    if (!pit_present())
        return;
    pit_tick_arm();
    uint64_t start = rdtsc();
    while (rdtsc() - start < CALIBRATION_LIMIT) {
        if (pit_tick_expired()) {
            uint32_t measured = div64_32(rdtsc() - start, PIT_TICK_MS);
            if (measured)
                tsc_per_ms = measured;
            return;
        }
    }
}

uint32_t now_ms(void)
{
    return div64_32(rdtsc() - tsc_start, tsc_per_ms);
}

void delay_us(uint32_t us)
{
    uint64_t end = rdtsc() + (uint64_t)us * (tsc_per_ms / 1000u);
    while (rdtsc() < end)
        cpu_relax();
}
