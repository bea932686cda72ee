/* gdbtarget: a 64-bit guest for the gdb stub's tests, built with -O0 -g so that
 * gdb finds its functions, variables and lines (tests/gdb/test_gdb_pyvmm.py).
 * Entered like long64 (start64.S calls long64_main). It adds 1..5 into `counter`
 * through `tick`, prints the sum and exits through the debug-exit port with it:
 *
 *     gdbtarget: start
 *     gdbtarget: counter=15
 *
 * exit status 31 ((15 << 1) | 1). */
#include "guest.h"

volatile unsigned long counter;

unsigned long tick(unsigned long n);
void long64_main(const uint8_t *bp);

__attribute__((noinline)) unsigned long tick(unsigned long n)
{
    unsigned long before = counter;
    counter = before + n;
    return counter;
}

void long64_main(const uint8_t *bp)
{
    (void)bp;
    serial_init();
    kprintf("gdbtarget: start\n");
    for (unsigned long i = 1; i <= 5; i++)
        tick(i);
    kprintf("gdbtarget: counter=%lu\n", counter);
    debug_exit((uint8_t)counter);
}
