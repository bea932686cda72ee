"""A PS/2 MF2 keyboard with no keys pressed.

IBM PS/2 Technical Reference, "Keyboard and Auxiliary Device". The keyboard answers the
commands a driver sends (Linux's atkbd among them): it acknowledges them, identifies
itself as an MF2 keyboard, reports and selects the scan code set, resets with a passed
self test, resends its last byte and echoes. LEDs and the typematic rate are stored
only. After a set-3 key list command (FB-FD) it acknowledges key bytes until the next
command; any other byte that is not a command gets a resend request. Replies queue in
`output`, which holds as many bytes as a real keyboard's buffer and drops the rest.

The keyboard only talks to its controller: `pyvmm.devices.i8042` feeds it the bytes the
guest writes, collects its replies (translating them to scan code set 1 if asked) and
guards it with the controller's lock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from pyvmm.snapshot.checks import check_bool, check_byte, check_bytes, check_int, check_type, fail
from pyvmm.snapshot.registry import saved_state

KEYBOARD_BUFFER_SIZE = 16  # bytes a PS/2 keyboard holds for its controller


class KeyboardCommand(enum.IntEnum):
    """PS/2 keyboard commands (IBM PS/2 Technical Reference, "Keyboard and Auxiliary Device")."""

    SET_LEDS = 0xED  # + argument
    ECHO = 0xEE
    SCAN_CODE_SET = 0xF0  # + argument: 0 reads the current set, 1-3 select one
    IDENTIFY = 0xF2
    SET_TYPEMATIC = 0xF3  # + argument
    ENABLE = 0xF4
    DISABLE = 0xF5  # default disable
    SET_DEFAULTS = 0xF6
    ALL_TYPEMATIC = 0xF7  # F7-FA: set-3 key types for all keys
    ALL_MAKE_BREAK = 0xF8
    ALL_MAKE = 0xF9
    ALL_TYPEMATIC_MAKE_BREAK = 0xFA
    KEY_TYPEMATIC = 0xFB  # FB-FD: set-3 key types, followed by a list of keys
    KEY_MAKE_BREAK = 0xFC
    KEY_MAKE = 0xFD
    RESEND = 0xFE
    RESET = 0xFF


class KeyboardReply(enum.IntEnum):
    """The keyboard's replies to commands."""

    ACK = 0xFA
    SELF_TEST_PASSED = 0xAA  # after a reset (basic assurance test)
    ECHO = 0xEE
    RESEND = 0xFE


KEYBOARD_ID = (0xAB, 0x83)  # MF2 keyboard
DEFAULT_SCAN_CODE_SET = 2
DEFAULT_TYPEMATIC = 0x2B  # 10.9 characters a second after 500 ms

_KEYBOARD_COMMANDS = frozenset(int(command) for command in KeyboardCommand)
_WITH_ARGUMENT = frozenset(
    {KeyboardCommand.SET_LEDS, KeyboardCommand.SCAN_CODE_SET, KeyboardCommand.SET_TYPEMATIC}
)
_SET3_KEY_LISTS = frozenset(
    {KeyboardCommand.KEY_TYPEMATIC, KeyboardCommand.KEY_MAKE_BREAK, KeyboardCommand.KEY_MAKE}
)
_DEVICE = "ps2-keyboard"


@saved_state("ps2-keyboard")
@dataclass(frozen=True)
class KeyboardState:
    """A `PS2Keyboard`'s state as plain data (part of the i8042's)."""

    output: bytes  # replies not yet collected by the controller, oldest first
    scanning: bool
    scan_code_set: int
    leds: int
    typematic: int
    awaiting: int | None  # a command (ED, F0, F3) waiting for its argument byte
    key_list: bool  # after FB-FD: key bytes are acknowledged
    last_sent: int  # what RESEND sends again


def check_keyboard_state(state: object) -> KeyboardState:
    """`state` as a `KeyboardState` whose fields are in range and agree; else `StateError`."""
    state = check_type(_DEVICE, state, KeyboardState)
    check_bytes(_DEVICE, "output", state.output, 0, KEYBOARD_BUFFER_SIZE)
    check_bool(_DEVICE, "scanning", state.scanning)
    check_int(_DEVICE, "scan_code_set", state.scan_code_set, 1, 3)
    check_int(_DEVICE, "leds", state.leds, 0, 0x07)
    check_int(_DEVICE, "typematic", state.typematic, 0, 0x7F)
    check_bool(_DEVICE, "key_list", state.key_list)
    check_byte(_DEVICE, "last_sent", state.last_sent)
    if state.awaiting is not None:
        if check_byte(_DEVICE, "awaiting", state.awaiting) not in _WITH_ARGUMENT:
            raise fail(_DEVICE, f"awaiting {state.awaiting:#x} is not a command with an argument")
        if state.key_list:
            # A command ends a set-3 key list before it can wait for its argument.
            raise fail(_DEVICE, "awaiting an argument inside a set-3 key list")
    return state


