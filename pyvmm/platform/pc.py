"""The PC platform of docs/boot.md as a table: one row per device.

Each row builds a device model and says where it sits (its ports and MMIO ranges)
and how ACPI describes it; the device manager puts every row on the buses and into
the DSDT from that one description. Adding a device is its module plus one row here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

from pyvmm.arch.x86.acpi import PowerRegisters
from pyvmm.arch.x86.acpi.dsdt import (
    GENERATION_ID_NAME,
    POWER_BUTTON_NAME,
    fw_cfg_device,
    generation_id_device,
    generic_event_device,
    keyboard_device,
    motherboard_resources,
    power_button_device,
    rtc_device,
    serial_device,
)
from pyvmm.arch.x86.acpi.tables import VMGENID_ADDRESS
from pyvmm.arch.x86.layout import MMIO_HOLE_START
from pyvmm.devices import I8042, CmosRtc, DebugExit, FwCfg, PortSink, PowerControl, Serial16550
from pyvmm.devices.debug_exit import DEBUG_EXIT_LENGTH, DEBUG_EXIT_PORT
from pyvmm.devices.device import PlacedDevice, ports
from pyvmm.devices.fw_cfg import FW_CFG_LENGTH, FW_CFG_PORT
from pyvmm.devices.ged import GED_GSI, GED_LENGTH, GED_PORT, Ged, GedEvent
from pyvmm.devices.i8042 import AUX_IRQ, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_PORT_LENGTH, KEYBOARD_IRQ
from pyvmm.devices.ports import IO_DELAY_PORT, POST_CODE_PORT
from pyvmm.devices.power import (
    PM1A_CNT_LENGTH,
    PM1A_CNT_PORT,
    RESET_PORT,
    RESET_VALUE,
    S5_SLEEP_TYPE,
    SLEEP_CONTROL_PORT,
    SLEEP_PORTS_BASE,
    SLEEP_PORTS_LENGTH,
    SLEEP_STATUS_PORT,
    SleepControl,
)
from pyvmm.devices.rtc import RTC_IRQ, RTC_PORT, RTC_PORT_LENGTH
from pyvmm.devices.serial import COM1_IRQ, COM1_PORT, SERIAL_PORT_LENGTH
from pyvmm.devices.vmgenid import VmGenId
from pyvmm.memory import GuestMemory
from pyvmm.outcome import InterruptLine, StopRequest


# eq=False: a context is one machine's (compared and hashed by identity), so rows can
# share a device built once per machine (`_ged`).
@dataclass(frozen=True, eq=False)
class PlatformContext:
    """What the rows need from the machine."""

    memory: GuestMemory
    cpus: int
    stop: StopRequest
    line: Callable[[int], InterruptLine]  # an ISA IRQ's interrupt line
    console: Callable[[bytes], None]  # where COM1's output goes


def serial(context: PlatformContext) -> PlacedDevice:
    uart = Serial16550(context.line(COM1_IRQ), context.console)
    return PlacedDevice(
        "serial (COM1)",
        uart,
        (ports(COM1_PORT, SERIAL_PORT_LENGTH, uart, "serial (COM1)"),),
        (serial_device("COM1", 1, COM1_PORT, COM1_IRQ),),
    )


def debug_exit(context: PlatformContext) -> PlacedDevice:
    device = DebugExit(context.stop)
    placement = (ports(DEBUG_EXIT_PORT, DEBUG_EXIT_LENGTH, device, "debug-exit"),)
    return PlacedDevice("debug-exit", device, placement)


# The power row's registers as the FADT and the DSDT's \_S5_ announce them: the ACPI
# tables (arch) take this value, so they describe what the device (devices) implements
# without arch importing devices.
ACPI_POWER = PowerRegisters(
    sleep_control_port=SLEEP_CONTROL_PORT,
    sleep_status_port=SLEEP_STATUS_PORT,
    reset_port=RESET_PORT,
    reset_value=RESET_VALUE,
    s5_sleep_type=S5_SLEEP_TYPE,
)


def power(context: PlatformContext) -> PlacedDevice:
    """The ACPI PM1a control and sleep/reset registers (FADT: `ACPI_POWER`), one
    motherboard device."""
    s5 = ACPI_POWER.s5_sleep_type
    control, sleep = PowerControl(context.stop, s5), SleepControl(context.stop, s5)
    return PlacedDevice(
        "power",
        control,
        (
            ports(PM1A_CNT_PORT, PM1A_CNT_LENGTH, control, "pm1a-control"),
            ports(SLEEP_PORTS_BASE, SLEEP_PORTS_LENGTH, sleep, "acpi-sleep"),
        ),
        (
            motherboard_resources(
                "PWRR", [(SLEEP_PORTS_BASE, SLEEP_PORTS_LENGTH), (PM1A_CNT_PORT, PM1A_CNT_LENGTH)]
            ),
        ),
    )


def fw_cfg(context: PlatformContext) -> PlacedDevice:
    device = FwCfg(context.memory, context.memory.size, context.cpus, context.cpus)
    return PlacedDevice(
        "fw_cfg",
        device,
        (ports(FW_CFG_PORT, FW_CFG_LENGTH, device, "fw_cfg"),),
        (fw_cfg_device(FW_CFG_PORT, FW_CFG_LENGTH),),
    )


def port_sinks(context: PlatformContext) -> PlacedDevice:
    """Ports Linux writes to for delays and POST codes; nothing behind them."""
    post, delay = PortSink(), PortSink()
    return PlacedDevice(
        "port sinks",
        post,
        (ports(POST_CODE_PORT, 1, post, "post-code"), ports(IO_DELAY_PORT, 1, delay, "io-delay")),
    )


def keyboard(context: PlatformContext) -> PlacedDevice:
    controller = I8042(context.stop, context.line(KEYBOARD_IRQ), context.line(AUX_IRQ))
    return PlacedDevice(
        "i8042",
        controller,
        (
            ports(I8042_DATA_PORT, I8042_PORT_LENGTH, controller.data_port(), "i8042 data"),
            ports(I8042_COMMAND_PORT, I8042_PORT_LENGTH, controller.command_port(), "i8042 command"),
        ),
        (keyboard_device(I8042_DATA_PORT, I8042_COMMAND_PORT, KEYBOARD_IRQ),),
    )


def rtc(context: PlatformContext) -> PlacedDevice:
    clock = CmosRtc(context.line(RTC_IRQ))
    memory = context.memory
    below_4g = sum(end - start for start, end in memory.ram_ranges() if end <= MMIO_HOLE_START)
    clock.set_memory_size(below_4g, memory.size - below_4g)
    return PlacedDevice(
        "cmos-rtc",
        clock,
        (ports(RTC_PORT, RTC_PORT_LENGTH, clock, "cmos-rtc"),),
        (rtc_device(RTC_PORT, RTC_IRQ),),
        on_close=clock.close,  # its interrupt thread must not outlive the VM
    )


# The GED of each machine (context): the GED row places it, and the VMGENID row
# notifies through it, whichever row runs first.
_GEDS: weakref.WeakKeyDictionary[PlatformContext, Ged] = weakref.WeakKeyDictionary()


def _ged(context: PlatformContext) -> Ged:
    ged = _GEDS.get(context)
    if ged is None:
        ged = _GEDS[context] = Ged(context.line(GED_GSI))
    return ged


def acpi_events(context: PlatformContext) -> PlacedDevice:
    """The Generic Event Device (pyvmm.devices.ged) and the control-method power button
    it notifies; its event port claimed as motherboard resources."""
    ged = _ged(context)
    events = (
        (int(GedEvent.POWER_BUTTON), f"\\_SB.{POWER_BUTTON_NAME}"),
        (int(GedEvent.GENERATION_ID), f"\\_SB.{GENERATION_ID_NAME}"),
    )
    return PlacedDevice(
        "ged",
        ged,
        (ports(GED_PORT, GED_LENGTH, ged, "ged"),),
        (
            generic_event_device(GED_PORT, GED_GSI, events),
            power_button_device(),
            motherboard_resources("GEDR", [(GED_PORT, GED_LENGTH)], uid=1),
        ),
    )


def vmgenid(context: PlatformContext) -> PlacedDevice:
    """The VM generation ID (pyvmm.devices.vmgenid) in the BIOS area's data page, a
    fresh random one per machine; changes are notified through the GED."""
    device = VmGenId(context.memory, VMGENID_ADDRESS, _ged(context).notify_generation_id)
    return PlacedDevice("vmgenid", device, (), (generation_id_device(VMGENID_ADDRESS),))


PC_PLATFORM: tuple[Callable[[PlatformContext], PlacedDevice], ...] = (
    serial,
    debug_exit,
    power,
    fw_cfg,
    port_sinks,
    keyboard,
    rtc,
    acpi_events,
    vmgenid,
)
