"""The PC keyboard controller (Intel 8042 as in the IBM PC AT / PS/2 Technical Reference).

Modelled for Linux's i8042 driver, atkbd and the reboot path: the status register and
the controller's command set, with the PS/2 keyboard of `pyvmm.devices.ps2_keyboard`
attached and an auxiliary (mouse) port with nothing plugged in. No keys are ever
pressed: there is no host keyboard input, so the device only produces replies to what
the guest sends.

Ports. The controller owns I/O 0x60 (data) and 0x64 (status / command) but not 0x61-0x63
in between: 0x61 is the chipset's NMI status / speaker port, which KVM's in-kernel PIT
serves. So the controller is not itself a bus device; it hands out two one-byte
adapters, `data_port()` and `command_port()`, that the machine inserts at
`I8042_DATA_PORT` and `I8042_COMMAND_PORT`.

Output buffer. The controller has one output byte (status OBF). Bytes queue behind it
from three sources: the controller's own replies (command results, the D2/D3 loopback
writes, the "no mouse" reply) first, then the keyboard's replies. Keyboard bytes wait
while the keyboard interface is disabled (configuration byte bit 4), as a keyboard
cannot clock data out while the controller holds its clock line low. A byte from the
keyboard side raises IRQ 1 and one marked as auxiliary data (status bit 5) raises IRQ 12,
each only while the configuration byte enables that interrupt. The lines are levels
that follow "output buffer full": a read of the data port lowers the line, and the next
queued byte raises it again, so an edge-triggered PIC sees one edge per byte.

The auxiliary port has no device. A byte sent to it (command D4) is answered, as a PS/2
controller does when the mouse does not respond, by 0xFE with the timeout (bit 6) and
auxiliary (bit 5) status bits. Linux's psmouse then aborts its probe at the first
command instead of waiting out a timeout per command, and registers no mouse.
Answering ACKs instead would make psmouse believe in a mouse and walk its long list of
protocol probes, each ending in a timeout.

Reset. Command 0xFE (and any pulse command F0-FE with bit 0 clear) pulses the CPU reset
line, as does an output-port write (D1) with bit 0 clear; both end the VM with
`ExitKind.REBOOT`. The A20 gate bit of the output port is stored only: KVM has no A20
masking.

Locking: one lock guards all state. The interrupt lines are driven with it held (they
must not call back into the device); `stop` is called after it is released.

The registers and commands are in `pyvmm.devices.i8042_registers`, the saved state
(`save()`, `restore()`, the keyboard's included) in `pyvmm.devices.i8042_state`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import NamedTuple

from pyvmm.bus import all_ones
from pyvmm.devices.i8042_registers import (
    CONTROLLER_RAM_SIZE,
    INITIAL_CONFIG,
    INITIAL_OUTPUT_PORT,
    INTERFACE_OK,
    NO_DEVICE_REPLY,
    OUTPUT_QUEUE_LIMIT,
    RAM_COMMANDS,
    SELF_TEST_PASSED,
    Command,
    Config,
    OutputPort,
    Status,
    takes_data,
)
from pyvmm.devices.i8042_state import I8042State, check_i8042_state
from pyvmm.devices.ps2_keyboard import PS2Keyboard
from pyvmm.outcome import ExitKind, GuestExit, InterruptLine, StopRequest

logger = logging.getLogger(__name__)

I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64  # status register on reads
I8042_PORT_LENGTH = 1
KEYBOARD_IRQ = 1
AUX_IRQ = 12


# The controller's set 2 → set 1 translation for the bytes this keyboard can send:
# the second ID byte and the scan code set numbers (translated replies 0x41, 0x43, 0x3F).
# ACK, resend, echo, the test results and 0xAB pass through unchanged.
_TRANSLATED = {0x01: 0x43, 0x02: 0x41, 0x03: 0x3F, 0x83: 0x41}


class _Byte(NamedTuple):
    """A byte for the output buffer, with the status bits that go with it."""

    value: int
    aux: bool = False
    timeout: bool = False


class I8042Port:
    """One of the controller's two I/O ports as a one-byte bus device."""

    def __init__(self, controller: I8042, command: bool) -> None:
        self._controller = controller
        self._command = command

    def read(self, offset: int, size: int) -> int:
        byte = self._controller.read_status() if self._command else self._controller.read_data()
        # Bytes of a wider access past this one-byte port read as an empty bus.
        return byte | (all_ones(size) & ~0xFF)

    def write(self, offset: int, size: int, value: int) -> None:
        if self._command:
            self._controller.write_command(value & 0xFF)
        else:
            self._controller.write_data(value & 0xFF)


