/* The PIT's channel 2 as a polled one-shot timer (Intel 8254 datasheet,
 * mode 0 "interrupt on terminal count"; IBM PC/AT port B). */
#include "pit.h"
#include "io.h"

#define PIT_CH2_DATA   0x42
#define PIT_COMMAND    0x43
#define PORT_B         0x61

#define PORT_B_GATE2   (1u << 0) /* channel 2 counts while set */
#define PORT_B_SPEAKER (1u << 1) /* speaker data: kept off */
#define PORT_B_OUT2    (1u << 5) /* channel 2's output, read-only */

/* Command byte: channel 2 (bits 7-6 = 10), low then high byte (11),
 * mode 0 (000), binary (0). */
#define PIT_CMD_CH2_MODE0 0xb0

#define TICK_COUNT ((uint16_t)(PIT_HZ * PIT_TICK_MS / 1000u))

int pit_present(void)
{
    return inb(PORT_B) != 0xff;
}

void pit_tick_arm(void)
{
    outb(PORT_B, (uint8_t)((inb(PORT_B) & ~PORT_B_SPEAKER) | PORT_B_GATE2));
    outb(PIT_COMMAND, PIT_CMD_CH2_MODE0);
    outb(PIT_CH2_DATA, (uint8_t)(TICK_COUNT & 0xff));
    outb(PIT_CH2_DATA, (uint8_t)(TICK_COUNT >> 8));
}

int pit_tick_expired(void)
{
    return (inb(PORT_B) & PORT_B_OUT2) != 0;
}
