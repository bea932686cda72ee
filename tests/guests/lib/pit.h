/* Elapsed time from the PC's 8254 PIT, channel 2, polled: no interrupts, no
 * calibration. Channel 2 is gated by bit 0 of port B (0x61) and its output
 * reads back in bit 5 there, so a guest can arm a one-shot count and poll
 * for its end, as Linux's quick PIT calibration does. KVM's in-kernel PIT
 * answers both ports without leaving the kernel. */
#ifndef GUEST_PIT_H
#define GUEST_PIT_H

#include <stdint.h>

#define PIT_HZ         1193182u /* the PIT's input clock */
#define PIT_TICK_MS    50u      /* one armed count: 59659 PIT clocks */

/* 1 if a PIT answers on port B (an unclaimed port reads all ones). */
int pit_present(void);
/* Starts a one-shot count of PIT_TICK_MS on channel 2 (mode 0). */
void pit_tick_arm(void);
/* 1 once the armed count has run out (OUT2 high); it stays so until re-armed. */
int pit_tick_expired(void);

#endif
