"""I8042 (with its keyboard) reset(), save() and restore()."""

from __future__ import annotations

import dataclasses

import pytest
from devices.i8042_harness import Controller

from pyvmm.devices.i8042 import Command, Config, Status
from pyvmm.devices.ps2_keyboard import KeyboardCommand
from pyvmm.errors import StateError


def answers(controller: Controller) -> list[int]:
    """Status and every queued byte, then the configuration byte and the keyboard's
    answers to a scan-code-set query and a resend."""
    values = []
    for _ in range(40):
        status = controller.status()
        values.append(status)
        if not status & Status.OBF:
            break
        values.append(controller.read())
    controller.command(Command.ENABLE_KBD)
    controller.command(Command.READ_RAM)
    values.append(controller.read())
    controller.send(KeyboardCommand.SCAN_CODE_SET)
    controller.send(0)
    controller.send(KeyboardCommand.RESEND)
    return values + controller.drain()


def driven() -> Controller:
    """Keyboard set to scan code set 3 and its LEDs lit, translation off, the keyboard
    interface disabled with an IDENTIFY reply queued, a controller reply pending and a
    command waiting for its data byte."""
    controller = Controller()
    controller.command(Command.WRITE_RAM, Config.KBD_INT | Config.SYS | Config.AUX_INT)
    controller.data.write(0, 1, KeyboardCommand.SCAN_CODE_SET)
    controller.data.write(0, 1, 3)
    controller.data.write(0, 1, KeyboardCommand.SET_LEDS)
    controller.data.write(0, 1, 0x05)
    while controller.status() & Status.OBF:
        controller.data.read(0, 1)
    controller.command(Command.WRITE_RAM + 5, 0x77)
    controller.command(Command.WRITE_AUX_BUFFER, 0x99)  # an auxiliary byte: IRQ 12
    controller.command(Command.DISABLE_KBD)
    controller.data.write(0, 1, KeyboardCommand.IDENTIFY)  # waits: the interface is off
    controller.command(Command.SELF_TEST)
    controller.command(Command.WRITE_OUTPUT_PORT)  # waits for its byte
    assert controller.aux_line.high
    return controller


def test_a_restored_controller_answers_as_the_saved_one() -> None:
    source = driven()
    state = source.device.save()
    assert state.pending == Command.WRITE_OUTPUT_PORT and state.output == (0x99, True, False)
    assert state.keyboard.scan_code_set == 3 and state.keyboard.leds == 5
    target = Controller()
    target.device.restore(state)
    assert target.aux_line.levels == [True] and not target.kbd_line.levels
    assert target.device.save() == state
    target.data.write(0, 1, 0x03)  # the pending WRITE_OUTPUT_PORT's byte: A20 and reset high
    source.data.write(0, 1, 0x03)
    assert answers(target) == answers(source)
    target.command(Command.READ_RAM + 5)
    assert target.data.read(0, 1) == 0x77


def test_reset_returns_to_power_on_answers() -> None:
    controller = driven()
    controller.device.reset()
    assert not controller.aux_line.high and not controller.kbd_line.high
    fresh = Controller()
    assert controller.device.save() == fresh.device.save()
    assert answers(controller) == answers(fresh)


VALID = driven().device.save()


@pytest.mark.parametrize(
    "changes",
    [
        {"ram": bytes(31)},
        {"output_port": 0x13},  # KBD_OBF is computed
        {"output": (0x100, False, False)},
        {"output": (1, False, True)},  # a timeout without the auxiliary bit
        {"output": [1, True, False]},
        {"output": None},  # replies cannot wait behind an empty buffer
        {"replies": ((1, False, False),) * 17},
        {"pending": 0xAA},  # SELF_TEST takes no data
        {"last_output": -1},
        {"last_write_was_command": 0},
        {"keyboard": dataclasses.replace(VALID.keyboard, scan_code_set=4)},
        {"keyboard": dataclasses.replace(VALID.keyboard, output=bytes(17))},
        {"keyboard": dataclasses.replace(VALID.keyboard, awaiting=0xF4)},
        {"keyboard": dataclasses.replace(VALID.keyboard, awaiting=0xED, key_list=True)},
        {"keyboard": dataclasses.replace(VALID.keyboard, leds=8)},
        {"keyboard": None},
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(changes: dict[str, object]) -> None:
    controller = driven()
    before = controller.device.save()
    with pytest.raises(StateError):
        controller.device.restore(dataclasses.replace(VALID, **changes))
    assert controller.device.save() == before
    assert controller.aux_line.levels == [True]


def test_keyboard_bytes_cannot_wait_behind_an_empty_buffer_while_enabled() -> None:
    state = dataclasses.replace(VALID, output=None, replies=(), ram=bytes([Config.KBD_INT]) + bytes(31))
    with pytest.raises(StateError, match="keyboard bytes wait"):
        Controller().device.restore(state)
