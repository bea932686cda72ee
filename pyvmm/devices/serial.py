"""A 16550A UART, as a PC's COM port (TI TL16C550C datasheet, "Principles of Operation").

The model is the register file both a polling guest (wait for LSR.THRE, write THR) and
Linux's 8250 driver (autoconfig probe, interrupt-driven transmit and receive) need.

Transmission is instantaneous: a byte written to THR goes to the host `output` at once,
so THR and the transmitter are always empty (LSR.THRE and LSR.TEMT stay set), and the
"THR empty" interrupt is pending again right after each write. Reception has no line
timing either: a host-side buffer filled by `feed()` refills the 16-byte receiver FIFO
whenever the guest makes room, and the character-timeout indication stands for "data
below the trigger level is waiting" — without it a single typed key would never reach
an interrupt-driven guest whose trigger level is 8.

Locking: one lock guards the registers. vCPU threads take it for each register access
and the console thread for `feed()`. The interrupt line and `output` are called with
the lock held, so the level the line sees and the order of output bytes always match
the register state; neither may call back into the device.

The register map is in `pyvmm.devices.serial_registers`, the saved state (`save()`,
`restore()`) in `pyvmm.devices.serial_state`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from pyvmm.devices.serial_registers import (
    IIR_FIFOS_ENABLED,
    MSR_CONNECTED,
    RX_FIFO_SIZE,
    RX_TRIGGER_LEVELS,
    Fcr,
    Ier,
    InterruptId,
    Lcr,
    Lsr,
    Mcr,
    Msr,
    Register,
    modem_lines,
)
from pyvmm.devices.serial_state import SerialState, check_serial_state
from pyvmm.outcome import InterruptLine

logger = logging.getLogger(__name__)

SERIAL_PORT_LENGTH = 8  # eight byte-wide registers
COM1_PORT = 0x3F8  # where a PC puts the first UART, and its ISA interrupt
COM1_IRQ = 4
HOST_BUFFER_SIZE = 64 * 1024  # bytes `feed()` may queue ahead of the guest

__all__ = [
    "COM1_IRQ",
    "COM1_PORT",
    "HOST_BUFFER_SIZE",
    "SERIAL_PORT_LENGTH",
    "Fcr",
    "Ier",
    "InterruptId",
    "Lcr",
    "Lsr",
    "Mcr",
    "Msr",
    "Register",
    "Serial16550",
    "SerialState",
]


def _modem_deltas(old: int, new: int) -> int:
    """Delta bits for a change of the MSR line states from `old` to `new`."""
    deltas = 0
    if (old ^ new) & Msr.CTS:
        deltas |= Msr.DCTS
    if (old ^ new) & Msr.DSR:
        deltas |= Msr.DDSR
    if old & Msr.RI and not new & Msr.RI:
        deltas |= Msr.TERI
    if (old ^ new) & Msr.DCD:
        deltas |= Msr.DDCD
    return deltas


class Serial16550:
    """A 16550A UART: 8 registers from its base port, one interrupt line, a host byte stream."""

    def __init__(
        self,
        irq: InterruptLine,
        output: Callable[[bytes], None],
        *,
        host_buffer_size: int = HOST_BUFFER_SIZE,
    ) -> None:
        self._irq = irq
        self._output = output
        self._host_buffer_size = host_buffer_size
        self._lock = threading.Lock()
        self._irq_level = False
        self._rx: deque[int] = deque()
        self._host_input = bytearray()
        self._power_on()

        self.tx_bytes = 0  # bytes sent to `output`
        self.rx_bytes = 0  # bytes accepted by `feed()`
        self.rx_dropped = 0  # bytes `feed()` dropped because the host buffer was full

    # --- host side -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue bytes from the host for the guest to receive. Safe from any thread.

        Bytes that do not fit in the host buffer are dropped and counted in `rx_dropped`.
        """
        with self._lock:
            room = self._host_buffer_size - len(self._host_input)
            accepted = data[: max(room, 0)]
            self._host_input += accepted
            self.rx_bytes += len(accepted)
            dropped = len(data) - len(accepted)
            if dropped:
                if not self.rx_dropped:
                    logger.warning("serial input buffer full: dropping host input")
                self.rx_dropped += dropped
            self._refill_rx()
            self._update_irq()

    def input_room(self) -> int:
        """How many bytes `feed` would take now without dropping any."""
        with self._lock:
            return max(self._host_buffer_size - len(self._host_input), 0)

    @property
    def divisor(self) -> int:
        """The baud rate divisor the guest programmed (115200 / divisor baud)."""
        return self._divisor

    # --- reset and saved state --------------------------------------------------------

    def _power_on(self) -> None:
        self._divisor = 0x000C  # 9600 baud, what a PC BIOS leaves; the guest sets its own
        self._ier = 0
        self._fcr = 0
        self._lcr = 0x03  # 8 data bits, no parity, 1 stop bit
        self._mcr = 0
        self._overrun = False
        self._msr = int(MSR_CONNECTED)
        self._scr = 0
        self._thr_interrupt = False
        self._rx.clear()
        self._host_input.clear()

    def reset(self) -> None:
        """Back to the power-on registers with empty FIFOs (host input not yet received
        is dropped, as a reset UART loses it); the line goes low."""
        with self._lock:
            self._power_on()
            self._update_irq()

    def save(self) -> SerialState:
        with self._lock:
            return SerialState(
                divisor=self._divisor,
                ier=int(self._ier),
                fcr=int(self._fcr),
                lcr=self._lcr,
                mcr=int(self._mcr),
                msr=int(self._msr),
                scr=self._scr,
                overrun=self._overrun,
                thr_interrupt=self._thr_interrupt,
                rx_fifo=bytes(self._rx),
                host_input=bytes(self._host_input),
            )

    def restore(self, state: object) -> None:
        """Take `state` (checked first: a bad one raises `StateError` and changes
        nothing), then drive the interrupt line to the level the registers give."""
        checked = check_serial_state(state, self._host_buffer_size)
        with self._lock:
            self._divisor = checked.divisor
            self._ier = checked.ier
            self._fcr = checked.fcr
            self._lcr = checked.lcr
            self._mcr = checked.mcr
            self._msr = checked.msr
            self._scr = checked.scr
            self._overrun = checked.overrun
            self._thr_interrupt = checked.thr_interrupt
            self._rx = deque(checked.rx_fifo)
            self._host_input = bytearray(checked.host_input)
            self._update_irq()

    # --- guest side ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Registers are one byte wide; a wider access reads consecutive registers."""
        with self._lock:
            value = 0
            for index in range(size):
                value |= self._read_register(offset + index) << (8 * index)
            self._update_irq()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for index in range(size):
                self._write_register(offset + index, (value >> (8 * index)) & 0xFF)
            self._update_irq()

    def _read_register(self, offset: int) -> int:
        dlab = bool(self._lcr & Lcr.DLAB)
        if offset == Register.RBR_THR:
            return self._divisor & 0xFF if dlab else self._read_rbr()
        if offset == Register.IER:
            return self._divisor >> 8 if dlab else self._ier
        if offset == Register.IIR_FCR:
            return self._read_iir()
        if offset == Register.LCR:
            return self._lcr
        if offset == Register.MCR:
            return self._mcr
        if offset == Register.LSR:
            value = self._lsr()
            self._overrun = False
            return value
        if offset == Register.MSR:
            value = self._msr
            self._msr &= ~int(Msr.DELTAS)
            return value
        if offset == Register.SCR:
            return self._scr
        return 0xFF

    def _write_register(self, offset: int, value: int) -> None:
        dlab = bool(self._lcr & Lcr.DLAB)
        if offset == Register.RBR_THR:
            if dlab:
                self._divisor = (self._divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif offset == Register.IER:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                self._ier = value & Ier.ALL
                # A 16550 raises "THR empty" as soon as it is enabled while THR is empty,
                # which it always is here; Linux's startup test relies on it.
                if self._ier & Ier.ETBEI:
                    self._thr_interrupt = True
        elif offset == Register.IIR_FCR:
            self._write_fcr(value)
        elif offset == Register.LCR:
            self._lcr = value
        elif offset == Register.MCR:
            self._write_mcr(value)
        elif offset == Register.SCR:
            self._scr = value
        # LSR and MSR are read only; writes to them are ignored.

    def _write_thr(self, value: int) -> None:
        if self._mcr & Mcr.LOOP:
            self._receive(value)
        else:
            self._output(bytes((value,)))
            self.tx_bytes += 1
        # The byte left THR at once, so THR is empty again.
        self._thr_interrupt = True

    def _write_fcr(self, value: int) -> None:
        enabling_changed = bool((value ^ self._fcr) & Fcr.ENABLE)
        if enabling_changed or value & Fcr.CLEAR_RX:
            self._rx.clear()
        if enabling_changed or value & Fcr.CLEAR_TX:
            self._thr_interrupt = True  # the transmit FIFO is empty (it always is)
        self._fcr = value & (Fcr.ENABLE | Fcr.DMA_MODE | Fcr.TRIGGER_MASK)
        self._refill_rx()

    def _write_mcr(self, value: int) -> None:
        self._mcr = value & Mcr.ALL
        lines = modem_lines(self._mcr)
        if not self._mcr & Mcr.LOOP:
            self._refill_rx()  # leaving loopback reconnects the receiver to the host
        old_lines = self._msr & ~int(Msr.DELTAS)
        deltas = (self._msr & Msr.DELTAS) | _modem_deltas(old_lines, lines)
        self._msr = lines | deltas

    def _read_rbr(self) -> int:
        value = self._rx.popleft() if self._rx else 0
        self._refill_rx()
        return value

    def _read_iir(self) -> int:
        interrupt = self._pending_interrupt()
        if interrupt is InterruptId.THR_EMPTY:
            self._thr_interrupt = False  # reading IIR acknowledges "THR empty"
        fifo_bits = IIR_FIFOS_ENABLED if self._fcr & Fcr.ENABLE else 0
        return int(interrupt) | fifo_bits

    def _lsr(self) -> int:
        value = Lsr.THRE | Lsr.TEMT
        if self._rx:
            value |= Lsr.DR
        if self._overrun:
            value |= Lsr.OE
        return int(value)

    # --- receiver FIFO ---------------------------------------------------------------

    def _rx_capacity(self) -> int:
        return RX_FIFO_SIZE if self._fcr & Fcr.ENABLE else 1

    def _rx_trigger(self) -> int:
        return RX_TRIGGER_LEVELS[(self._fcr & Fcr.TRIGGER_MASK) >> 6]

    def _receive(self, value: int) -> None:
        """A byte arriving at the receiver (loopback): into the FIFO, or an overrun."""
        if len(self._rx) < self._rx_capacity():
            self._rx.append(value)
        else:
            self._overrun = True

    def _refill_rx(self) -> None:
        """Move host input into the FIFO while it has room; in loopback the receiver
        is disconnected from the host and the input waits."""
        if self._mcr & Mcr.LOOP or not self._host_input:
            return
        room = self._rx_capacity() - len(self._rx)
        if room > 0:
            chunk = self._host_input[:room]
            del self._host_input[:room]
            self._rx.extend(chunk)

    # --- interrupts ------------------------------------------------------------------

    def _pending_interrupt(self) -> InterruptId:
        """The highest-priority pending, enabled interrupt (TL16C550C interrupt table)."""
        if self._ier & Ier.ELSI and self._overrun:
            return InterruptId.LINE_STATUS
        if self._ier & Ier.ERBFI and self._rx:
            if not self._fcr & Fcr.ENABLE or len(self._rx) >= self._rx_trigger():
                return InterruptId.RX_DATA
            return InterruptId.CHAR_TIMEOUT
        if self._ier & Ier.ETBEI and self._thr_interrupt:
            return InterruptId.THR_EMPTY
        if self._ier & Ier.EDSSI and self._msr & Msr.DELTAS:
            return InterruptId.MODEM_STATUS
        return InterruptId.NONE

    def _update_irq(self) -> None:
        # On a PC, OUT2 gates the UART's interrupt onto the IRQ line; in loopback the
        # OUT pins are forced inactive, so the line stays low.
        gate = self._mcr & (Mcr.OUT2 | Mcr.LOOP) == Mcr.OUT2
        level = gate and self._pending_interrupt() is not InterruptId.NONE
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)
