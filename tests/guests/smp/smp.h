/* Shared between smp.c and trampoline.S. */
#ifndef SMP_H
#define SMP_H

#define TRAMPOLINE_ADDR 0x8000  /* SIPI vector = TRAMPOLINE_ADDR >> 12 */
#define MAX_APS         63      /* APs beyond this many halt at once */
#define AP_STACK_SIZE   4096

#endif
