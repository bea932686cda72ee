"""The 8042 keyboard controller's registers and commands (IBM PC AT / PS/2 Technical
Reference): the status register, the configuration byte, the output port and the
command set. `pyvmm.devices.i8042` is the controller; `pyvmm.devices.i8042_state` its
saved state.
"""

from __future__ import annotations

import enum

from pyvmm.devices.ps2_keyboard import KEYBOARD_BUFFER_SIZE

CONTROLLER_RAM_SIZE = 32  # byte 0 is the configuration byte
OUTPUT_QUEUE_LIMIT = KEYBOARD_BUFFER_SIZE  # the controller's own replies, bounded like the keyboard's


class Status(enum.IntFlag):
    """Status register (read from port 0x64)."""

    OBF = 0x01  # output buffer full: a byte waits at port 0x60
    IBF = 0x02  # input buffer full: never, writes are taken at once
    SYS = 0x04  # system flag, a copy of configuration bit 2
    CMD = 0x08  # the last write went to port 0x64 (a command), not 0x60
    UNLOCKED = 0x10  # keyboard inhibit switch off
    AUX_DATA = 0x20  # the output byte comes from the auxiliary port
    TIMEOUT = 0x40
    PARITY = 0x80


class Config(enum.IntFlag):
    """The controller configuration ("command") byte, controller RAM byte 0."""

    KBD_INT = 0x01  # IRQ 1 when a keyboard byte is in the output buffer
    AUX_INT = 0x02  # IRQ 12 when an auxiliary byte is in the output buffer
    SYS = 0x04
    IGNORE_LOCK = 0x08
    KBD_DISABLE = 0x10  # keyboard clock held low
    AUX_DISABLE = 0x20  # auxiliary clock held low
    TRANSLATE = 0x40  # translate keyboard bytes from scan code set 2 to set 1


# What a BIOS leaves: keyboard enabled with its interrupt and translation, POST passed,
# auxiliary port disabled until a driver wants it.
INITIAL_CONFIG = Config.KBD_INT | Config.SYS | Config.AUX_DISABLE | Config.TRANSLATE


class OutputPort(enum.IntFlag):
    """The controller's output port (commands D0 / D1)."""

    RESET = 0x01  # CPU reset line, active low
    A20 = 0x02  # A20 gate; stored only
    KBD_OBF = 0x10  # the keyboard interrupt output (read back only)
    AUX_OBF = 0x20  # the auxiliary interrupt output (read back only)


INITIAL_OUTPUT_PORT = OutputPort.RESET | OutputPort.A20


class Command(enum.IntEnum):
    """Controller commands, written to port 0x64."""

    READ_RAM = 0x20  # 0x20-0x3F read controller RAM byte (0x20: configuration byte)
    WRITE_RAM = 0x60  # 0x60-0x7F write it, with the next byte on port 0x60
    DISABLE_AUX = 0xA7
    ENABLE_AUX = 0xA8
    TEST_AUX = 0xA9
    SELF_TEST = 0xAA
    TEST_KBD = 0xAB
    DISABLE_KBD = 0xAD
    ENABLE_KBD = 0xAE
    READ_OUTPUT_PORT = 0xD0
    WRITE_OUTPUT_PORT = 0xD1
    WRITE_KBD_BUFFER = 0xD2  # next byte appears as if the keyboard sent it
    WRITE_AUX_BUFFER = 0xD3  # next byte appears as if the auxiliary device sent it
    WRITE_AUX = 0xD4  # next byte goes to the auxiliary device
    PULSE_OUTPUT = 0xF0  # 0xF0-0xFF pulse output port bits 0-3 where the command bit is 0
    RESET = 0xFE  # pulse bit 0 only: reset the CPU


RAM_COMMANDS = CONTROLLER_RAM_SIZE  # READ_RAM / WRITE_RAM each cover 32 commands
SELF_TEST_PASSED = 0x55
INTERFACE_OK = 0x00
NO_DEVICE_REPLY = 0xFE  # with Status.TIMEOUT: nothing answered on the auxiliary port

COMMANDS_WITH_DATA = frozenset(
    {Command.WRITE_OUTPUT_PORT, Command.WRITE_KBD_BUFFER, Command.WRITE_AUX_BUFFER, Command.WRITE_AUX}
)


def takes_data(command: int) -> bool:
    """Whether `command` waits for a byte on the data port."""
    return Command.WRITE_RAM <= command < Command.WRITE_RAM + RAM_COMMANDS or command in COMMANDS_WITH_DATA
