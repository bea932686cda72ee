"""The 16550A UART's register map (TI TL16C550C datasheet, "Principles of Operation",
register descriptions): offsets, the bits of each register, and the modem lines.

`pyvmm.devices.serial` is the device; `pyvmm.devices.serial_state` its saved state.
"""

from __future__ import annotations

import enum

RX_FIFO_SIZE = 16


class Register(enum.IntEnum):
    """Register offsets from the base port. DLL and DLM replace RBR/THR and IER when LCR.DLAB is set."""

    RBR_THR = 0  # receiver buffer (read) / transmitter holding (write)
    IER = 1
    IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7
    DLL = 0  # divisor latch, low byte (DLAB = 1)
    DLM = 1  # divisor latch, high byte (DLAB = 1)


# The register bits are IntEnums, not IntFlags: they are tested on every guest access
# (twice per character sent), and IntFlag arithmetic costs about a microsecond an
# operation where an IntEnum member is a plain int to `&` and `|`.
class Ier(enum.IntEnum):
    """Interrupt enable register."""

    ERBFI = 0x01  # received data available (and character timeout)
    ETBEI = 0x02  # transmitter holding register empty
    ELSI = 0x04  # receiver line status
    EDSSI = 0x08  # modem status

    ALL = ERBFI | ETBEI | ELSI | EDSSI  # bits 4-7 read as 0 on a 16550A


class InterruptId(enum.IntEnum):
    """IIR bits 0-3, highest priority first; bit 0 clear means "interrupt pending"."""

    LINE_STATUS = 0x06
    RX_DATA = 0x04
    CHAR_TIMEOUT = 0x0C
    THR_EMPTY = 0x02
    MODEM_STATUS = 0x00
    NONE = 0x01


IIR_FIFOS_ENABLED = 0xC0  # IIR bits 6-7 when FCR enabled the FIFOs: "this is a 16550A"


class Fcr(enum.IntEnum):
    """FIFO control register (write only)."""

    ENABLE = 0x01
    CLEAR_RX = 0x02
    CLEAR_TX = 0x04
    DMA_MODE = 0x08
    TRIGGER_MASK = 0xC0


# FCR bits 6-7 → receiver FIFO trigger level in bytes.
RX_TRIGGER_LEVELS = (1, 4, 8, 14)


class Lcr(enum.IntEnum):
    """Line control register. Word length, stop bits and parity only matter on a wire."""

    WORD_LENGTH_MASK = 0x03
    STOP_BITS = 0x04
    PARITY_ENABLE = 0x08
    EVEN_PARITY = 0x10
    STICK_PARITY = 0x20
    BREAK = 0x40
    DLAB = 0x80  # divisor latch access


class Mcr(enum.IntEnum):
    """Modem control register."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08  # on a PC, enables the UART's interrupt output onto the IRQ line
    LOOP = 0x10

    ALL = DTR | RTS | OUT1 | OUT2 | LOOP


class Lsr(enum.IntEnum):
    """Line status register."""

    DR = 0x01  # data ready
    OE = 0x02  # overrun error
    PE = 0x04  # parity error
    FE = 0x08  # framing error
    BI = 0x10  # break interrupt
    THRE = 0x20  # transmitter holding register empty
    TEMT = 0x40  # transmitter empty
    RX_FIFO_ERROR = 0x80

    ERRORS = OE | PE | FE | BI


class Msr(enum.IntEnum):
    """Modem status register: delta bits 0-3, line states 4-7."""

    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04  # trailing edge of ring indicator
    DDCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80

    DELTAS = DCTS | DDSR | TERI | DDCD


# Outside loopback the host side is "a modem that is always there".
MSR_CONNECTED = Msr.CTS | Msr.DSR | Msr.DCD

# In loopback the modem control outputs are wired back to the modem status inputs.
LOOPBACK_WIRING = ((Mcr.DTR, Msr.DSR), (Mcr.RTS, Msr.CTS), (Mcr.OUT1, Msr.RI), (Mcr.OUT2, Msr.DCD))


def modem_lines(mcr: int) -> int:
    """The MSR line states (bits 4-7) the modem control register implies: in loopback
    its outputs, else a modem that is always connected."""
    if not mcr & Mcr.LOOP:
        return int(MSR_CONNECTED)
    lines = 0
    for control, status in LOOPBACK_WIRING:
        if mcr & control:
            lines |= status
    return lines
