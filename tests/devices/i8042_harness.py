"""An I8042 as the controller tests drive it: reached only through its two port
adapters (data at 0x60, command/status at 0x64), as Linux's i8042 driver reaches it,
with fake interrupt lines and a fake stop request."""

from __future__ import annotations

from device_fakes import FakeLine, FakeStop

from pyvmm.devices import I8042
from pyvmm.devices.i8042 import Command, Status


class Controller:
    """An I8042 reached only through its two port adapters, with fake lines and stop."""

    def __init__(self) -> None:
        self.stop = FakeStop()
        self.kbd_line = FakeLine()
        self.aux_line = FakeLine()
        self.device = I8042(self.stop, self.kbd_line, self.aux_line)
        self.data = self.device.data_port()
        self.command_port = self.device.command_port()

    def status(self) -> int:
        return self.command_port.read(0, 1)

    def command(self, command: int, *data: int) -> None:
        self.command_port.write(0, 1, command)
        for byte in data:
            self.data.write(0, 1, byte)

    def send(self, byte: int) -> None:
        self.data.write(0, 1, byte)

    def read(self) -> int:
        return self.data.read(0, 1)

    def drain(self) -> list[int]:
        """Read bytes while OBF is set, as Linux's i8042_flush does."""
        received: list[int] = []
        while self.status() & Status.OBF and len(received) < 64:
            received.append(self.read())
        return received

    def query(self, command: int, *data: int) -> list[int]:
        self.command(command, *data)
        return self.drain()

    def config(self) -> int:
        [value] = self.query(Command.READ_RAM)
        return value

    def set_config(self, value: int) -> None:
        self.command(Command.WRITE_RAM, value)
