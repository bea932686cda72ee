"""The 16550A through its registers, as a polling guest and Linux's 8250 driver use it."""

from __future__ import annotations

import threading

from device_fakes import FakeLine

from pyvmm.devices import Serial16550
from pyvmm.devices.serial import Fcr, Ier, InterruptId, Lcr, Lsr, Mcr, Msr, Register


class Uart:
    """A Serial16550 with its output collected, and byte-wide register helpers."""

    def __init__(self, line: FakeLine, **kwargs: int) -> None:
        self.output: list[bytes] = []
        self.device = Serial16550(line, self.output.append, **kwargs)

    def get(self, register: int) -> int:
        return self.device.read(register, 1)

    def put(self, register: int, value: int) -> None:
        self.device.write(register, 1, value)

    @property
    def sent(self) -> bytes:
        return b"".join(self.output)


def iir_id(value: int) -> int:
    return value & 0x0F


def test_reset_state(line: FakeLine) -> None:
    uart = Uart(line)
    assert uart.get(Register.IER) == 0
    assert uart.get(Register.IIR_FCR) == InterruptId.NONE
    assert uart.get(Register.LSR) == Lsr.THRE | Lsr.TEMT
    assert uart.get(Register.MSR) == Msr.CTS | Msr.DSR | Msr.DCD
    assert not line.high


def test_divisor_latch(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IER, Ier.ERBFI)
    uart.put(Register.LCR, Lcr.DLAB | 0x03)
    uart.put(Register.DLL, 0x01)
    uart.put(Register.DLM, 0x02)
    assert uart.get(Register.DLL) == 0x01
    assert uart.get(Register.DLM) == 0x02
    assert uart.device.divisor == 0x0201
    assert uart.output == []  # the DLL write did not transmit
    uart.put(Register.LCR, 0x03)
    assert uart.get(Register.LCR) == 0x03
    assert uart.get(Register.IER) == Ier.ERBFI  # the DLM write did not touch IER


def test_scratch(line: FakeLine) -> None:
    uart = Uart(line)
    for value in (0x00, 0x5A, 0xA5, 0xFF):
        uart.put(Register.SCR, value)
        assert uart.get(Register.SCR) == value


def test_ier_keeps_only_the_four_16550_bits(line: FakeLine) -> None:
    # Linux's autoconfig: IER written with 0 reads 0, written with 0x0F reads 0x0F.
    uart = Uart(line)
    uart.put(Register.IER, 0xFF)
    assert uart.get(Register.IER) == 0x0F
    uart.put(Register.IER, 0)
    assert uart.get(Register.IER) == 0


def test_polling_transmit(line: FakeLine) -> None:
    uart = Uart(line)
    for byte in b"hi\n":
        assert uart.get(Register.LSR) & Lsr.THRE
        uart.put(Register.RBR_THR, byte)
    assert uart.sent == b"hi\n"
    assert uart.get(Register.LSR) == Lsr.THRE | Lsr.TEMT
    assert uart.device.tx_bytes == 3
    assert not line.levels  # nothing enabled, the line never moved


def test_lsr_data_ready_follows_the_receiver(line: FakeLine) -> None:
    uart = Uart(line)
    uart.device.feed(b"x")
    assert uart.get(Register.LSR) == Lsr.DR | Lsr.THRE | Lsr.TEMT
    assert uart.get(Register.RBR_THR) == ord("x")
    assert uart.get(Register.LSR) == Lsr.THRE | Lsr.TEMT
    assert uart.device.rx_bytes == 1


def test_fifo_enable_shows_in_iir(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IIR_FCR, Fcr.ENABLE)
    assert uart.get(Register.IIR_FCR) >> 6 == 3  # Linux: "16550A"
    uart.put(Register.IIR_FCR, 0)
    assert uart.get(Register.IIR_FCR) >> 6 == 0