class I8042:
    """The 8042 keyboard controller with a keyboard attached and an empty auxiliary port."""

    def __init__(self, stop: StopRequest, keyboard_irq: InterruptLine, aux_irq: InterruptLine) -> None:
        self._stop = stop
        self._keyboard_irq = keyboard_irq
        self._aux_irq = aux_irq
        self._lock = threading.Lock()
        self._keyboard_level = False
        self._aux_level = False

        self._ram = bytearray(CONTROLLER_RAM_SIZE)
        self._replies: deque[_Byte] = deque()  # the controller's own bytes
        self.keyboard = PS2Keyboard()
        self._power_on()

        self._data_port = I8042Port(self, command=False)
        self._command_port = I8042Port(self, command=True)

    def data_port(self) -> I8042Port:
        """The bus device for I/O 0x60."""
        return self._data_port

    def command_port(self) -> I8042Port:
        """The bus device for I/O 0x64 (status on reads, commands on writes)."""
        return self._command_port

    @property
    def config(self) -> int:
        """The controller configuration byte."""
        return self._ram[0]

    # --- reset and saved state --------------------------------------------------------

    def _power_on(self) -> None:
        self._ram[:] = bytes(CONTROLLER_RAM_SIZE)
        self._ram[0] = INITIAL_CONFIG
        self._output_port = int(INITIAL_OUTPUT_PORT)
        self._output: _Byte | None = None
        self._last_output = 0  # what reading an empty output buffer returns again
        self._replies.clear()
        self._pending: int | None = None  # a command waiting for its byte on port 0x60
        self._last_write_was_command = False
        self.keyboard.reset()

    def reset(self) -> None:
        """Controller and keyboard back to their power-on state; both lines low."""
        with self._lock:
            self._power_on()
            self._update_irq()

    def save(self) -> I8042State:
        with self._lock:
            output = self._output
            return I8042State(
                ram=bytes(self._ram),
                output_port=self._output_port,
                output=None if output is None else (output.value, output.aux, output.timeout),
                last_output=self._last_output,
                replies=tuple((byte.value, byte.aux, byte.timeout) for byte in self._replies),
                pending=self._pending,
                last_write_was_command=self._last_write_was_command,
                keyboard=self.keyboard.save(),
            )

    def restore(self, state: object) -> None:
        """Take `state` (checked first, the keyboard's too: a bad one raises
        `StateError` and changes nothing), then drive IRQ 1 and IRQ 12 to the levels
        the output buffer and the configuration byte give."""
        checked = check_i8042_state(state)
        with self._lock:
            self._ram[:] = checked.ram
            self._output_port = checked.output_port
            self._output = None if checked.output is None else _Byte(*checked.output)
            self._last_output = checked.last_output
            self._replies = deque(_Byte(*entry) for entry in checked.replies)
            self._pending = checked.pending
            self._last_write_was_command = checked.last_write_was_command
            self.keyboard.restore(checked.keyboard)
            self._update_irq()

    # --- guest side ------------------------------------------------------------------

    def read_status(self) -> int:
        with self._lock:
            status = Status.UNLOCKED
            if self._ram[0] & Config.SYS:
                status |= Status.SYS
            if self._last_write_was_command:
                status |= Status.CMD
            byte = self._output
            if byte is not None:
                status |= Status.OBF
                if byte.aux:
                    status |= Status.AUX_DATA
                if byte.timeout:
                    status |= Status.TIMEOUT
            return int(status)

    def read_data(self) -> int:
        with self._lock:
            byte = self._output
            if byte is not None:
                self._last_output = byte.value
                self._output = None
                self._update_irq()  # the line drops, so the next byte is a new edge
                self._refill()
                self._update_irq()
            return self._last_output

    def write_command(self, command: int) -> None:
        with self._lock:
            self._last_write_was_command = True
            self._pending = None
            reset = self._command(command)
            self._refill()
            self._update_irq()
        if reset:
            self._reset()

    def write_data(self, value: int) -> None:
        with self._lock:
            self._last_write_was_command = False
            command, self._pending = self._pending, None
            reset = False
            if command is None:
                self.keyboard.receive(value)
            else:
                reset = self._command_data(command, value)
            self._refill()
            self._update_irq()
        if reset:
            self._reset()

    # --- commands --------------------------------------------------------------------

    def _command(self, command: int) -> bool:
        """Run a controller command; True when it resets the CPU."""
        if Command.READ_RAM <= command < Command.READ_RAM + RAM_COMMANDS:
            self._reply(self._ram[command - Command.READ_RAM])
        elif takes_data(command):
            self._pending = command
        elif command == Command.DISABLE_AUX:
            self._ram[0] |= Config.AUX_DISABLE
        elif command == Command.ENABLE_AUX:
            self._ram[0] &= ~int(Config.AUX_DISABLE)
        elif command in (Command.TEST_AUX, Command.TEST_KBD):
            self._reply(INTERFACE_OK)
        elif command == Command.SELF_TEST:
            self._reply(SELF_TEST_PASSED)
        elif command == Command.DISABLE_KBD:
            self._ram[0] |= Config.KBD_DISABLE
        elif command == Command.ENABLE_KBD:
            self._ram[0] &= ~int(Config.KBD_DISABLE)
        elif command == Command.READ_OUTPUT_PORT:
            self._reply(self._read_output_port())
        elif command >= Command.PULSE_OUTPUT:
            # Bits 0-3 clear in the command are the output port bits pulsed low.
            return not command & OutputPort.RESET
        else:
            logger.debug("i8042: ignored controller command %#x", command)
        return False

    def _command_data(self, command: int, value: int) -> bool:
        """The byte a command waited for; True when it resets the CPU."""
        if Command.WRITE_RAM <= command < Command.WRITE_RAM + RAM_COMMANDS:
            self._ram[command - Command.WRITE_RAM] = value
        elif command == Command.WRITE_OUTPUT_PORT:
            self._output_port = value & ~int(OutputPort.KBD_OBF | OutputPort.AUX_OBF)
            if not value & OutputPort.A20:
                logger.debug("i8042: guest cleared the A20 gate; KVM keeps A20 enabled")
            return not value & OutputPort.RESET
        elif command == Command.WRITE_KBD_BUFFER:
            self._reply(value)
        elif command == Command.WRITE_AUX_BUFFER:
            self._reply(value, aux=True)
        elif command == Command.WRITE_AUX:
            self._reply(NO_DEVICE_REPLY, aux=True, timeout=True)
        return False

    def _read_output_port(self) -> int:
        value = self._output_port
        if self._keyboard_level:
            value |= OutputPort.KBD_OBF
        if self._aux_level:
            value |= OutputPort.AUX_OBF
        return value

    def _reset(self) -> None:
        logger.debug("i8042: guest pulsed the reset line")
        self._stop(GuestExit(ExitKind.REBOOT, "reset through the i8042"))

    # --- output buffer and interrupts ------------------------------------------------

    def _reply(self, value: int, *, aux: bool = False, timeout: bool = False) -> None:
        if len(self._replies) < OUTPUT_QUEUE_LIMIT:
            self._replies.append(_Byte(value, aux, timeout))

    def _refill(self) -> None:
        """Load the next byte into an empty output buffer."""
        if self._output is not None:
            return
        if self._replies:
            self._output = self._replies.popleft()
        elif self.keyboard.output and not self._ram[0] & Config.KBD_DISABLE:
            value = self.keyboard.output.popleft()
            if self._ram[0] & Config.TRANSLATE:
                value = _TRANSLATED.get(value, value)
            self._output = _Byte(value)

    def _update_irq(self) -> None:
        byte = self._output
        config = self._ram[0]
        keyboard = byte is not None and not byte.aux and bool(config & Config.KBD_INT)
        aux = byte is not None and byte.aux and bool(config & Config.AUX_INT)
        if keyboard != self._keyboard_level:
            self._keyboard_level = keyboard
            self._keyboard_irq.set_level(keyboard)
        if aux != self._aux_level:
            self._aux_level = aux
            self._aux_irq.set_level(aux)
