/* The hostile guest's shared pieces: the devices found, time and heartbeat,
 * verdicts, the driver steps every case uses, the second vCPU. */
#ifndef HOSTILE_H
#define HOSTILE_H

#include "guest.h"
#include "virtio.h"

/* debug-exit codes of the cases that end with a verdict: status 33 and 35 */
#define VERDICT_PASS 0x10
#define VERDICT_FAIL 0x11
#define UNKNOWN_CASE 0x7f

#define MAX_DEVICES 8

/* Guest-physical memory for rings and buffers: 1 MiB per device from
 * 16 MiB (the robustness runs give the guest 64 MiB), far from the image at
 * 1 MiB and the AP trampoline at 0x8000. */
#define SCRATCH_BASE 0x01000000u
#define DEVICE_AREA  0x00100000u
/* No RAM and no device there: a ring or buffer at it is the driver's fault. */
#define OUTSIDE_RAM  0xf0000000u
/* Where virtio_find moves each virtio-pci BAR 0, 64 KiB apart: inside
 * pyvmm's 32-bit PCI window, which nothing else uses in these runs. */
#define PCI_BAR_BASE 0xd0000000u

extern struct virtio_dev devices[MAX_DEVICES];
extern int device_count;
extern uint32_t hold_ms;              /* hold=: how long a case watches after its step */
extern volatile uint32_t iterations;  /* the case's progress, in every heartbeat */
extern void (*heartbeat_extra)(void); /* prints more " key=value" fields, or NULL */

/* Milliseconds since boot, from the TSC calibrated against the PIT. */
void clock_init(void);
uint32_t now_ms(void);
void delay_us(uint32_t us); /* busy, on the TSC: for either vCPU */

/* "hb <n> t=<ms> it=<iterations>..." on COM1 every hb= ms (0: never);
 * cheap enough to call in every loop. */
void heartbeat(void);
void spin(uint32_t pauses);
uint32_t random32(uint32_t *state); /* xorshift32 */

/* "verdict ok|FAIL <what>" on COM1; verdict() then ends the VM with
 * VERDICT_PASS or VERDICT_FAIL through the debug-exit port. */
void report(int ok, const char *what);
void __attribute__((noreturn)) verdict(int ok, const char *what);

/* The first device of type `id`; a FAIL verdict when there is none. */
struct virtio_dev *device_of(uint32_t id);
/* This device's 1 MiB of scratch memory. */
uintptr_t device_area(const struct virtio_dev *d);

/* §3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, the wanted features the
 * device offers, FEATURES_OK; 1 if FEATURES_OK stuck. */
int negotiate(const struct virtio_dev *d, uint64_t wanted);
/* §3.1.1 step 8. */
void driver_ok(const struct virtio_dev *d);

/* Starts the second vCPU on `work` (which never returns); 0 if it did not
 * come up. */
int start_ap(void (*work)(void));

#endif