def test_thre_interrupt_after_enabling_etbei(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.MCR, Mcr.OUT2)
    uart.put(Register.IER, Ier.ETBEI)
    assert line.high
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.THR_EMPTY
    # Reading IIR acknowledged it.
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.NONE
    assert not line.high
    # Writing THR empties THR again at once: a new THRE interrupt.
    uart.put(Register.RBR_THR, ord("a"))
    assert line.high
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.THR_EMPTY
    # Disabling ETBEI drops it.
    uart.put(Register.RBR_THR, ord("b"))
    uart.put(Register.IER, 0)
    assert not line.high
    assert uart.sent == b"ab"


def test_linux_thre_startup_test(line: FakeLine) -> None:
    # serial8250_do_startup: after IER=THRI the IIR must not say "no interrupt".
    uart = Uart(line)
    uart.put(Register.IER, Ier.ETBEI)
    uart.get(Register.LSR)
    assert not uart.get(Register.IIR_FCR) & 0x01
    uart.put(Register.IER, 0)
    uart.put(Register.IER, Ier.ETBEI)
    assert not uart.get(Register.IIR_FCR) & 0x01


def test_interrupt_priorities(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.MCR, Mcr.LOOP)
    # Non-FIFO receiver holds one byte: the second loopback byte overruns.
    uart.put(Register.RBR_THR, 0x11)
    uart.put(Register.RBR_THR, 0x22)
    uart.put(Register.MCR, Mcr.LOOP | Mcr.DTR)  # DSR changes: modem status delta
    uart.put(Register.IER, Ier.ALL)

    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.LINE_STATUS
    assert uart.get(Register.LSR) & Lsr.OE
    assert not uart.get(Register.LSR) & Lsr.OE  # reading LSR cleared OE

    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.RX_DATA
    assert uart.get(Register.RBR_THR) == 0x11

    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.THR_EMPTY
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.MODEM_STATUS
    assert uart.get(Register.MSR) & Msr.DDSR
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.NONE


def test_loopback_msr_as_linux_autoconfig_probes(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.MCR, Mcr.LOOP | 0x0A)  # LOOP | RTS | OUT2
    assert uart.get(Register.MSR) & 0xF0 == 0x90  # CTS | DCD
    uart.put(Register.MCR, Mcr.LOOP | Mcr.DTR | Mcr.RTS | Mcr.OUT1 | Mcr.OUT2)
    assert uart.get(Register.MSR) & 0xF0 == Msr.CTS | Msr.DSR | Msr.RI | Msr.DCD
    uart.put(Register.MCR, Mcr.LOOP)
    msr = uart.get(Register.MSR)
    assert msr & 0xF0 == 0
    assert msr & Msr.DELTAS == Msr.DCTS | Msr.DDSR | Msr.TERI | Msr.DDCD
    assert uart.get(Register.MSR) & Msr.DELTAS == 0  # reading cleared the deltas
    uart.put(Register.MCR, Mcr.OUT2)
    assert uart.get(Register.MSR) & 0xF0 == Msr.CTS | Msr.DSR | Msr.DCD


def test_loopback_round_trip(line: FakeLine) -> None:
    uart = Uart(line)
    uart.device.feed(b"h")  # host input waits while the receiver is looped back
    uart.put(Register.MCR, Mcr.LOOP)
    assert uart.get(Register.RBR_THR) == ord("h")  # already in the receiver
    uart.put(Register.IIR_FCR, Fcr.ENABLE)
    uart.device.feed(b"q")
    for byte in b"\x55\xaa":
        uart.put(Register.RBR_THR, byte)
    assert uart.get(Register.LSR) & Lsr.DR
    assert uart.get(Register.RBR_THR) == 0x55
    assert uart.get(Register.RBR_THR) == 0xAA
    assert not uart.get(Register.LSR) & Lsr.DR
    assert uart.output == []
    uart.put(Register.MCR, 0)  # back on the wire: the waiting host byte arrives
    assert uart.get(Register.RBR_THR) == ord("q")


def test_loopback_holds_the_irq_low(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IER, Ier.ETBEI)
    uart.put(Register.MCR, Mcr.OUT2 | Mcr.LOOP)
    assert not line.high
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.THR_EMPTY


