"""The PS/2 keyboard on its own: the replies it queues for its controller."""

from __future__ import annotations

from pyvmm.devices.ps2_keyboard import KEYBOARD_BUFFER_SIZE, KeyboardCommand, PS2Keyboard

ACK = 0xFA


def replies(keyboard: PS2Keyboard, *data: int) -> list[int]:
    """Send bytes to the keyboard, then take what it queued, as the controller does."""
    for byte in data:
        keyboard.receive(byte)
    queued = list(keyboard.output)
    keyboard.output.clear()
    return queued


def test_reset_and_simple_commands() -> None:
    keyboard = PS2Keyboard()
    assert replies(keyboard, KeyboardCommand.RESET) == [ACK, 0xAA]
    assert replies(keyboard, KeyboardCommand.DISABLE) == [ACK]
    assert not keyboard.scanning
    assert replies(keyboard, KeyboardCommand.ENABLE) == [ACK]
    assert keyboard.scanning
    assert replies(keyboard, KeyboardCommand.SET_LEDS) == [ACK]
    assert replies(keyboard, 0x07) == [ACK]
    assert keyboard.leds == 7
    assert replies(keyboard, KeyboardCommand.SET_TYPEMATIC, 0x20) == [ACK, ACK]
    assert keyboard.typematic == 0x20
    assert replies(keyboard, KeyboardCommand.SET_DEFAULTS) == [ACK]
    assert keyboard.typematic == 0x2B


def test_unknown_resend_and_echo() -> None:
    keyboard = PS2Keyboard()
    # 0xF1 is not a keyboard command, nor is a plain byte.
    assert replies(keyboard, 0xF1, 0x12) == [0xFE, 0xFE]
    assert replies(keyboard, KeyboardCommand.ECHO, KeyboardCommand.RESEND) == [0xEE, 0xEE]
    # Set 3: a list of keys follows, each acknowledged.
    assert replies(keyboard, KeyboardCommand.KEY_MAKE, 0x1C, 0x32) == [ACK, ACK, ACK]


def test_scan_code_set_is_read_and_selected() -> None:
    keyboard = PS2Keyboard()
    assert replies(keyboard, KeyboardCommand.SCAN_CODE_SET, 0) == [ACK, ACK, 2]
    assert replies(keyboard, KeyboardCommand.SCAN_CODE_SET, 3) == [ACK, ACK]
    assert keyboard.scan_code_set == 3
    assert replies(keyboard, KeyboardCommand.SCAN_CODE_SET, 9) == [ACK, 0xFE]


def test_output_holds_one_keyboard_buffer() -> None:
    keyboard = PS2Keyboard()
    for _ in range(100):
        keyboard.receive(KeyboardCommand.ECHO)
    assert len(keyboard.output) == KEYBOARD_BUFFER_SIZE
