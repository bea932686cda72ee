/* The pyvmm machine (docs/boot.md): debug exit, power off, fw_cfg. */
#ifndef GUEST_PLATFORM_H
#define GUEST_PLATFORM_H

#include <stdint.h>

#define DEBUG_EXIT_PORT  0xf4   /* QEMU isa-debug-exit, 32-bit writes */
#define PM1A_CNT_PORT    0x604  /* ACPI PM1a control, 16-bit writes */
#define PM1_SLP_EN       (1u << 13)
#define PM1_SLP_TYP(t)   ((uint16_t)((t) << 10))
#define PM1_POWEROFF     (PM1_SLP_EN | PM1_SLP_TYP(5)) /* 0x3400 */

#define FW_CFG_PORT_SEL  0x510  /* 16-bit selector */
#define FW_CFG_PORT_DATA 0x511  /* 8-bit data */
#define FW_CFG_SIGNATURE 0x0000 /* "QEMU" */
#define FW_CFG_ID        0x0001
#define FW_CFG_RAM_SIZE  0x0003 /* 64-bit little endian */
#define FW_CFG_NB_CPUS   0x0005 /* 16-bit little endian */
#define FW_CFG_MAX_CPUS  0x000f

/* Writes code to the debug-exit port: the VMM ends the VM with host
 * status (code << 1) | 1. Never returns (halts if the write did not stop
 * the VM). */
void __attribute__((noreturn)) debug_exit(uint32_t code);

/* Writes 0x3400 (SLP_EN | SLP_TYP=5) to port 0x604: pyvmm powers off
 * with status 0. Never returns (halts if the write did not stop the VM). */
void __attribute__((noreturn)) poweroff(void);

/* fw_cfg: select an item, then read its bytes in order. */
void fw_cfg_select(uint16_t key);
void fw_cfg_read(void *buf, uint32_t len);
uint16_t fw_cfg_read_u16(uint16_t key);          /* select + read, LE */
uint32_t fw_cfg_read_u32(uint16_t key);
uint64_t fw_cfg_read_u64(uint16_t key);
int fw_cfg_present(void);                        /* signature == "QEMU" */

#endif