def test_rx_fifo_trigger_and_timeout(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IIR_FCR, Fcr.ENABLE | Fcr.CLEAR_RX | Fcr.CLEAR_TX | 0x40)  # trigger 4
    uart.put(Register.MCR, Mcr.OUT2)
    uart.put(Register.IER, Ier.ERBFI)
    assert not line.high

    uart.device.feed(b"ab")
    assert line.high
    assert uart.get(Register.IIR_FCR) == 0xC0 | InterruptId.CHAR_TIMEOUT
    uart.device.feed(b"cd")
    assert uart.get(Register.IIR_FCR) == 0xC0 | InterruptId.RX_DATA

    received = bytes(uart.get(Register.RBR_THR) for _ in range(4))
    assert received == b"abcd"
    assert not line.high
    assert uart.get(Register.IIR_FCR) == 0xC0 | InterruptId.NONE


def test_feed_more_than_the_fifo_arrives_in_order(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IIR_FCR, Fcr.ENABLE | 0xC0)
    data = bytes(range(256)) * 4
    uart.device.feed(data)
    received = bytearray()
    while uart.get(Register.LSR) & Lsr.DR:
        received.append(uart.get(Register.RBR_THR))
    assert received == data


def test_fifo_clear_drops_received_bytes(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.MCR, Mcr.LOOP)
    uart.put(Register.IIR_FCR, Fcr.ENABLE)
    uart.put(Register.RBR_THR, 1)
    uart.put(Register.IIR_FCR, Fcr.ENABLE | Fcr.CLEAR_RX)
    assert not uart.get(Register.LSR) & Lsr.DR


def test_irq_is_gated_by_out2(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IER, Ier.ERBFI)
    uart.device.feed(b"z")
    assert not line.high
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.RX_DATA
    uart.put(Register.MCR, Mcr.OUT2 | Mcr.DTR | Mcr.RTS)
    assert line.high
    uart.put(Register.MCR, Mcr.DTR | Mcr.RTS)
    assert not line.high
    uart.put(Register.MCR, Mcr.OUT2)
    assert line.high
    uart.get(Register.RBR_THR)
    assert not line.high
    assert line.levels == [True, False, True, False]  # only changes reach the line


def test_modem_status_interrupt(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.MCR, Mcr.OUT2)
    uart.put(Register.IER, Ier.EDSSI)
    assert not line.high
    uart.put(Register.MCR, Mcr.OUT2 | Mcr.LOOP)  # all four lines change
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.MODEM_STATUS
    uart.get(Register.MSR)
    assert iir_id(uart.get(Register.IIR_FCR)) == InterruptId.NONE


def test_host_buffer_overflow_is_dropped_and_counted(line: FakeLine) -> None:
    uart = Uart(line, host_buffer_size=4)
    uart.device.feed(b"0123456789")  # 4 fit the buffer, one of them moves to the receiver
    assert uart.device.rx_bytes == 4
    assert uart.device.rx_dropped == 6
    uart.device.feed(b"x")  # one byte of room again
    assert uart.device.rx_bytes == 5
    received = bytearray()
    while uart.get(Register.LSR) & Lsr.DR:
        received.append(uart.get(Register.RBR_THR))
    assert received == b"0123x"


def test_wide_access_reads_consecutive_registers(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.SCR, 0x77)
    assert uart.device.read(Register.LSR, 1) == Lsr.THRE | Lsr.TEMT
    assert uart.device.read(Register.MSR, 2) == 0x7700 | Msr.CTS | Msr.DSR | Msr.DCD


def test_feed_from_another_thread(line: FakeLine) -> None:
    uart = Uart(line)
    uart.put(Register.IIR_FCR, Fcr.ENABLE)
    data = bytes(range(256)) * 40

    def console() -> None:
        for start in range(0, len(data), 100):
            uart.device.feed(data[start : start + 100])

    thread = threading.Thread(target=console)
    thread.start()
    received = bytearray()
    while len(received) < len(data):
        if uart.get(Register.LSR) & Lsr.DR:
            received.append(uart.get(Register.RBR_THR))
        elif not thread.is_alive() and not uart.get(Register.LSR) & Lsr.DR:
            break
    thread.join()
    assert received == data
    assert uart.device.rx_dropped == 0
