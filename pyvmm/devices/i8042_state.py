"""The saved state of the i8042 controller and its keyboard (`I8042.save` / `restore`),
and its checks.

An output byte is saved as a plain `(value, auxiliary, timeout)` tuple: the byte and
the status bits that come with it. The interrupt lines' levels are not saved: they
follow from the output buffer and the configuration byte, and `restore` drives the
lines to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.devices.i8042_registers import (
    CONTROLLER_RAM_SIZE,
    OUTPUT_QUEUE_LIMIT,
    Config,
    OutputPort,
    takes_data,
)
from pyvmm.devices.ps2_keyboard import KeyboardState, check_keyboard_state
from pyvmm.snapshot.checks import (
    check_bool,
    check_byte,
    check_bytes,
    check_tuple,
    check_type,
    fail,
)
from pyvmm.snapshot.registry import saved_state

DEVICE = "i8042"
OutputByte = tuple[int, bool, bool]  # value, auxiliary data (status bit 5), timeout (bit 6)
# The interrupt outputs read back through D0 are computed, never stored.
_COMPUTED_OUTPUT_PORT_BITS = OutputPort.KBD_OBF | OutputPort.AUX_OBF


@saved_state("i8042")
@dataclass(frozen=True)
class I8042State:
    """An `I8042`'s state as plain data, its keyboard's included."""

    ram: bytes  # the 32 bytes of controller RAM; byte 0 is the configuration byte
    output_port: int
    output: OutputByte | None  # the byte in the output buffer, if it is full
    last_output: int  # what reading an empty output buffer returns again
    replies: tuple[OutputByte, ...]  # the controller's own bytes queued behind it
    pending: int | None  # a command waiting for its byte on port 0x60
    last_write_was_command: bool
    keyboard: KeyboardState


def _check_byte_entry(name: str, entry: object) -> OutputByte:
    entry = check_tuple(DEVICE, name, entry, 3)
    if len(entry) != 3:
        raise fail(DEVICE, f"{name} is not a (value, aux, timeout) triple")
    value = check_byte(DEVICE, f"{name} value", entry[0])
    aux = check_bool(DEVICE, f"{name} aux", entry[1])
    timeout = check_bool(DEVICE, f"{name} timeout", entry[2])
    if timeout and not aux:
        # Only the auxiliary port times out (the "no mouse" reply).
        raise fail(DEVICE, f"{name} has the timeout bit without the auxiliary bit")
    return value, aux, timeout


def check_i8042_state(state: object) -> I8042State:
    """`state` as an `I8042State` whose fields are in range and agree; else `StateError`."""
    state = check_type(DEVICE, state, I8042State)
    ram = check_bytes(DEVICE, "ram", state.ram, CONTROLLER_RAM_SIZE, CONTROLLER_RAM_SIZE)
    output_port = check_byte(DEVICE, "output_port", state.output_port)
    if output_port & _COMPUTED_OUTPUT_PORT_BITS:
        raise fail(DEVICE, f"output_port {output_port:#x} stores the computed interrupt bits")
    if state.output is not None:
        _check_byte_entry("output", state.output)
    check_byte(DEVICE, "last_output", state.last_output)
    replies = check_tuple(DEVICE, "replies", state.replies, OUTPUT_QUEUE_LIMIT)
    for index, entry in enumerate(replies):
        _check_byte_entry(f"replies[{index}]", entry)
    if state.pending is not None and not takes_data(check_byte(DEVICE, "pending", state.pending)):
        raise fail(DEVICE, f"pending {state.pending:#x} is not a command that waits for data")
    check_bool(DEVICE, "last_write_was_command", state.last_write_was_command)
    keyboard = check_keyboard_state(state.keyboard)
    # The output buffer is refilled whenever it empties: with it empty, nothing can wait.
    if state.output is None and replies:
        raise fail(DEVICE, "controller replies wait behind an empty output buffer")
    if state.output is None and keyboard.output and not ram[0] & Config.KBD_DISABLE:
        raise fail(DEVICE, "keyboard bytes wait behind an empty output buffer")
    return state
