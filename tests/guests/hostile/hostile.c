/* hostile: a virtio driver that does what a driver must not (Multiboot v1,
 * ELF32, paging off, polling). benchmarks/robustness_devices.py runs it
 * under `pyvmm run` to see that the VMM survives each case. See
 * tests/guests/README.md for the cases and the output.
 *
 * Command line: case=NAME (see the table below), hb=MS (heartbeat period,
 * default 200, 0: silent), hold=MS (how long a case watches after its
 * hostile step, default 1000), seed=N (status-fuzz).
 *
 * Every case prints "hb <n> t=<ms> it=<iterations>..." on COM1 while it
 * runs, so the harness tells a running VM from a wedged VMM. A case that
 * checks something prints "verdict ok|FAIL <what>"; those with nothing left
 * to do then end through the debug-exit port (VERDICT_PASS / _FAIL), the
 * others run until the VMM's --timeout stops them. */
#include "hostile.h"
#include "image.h"
#include "cases.h"

#define DEFAULT_HB_MS   200
#define DEFAULT_HOLD_MS 1000
#define CASE_NAME_MAX   32

struct virtio_dev devices[MAX_DEVICES];
int device_count;
uint32_t hold_ms = DEFAULT_HOLD_MS;
uint32_t fuzz_seed = 1;
volatile uint32_t iterations;
void (*heartbeat_extra)(void);

static uint32_t hb_ms = DEFAULT_HB_MS;
static uint32_t next_beat;
static uint32_t beats;

static const struct hostile_case {
    const char *name;
    void (*run)(void);
} cases[] = {
    {"idle", case_idle},
    {"driver-ok-early", case_driver_ok_early},
    {"status-storm", case_status_storm},
    {"ring-storm", case_ring_storm},
    {"status-fuzz", case_status_fuzz},
    {"bar-overlap", case_bar_overlap},
    {"net-reset-race", case_net_reset_race},
    {"console-reset-race", case_console_reset_race},
    {"queue-select-race", case_queue_select_race},
    {"blk-flood", case_blk_flood},
    {"blk-flood-reset", case_blk_flood_reset},
    {"net-link", case_net_link},
    {"console-flood", case_console_flood},
    {"serial-flood", case_serial_flood},
};

void heartbeat(void)
{
    if (!hb_ms)
        return;
    uint32_t now = now_ms();
    if (now < next_beat)
        return;
    next_beat = now + hb_ms;
    kprintf("hb %u t=%u it=%u", ++beats, now, iterations);
    if (heartbeat_extra)
        heartbeat_extra();
    kprintf("\n");
}

void spin(uint32_t pauses)
{
    while (pauses--)
        cpu_relax();
}

uint32_t random32(uint32_t *state)
{
    uint32_t x = *state ? *state : 1;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

void report(int ok, const char *what)
{
    kprintf("verdict %s %s\n", ok ? "ok" : "FAIL", what);
}

void verdict(int ok, const char *what)
{
    report(ok, what);
    debug_exit(ok ? VERDICT_PASS : VERDICT_FAIL);
}

struct virtio_dev *device_of(uint32_t id)
{
    for (int i = 0; i < device_count; i++)
        if (devices[i].id == id)
            return &devices[i];
    kprintf("no virtio device of type %u\n", id);
    verdict(0, "device missing");
}

uintptr_t device_area(const struct virtio_dev *d)
{
    return SCRATCH_BASE + (uintptr_t)(d - devices) * DEVICE_AREA;
}

int negotiate(const struct virtio_dev *d, uint64_t wanted)
{
    const uint8_t ack = VIRTIO_STATUS_ACKNOWLEDGE, driver = ack | VIRTIO_STATUS_DRIVER;
    virtio_reset(d);
    virtio_set_status(d, ack);
    virtio_set_status(d, driver);
    virtio_set_driver_features(d, virtio_device_features(d) & wanted);
    virtio_set_status(d, driver | VIRTIO_STATUS_FEATURES_OK);
    return (virtio_status(d) & VIRTIO_STATUS_FEATURES_OK) != 0;
}

void driver_ok(const struct virtio_dev *d)
{
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                             VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* The value of the first "key=" token as one word, into out (at most n-1 bytes). */
static void cmdline_word(const char *cmdline, const char *key, char *out, size_t n)
{
    size_t klen = strlen(key);
    out[0] = 0;
    for (const char *p = cmdline; p && *p;) {
        while (*p == ' ')
            p++;
        if (strncmp(p, key, klen) == 0) {
            size_t i = 0;
            for (p += klen; *p && *p != ' ' && i + 1 < n; p++)
                out[i++] = *p;
            out[i] = 0;
            return;
        }
        while (*p && *p != ' ')
            p++;
    }
}

void guest_main(uint32_t magic, struct multiboot_info *mbi)
{
    const char *cmdline = NULL;
    char name[CASE_NAME_MAX];

    serial_init();
    clock_init();
    if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
        cmdline = (const char *)(uintptr_t)mbi->cmdline;
    cmdline_word(cmdline, "case=", name, sizeof(name));
    hb_ms = (uint32_t)cmdline_get_ulong(cmdline, "hb=", DEFAULT_HB_MS);
    hold_ms = (uint32_t)cmdline_get_ulong(cmdline, "hold=", DEFAULT_HOLD_MS);
    fuzz_seed = (uint32_t)cmdline_get_ulong(cmdline, "seed=", 1);

    device_count = virtio_find(devices, MAX_DEVICES, PCI_BAR_BASE);
    if (hb_ms) {
        kprintf("hostile case=%s devices=%d\n", name, device_count);
        for (int i = 0; i < device_count; i++)
            kprintf("device %d id=%u %s at 0x%x\n", i, devices[i].id,
                    virtio_transport_name(&devices[i]), (unsigned)devices[i].base);
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (strcmp(cases[i].name, name) == 0) {
            cases[i].run();
            verdict(0, "case returned"); /* none does: each loops or gives a verdict */
        }
    }
    kprintf("hostile: unknown case '%s'\n", name);
    debug_exit(UNKNOWN_CASE);
}