class PS2Keyboard:
    """A PS/2 MF2 keyboard that answers commands and has no keys pressed.

    `receive()` takes a byte from the controller; replies queue in `output` for the
    controller to collect.
    """

    def __init__(self) -> None:
        self.output: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        """Back to the power-on state, with nothing queued for the controller."""
        self.output.clear()
        self.scanning = True
        self.scan_code_set = DEFAULT_SCAN_CODE_SET
        self.leds = 0
        self.typematic = DEFAULT_TYPEMATIC
        self._awaiting: KeyboardCommand | None = None  # a command waiting for its argument
        self._key_list = False  # after FB-FD, key bytes are acknowledged until a new command
        self._last_sent = KeyboardReply.ACK.value

    def save(self) -> KeyboardState:
        return KeyboardState(
            output=bytes(self.output),
            scanning=self.scanning,
            scan_code_set=int(self.scan_code_set),
            leds=int(self.leds),
            typematic=int(self.typematic),
            awaiting=None if self._awaiting is None else int(self._awaiting),
            key_list=self._key_list,
            last_sent=int(self._last_sent),
        )

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes)."""
        checked = check_keyboard_state(state)
        self.output = deque(checked.output)
        self.scanning = checked.scanning
        self.scan_code_set = checked.scan_code_set
        self.leds = checked.leds
        self.typematic = checked.typematic
        self._awaiting = None if checked.awaiting is None else KeyboardCommand(checked.awaiting)
        self._key_list = checked.key_list
        self._last_sent = checked.last_sent

    def receive(self, byte: int) -> None:
        if self._awaiting is not None:
            command, self._awaiting = self._awaiting, None
            self._argument(command, byte)
        elif byte in _KEYBOARD_COMMANDS:
            self._key_list = False
            self._command(KeyboardCommand(byte))
        elif self._key_list:
            self._send(KeyboardReply.ACK)
        else:
            self._send(KeyboardReply.RESEND)  # not a command

    def _command(self, command: KeyboardCommand) -> None:
        if command is KeyboardCommand.RESEND:
            self._send(self._last_sent)
            return
        if command is KeyboardCommand.ECHO:
            self._send(KeyboardReply.ECHO)
            return
        if command in (
            KeyboardCommand.ENABLE,
            KeyboardCommand.DISABLE,
            KeyboardCommand.SET_DEFAULTS,
            KeyboardCommand.RESET,
        ):
            self.output.clear()  # these discard what the keyboard had not sent yet
        self._send(KeyboardReply.ACK)
        if command in _WITH_ARGUMENT:
            self._awaiting = command
        elif command in _SET3_KEY_LISTS:
            self._key_list = True
        elif command is KeyboardCommand.IDENTIFY:
            for byte in KEYBOARD_ID:
                self._send(byte)
        elif command is KeyboardCommand.ENABLE:
            self.scanning = True
        elif command is KeyboardCommand.DISABLE:
            self._defaults()
            self.scanning = False
        elif command is KeyboardCommand.SET_DEFAULTS:
            self._defaults()
        elif command is KeyboardCommand.RESET:
            self._defaults()
            self.leds = 0
            self._send(KeyboardReply.SELF_TEST_PASSED)

    def _argument(self, command: KeyboardCommand, byte: int) -> None:
        if command is KeyboardCommand.SET_LEDS:
            self.leds = byte & 0x07
        elif command is KeyboardCommand.SET_TYPEMATIC:
            self.typematic = byte & 0x7F
        elif command is KeyboardCommand.SCAN_CODE_SET:
            if byte > 3:
                self._send(KeyboardReply.RESEND)
                return
            if byte == 0:
                self._send(KeyboardReply.ACK)
                self._send(self.scan_code_set)
                return
            self.scan_code_set = byte
        self._send(KeyboardReply.ACK)

    def _defaults(self) -> None:
        self.scanning = True
        self.scan_code_set = DEFAULT_SCAN_CODE_SET
        self.typematic = DEFAULT_TYPEMATIC

    def _send(self, byte: int) -> None:
        self._last_sent = int(byte)
        if len(self.output) < KEYBOARD_BUFFER_SIZE:
            self.output.append(int(byte))
