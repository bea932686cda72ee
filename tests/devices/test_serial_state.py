"""Serial16550 reset(), save() and restore(): a restored UART answers as the saved one."""

from __future__ import annotations

import dataclasses

import pytest
from device_fakes import FakeLine

from pyvmm.devices import Serial16550
from pyvmm.devices.serial import Fcr, Ier, InterruptId, Lcr, Lsr, Mcr, Msr, Register
from pyvmm.devices.serial_state import SerialState
from pyvmm.errors import StateError


class Uart:
    def __init__(self) -> None:
        self.line = FakeLine()
        self.output: list[bytes] = []
        self.device = Serial16550(self.line, self.output.append, host_buffer_size=64)

    def get(self, register: int) -> int:
        return self.device.read(register, 1)

    def put(self, register: int, value: int) -> None:
        self.device.write(register, 1, value)


def driven() -> Uart:
    """A UART as Linux's 8250 driver leaves it, with input waiting behind a full FIFO."""
    uart = Uart()
    uart.put(Register.LCR, Lcr.DLAB | 0x03)
    uart.put(Register.DLL, 0x01)
    uart.put(Register.DLM, 0x00)
    uart.put(Register.LCR, 0x1B)  # 8 bits, even parity
    uart.put(Register.IIR_FCR, Fcr.ENABLE | 0x80)  # trigger level 8
    uart.put(Register.MCR, Mcr.DTR | Mcr.RTS | Mcr.OUT2)
    uart.put(Register.SCR, 0x5A)
    uart.put(Register.IER, Ier.ERBFI | Ier.EDSSI)
    uart.device.feed(bytes(range(0x41, 0x41 + 20)))
    assert uart.line.high
    return uart


def answers(uart: Uart) -> list[int]:
    """Every register as a guest reads it, then the whole receive stream and a transmit."""
    values = [uart.get(register) for register in range(8)]
    uart.put(Register.LCR, uart.get(Register.LCR) | Lcr.DLAB)
    values += [uart.get(Register.DLL), uart.get(Register.DLM)]
    uart.put(Register.LCR, uart.get(Register.LCR) & ~Lcr.DLAB)
    while uart.get(Register.LSR) & Lsr.DR:
        values.append(uart.get(Register.RBR_THR))
        values.append(uart.get(Register.IIR_FCR))
    values.append(int(uart.line.high))
    uart.put(Register.RBR_THR, ord("x"))  # to the host, or back to the receiver in loopback
    return [*values, *b"".join(uart.output), uart.get(Register.LSR), uart.get(Register.RBR_THR)]


def test_a_restored_uart_answers_every_register_as_the_saved_one() -> None:
    source = driven()
    state = source.device.save()
    assert state.rx_fifo == bytes(range(0x41, 0x41 + 16)) and len(state.host_input) == 4
    target = Uart()
    target.device.restore(state)
    assert target.line.levels == [True]  # the pending receive interrupt, re-derived
    assert target.device.save() == state
    assert answers(target) == answers(source)


def test_loopback_overrun_and_modem_deltas_survive() -> None:
    source = Uart()
    source.put(Register.IER, Ier.ELSI | Ier.EDSSI)
    source.put(Register.MCR, Mcr.LOOP | Mcr.DTR | Mcr.OUT1)
    source.put(Register.RBR_THR, 1)
    source.put(Register.RBR_THR, 2)  # FIFOs off: one byte holds, the second overruns
    source.device.feed(b"wait")  # held back while looped
    target = Uart()
    target.device.restore(source.device.save())
    assert target.get(Register.IIR_FCR) == InterruptId.LINE_STATUS
    # DTR and OUT1 loop back as DSR and RI; CTS and DCD fell on entering loopback.
    assert target.get(Register.MSR) == source.get(Register.MSR) == Msr.DSR | Msr.RI | Msr.DCTS | Msr.DDCD
    assert answers(target) == answers(source)


def test_reset_returns_to_power_on_answers_and_lowers_the_line() -> None:
    uart = driven()
    uart.device.reset()
    assert not uart.line.high
    fresh = Uart()
    assert uart.device.save() == fresh.device.save()
    assert answers(uart) == answers(fresh)
    uart.device.feed(b"k")  # still wired to the host
    assert uart.get(Register.RBR_THR) == ord("k")


VALID = driven().device.save()


@pytest.mark.parametrize(
    "changes",
    [
        {"divisor": 0x10000},
        {"divisor": True},
        {"ier": 0x10},
        {"fcr": Fcr.CLEAR_RX},
        {"lcr": -1},
        {"mcr": 0x20},
        {"msr": 0xF0},  # RI: a line the always-connected modem never raises
        {"scr": "5A"},
        {"overrun": 1},
        {"rx_fifo": bytes(17)},
        {"rx_fifo": bytearray(4)},
        {"fcr": 0, "rx_fifo": b"ab"},  # FIFOs off: the receiver holds one byte
        {"host_input": bytes(65)},  # more than this UART's host buffer
        {"rx_fifo": b"a", "host_input": b"b"},  # input cannot wait while the FIFO has room
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(changes: dict[str, object]) -> None:
    uart = driven()
    before = uart.device.save()
    levels = list(uart.line.levels)
    with pytest.raises(StateError):
        uart.device.restore(dataclasses.replace(VALID, **changes))
    assert uart.device.save() == before
    assert uart.line.levels == levels


def test_not_a_serial_state_is_refused() -> None:
    with pytest.raises(StateError, match="expected SerialState"):
        Uart().device.restore(dataclasses.asdict(VALID))
    assert isinstance(VALID, SerialState)
