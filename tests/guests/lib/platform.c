#include "platform.h"
#include "io.h"

void debug_exit(uint32_t code)
{
    outl(DEBUG_EXIT_PORT, code);
    halt_forever();
}

void poweroff(void)
{
    outw(PM1A_CNT_PORT, PM1_POWEROFF);
    halt_forever();
}

void fw_cfg_select(uint16_t key)
{
    outw(FW_CFG_PORT_SEL, key);
}

void fw_cfg_read(void *buf, uint32_t len)
{
    uint8_t *p = buf;
    while (len--)
        *p++ = inb(FW_CFG_PORT_DATA);
}

static uint64_t read_le(uint16_t key, unsigned len)
{
    uint8_t b[8];
    uint64_t v = 0;
    fw_cfg_select(key);
    fw_cfg_read(b, len);
    while (len--)
        v = (v << 8) | b[len];
    return v;
}

uint16_t fw_cfg_read_u16(uint16_t key)
{
    return (uint16_t)read_le(key, 2);
}

uint32_t fw_cfg_read_u32(uint16_t key)
{
    return (uint32_t)read_le(key, 4);
}

uint64_t fw_cfg_read_u64(uint16_t key)
{
    return read_le(key, 8);
}

int fw_cfg_present(void)
{
    char sig[4];
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(sig, 4);
    return sig[0] == 'Q' && sig[1] == 'E' && sig[2] == 'M' && sig[3] == 'U';
}
