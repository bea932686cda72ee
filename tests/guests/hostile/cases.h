/* The cases of the hostile guest, by what they abuse. Each starts after
 * the devices were found; those with a verdict end the VM, the others loop
 * until the VMM's --timeout. */
#ifndef HOSTILE_CASES_H
#define HOSTILE_CASES_H

#include "hostile.h"

extern uint32_t fuzz_seed; /* seed= */

/* status.c: every device, through its status and feature registers */
void case_idle(void);
void case_status_storm(void);
void case_ring_storm(void);
void case_status_fuzz(void);
void case_serial_flood(void);
/* net.c */
void case_driver_ok_early(void);
void case_net_reset_race(void);
void case_net_link(void);
/* blk.c */
void case_blk_flood(void);
void case_blk_flood_reset(void);
void case_queue_select_race(void);
/* console.c */
void case_console_reset_race(void);
void case_console_flood(void);
/* bar.c */
void case_bar_overlap(void);

/* For the cases' own files: the queue size to program for queue `index`,
 * at most `limit` (both powers of 2). */
uint16_t queue_size(const struct virtio_dev *d, uint16_t index, uint16_t limit);
/* The second vCPU's work in the reset races: reset `race_device` again and
 * again, a random while apart. */
extern struct virtio_dev *race_device;
void ap_reset_loop(void);

#endif
