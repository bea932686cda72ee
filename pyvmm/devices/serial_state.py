"""The saved state of a 16550A UART (`Serial16550.save` / `restore`), and its checks.

As vm-superio's `SerialState`: the registers a guest can read back or that decide what
it reads next (divisor, IER, FCR, LCR, MCR, MSR, SCR, the overrun flag and the pending
"THR empty" interrupt), the receiver FIFO and the host input still waiting for it. The
interrupt line's level is not saved: it follows from the registers, and `restore`
drives the line to it. The host-side counters (`tx_bytes`, ...) are statistics of one
run and are not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.devices.serial_registers import RX_FIFO_SIZE, Fcr, Ier, Mcr, Msr, modem_lines
from pyvmm.snapshot.checks import (
    check_bool,
    check_byte,
    check_bytes,
    check_int,
    check_mask,
    check_type,
    fail,
)
from pyvmm.snapshot.registry import saved_state

DEVICE = "serial"
FCR_STORED = Fcr.ENABLE | Fcr.DMA_MODE | Fcr.TRIGGER_MASK  # FCR bits the UART keeps


@saved_state("serial")
@dataclass(frozen=True)
class SerialState:
    """A `Serial16550`'s state as plain data."""

    divisor: int  # 16 bits
    ier: int
    fcr: int  # the stored bits only: enable, DMA mode, trigger level
    lcr: int
    mcr: int
    msr: int  # line states (bits 4-7) and unread deltas (bits 0-3)
    scr: int
    overrun: bool
    thr_interrupt: bool  # "THR empty" pending until IIR is read
    rx_fifo: bytes  # the receiver FIFO, oldest byte first
    host_input: bytes  # fed by the host, waiting for room in the FIFO


def check_serial_state(state: object, host_buffer_size: int) -> SerialState:
    """`state` as a `SerialState` a UART with this host buffer can hold; else `StateError`."""
    state = check_type(DEVICE, state, SerialState)
    check_int(DEVICE, "divisor", state.divisor, 0, 0xFFFF)
    check_mask(DEVICE, "ier", state.ier, Ier.ALL)
    fcr = check_mask(DEVICE, "fcr", state.fcr, FCR_STORED)
    check_byte(DEVICE, "lcr", state.lcr)
    mcr = check_mask(DEVICE, "mcr", state.mcr, Mcr.ALL)
    msr = check_byte(DEVICE, "msr", state.msr)
    check_byte(DEVICE, "scr", state.scr)
    check_bool(DEVICE, "overrun", state.overrun)
    check_bool(DEVICE, "thr_interrupt", state.thr_interrupt)
    capacity = RX_FIFO_SIZE if fcr & Fcr.ENABLE else 1
    rx = check_bytes(DEVICE, "rx_fifo", state.rx_fifo, 0, capacity)
    waiting = check_bytes(DEVICE, "host_input", state.host_input, 0, host_buffer_size)
    # The modem status lines are wired to MCR (loopback) or to the "modem": they are not
    # free to differ from what MCR says.
    if msr & ~int(Msr.DELTAS) != modem_lines(mcr):
        raise fail(DEVICE, f"msr lines {msr:#x} do not match mcr {mcr:#x}")
    # Host input only waits while the FIFO is full or the receiver is looped back.
    if waiting and not mcr & Mcr.LOOP and len(rx) < capacity:
        raise fail(DEVICE, "host input waits while the receiver FIFO has room")
    return state
