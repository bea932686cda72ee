"""virtio-console (virtio 1.2 §5.3), one port: Linux's hvc0 (`console=hvc0`).

Without VIRTIO_CONSOLE_F_MULTIPORT the device has port 0 only and two queues
(§5.3.2): receiveq 0 carries host input to the guest (the keystrokes), transmitq 1
the guest's output to the host. The output goes to the callback given at
construction: the machine's console stream (`MachineConsole.write`, which COM1
uses too: the bounded console tail, and `MachineConfig.console`). Input comes from
`feed()`, from any thread; the terminal front end (pyvmm/cli/console.py) handles the
Ctrl-A escape keys before it gets here, as it does for the serial console.

Decisions, against a hostile or simply slow guest:

- Input waits in a host buffer of `HOST_BUFFER_SIZE` bytes (64 KiB, the UART's) until
  the driver posts receive buffers; it is delivered on `feed()` and on a notify of
  receiveq, in order, split over as many buffers as it needs. Bytes past the bound
  are dropped and counted in `rx_dropped`, as the UART drops them: blocking the
  feeder would stall the terminal thread on a guest that never reads.
- Output is handed on per transmit chain, in chunks of at most `OUTPUT_CHUNK` bytes,
  so that a chain's bytes are never gathered into one host allocation, and at most
  `MAX_TX_CHAIN_BYTES` (1 MiB) of one chain are shown; the rest is dropped and
  counted in `tx_dropped`. Linux sends a page at most per chain (hvc's outbuf), so
  only a hostile chain (one RAM page named by 32768 indirect descriptors: 4 GiB) is
  cut, and its cost is bounded by its descriptors, not by what it claims. A flood of
  ordinary chains is streamed: the console tail behind the callback is bounded.
- Device-readable buffers in receiveq and device-writable ones in transmitq are
  ignored: §5.3.6.1 forbids them to the driver but gives the device no rule, and
  nothing is read from or written to them.
- Emergency write (VIRTIO_CONSOLE_F_EMERG_WRITE, §5.3.4, §5.3.6): a byte written to
  `emerg_wr` is output at once, before or without any queue.
- Threads: `notify` runs on the I/O thread (or vCPU threads), `feed` on the terminal
  thread, `write_config` on vCPU threads. One lock per direction keeps each queue
  popped by one thread at a time and its bytes in order.

A queue fault found by `feed()` (the guest broke receiveq while no notify was
running) is reported to the core from the feeding thread at once (`needs_reset`
takes only a leaf lock, so it may be called with `_rx_lock` held), and kept and
raised again by the next `notify`: the device stays in DEVICE_NEEDS_RESET (§2.1.2).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Sequence
from enum import IntFlag

from pyvmm.snapshot.checks import check_bytes, check_int, check_tuple, check_type, fail
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice
from pyvmm.virtio.device_state import ConsoleState
from pyvmm.virtio.errors import VirtqueueError
from pyvmm.virtio.queue import Virtqueue

log = logging.getLogger(__name__)

RECEIVEQ = 0  # port 0 receiveq (§5.3.2)
TRANSMITQ = 1  # port 0 transmitq
QUEUE_SIZE = 64  # Linux posts a page per receive slot: 256 KiB of guest RAM at 64
HOST_BUFFER_SIZE = 64 * 1024
OUTPUT_CHUNK = 64 * 1024
MAX_TX_CHAIN_BYTES = 1 << 20


class ConsoleFeature(IntFlag):
    """Feature bits of the console device (§5.3.3)."""

    SIZE = 1 << 0
    MULTIPORT = 1 << 1
    EMERG_WRITE = 1 << 2


# struct virtio_console_config (§5.3.4): cols, rows, max_nr_ports, emerg_wr.
CONFIG = struct.Struct("<HHII")
EMERG_WR = 8  # offset of emerg_wr


class ConsoleDevice(VirtioDevice):
    """virtio-console with one port.

    `output` receives the guest's output bytes (on the thread that runs `notify` or
    the emergency write); `size` (columns, rows), when given, is offered with
    VIRTIO_CONSOLE_F_SIZE and can change with `resize()`.
    """

    device_type = DeviceType.CONSOLE
    kind = "virtio-console"
    name = "virtio-console"

    def __init__(
        self,
        output: Callable[[bytes], None],
        *,
        size: tuple[int, int] | None = None,
        host_buffer_size: int = HOST_BUFFER_SIZE,
        max_tx_chain_bytes: int = MAX_TX_CHAIN_BYTES,
    ) -> None:
        self._output = output
        self._size = _checked_size(size) if size is not None else None
        self._host_buffer_size = host_buffer_size
        self._max_tx_chain_bytes = max_tx_chain_bytes
        self._activation: Activation | None = None
        self._pending = bytearray()  # host input the guest has no buffer for yet
        self._fault: VirtqueueError | None = None
        self._rx_lock = threading.Lock()
        self._tx_lock = threading.Lock()

        self.tx_bytes = 0  # bytes handed to `output`
        self.tx_dropped = 0  # bytes of over-long transmit chains not shown
        self.rx_bytes = 0  # bytes accepted by `feed()`
        self.rx_delivered = 0  # bytes written into receive buffers
        self.rx_dropped = 0  # bytes `feed()` dropped because the host buffer was full

    # --- the device interface ----------------------------------------------------------

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (QUEUE_SIZE, QUEUE_SIZE)

    def device_features(self) -> int:
        features = ConsoleFeature.EMERG_WRITE
        if self._size is not None:
            features |= ConsoleFeature.SIZE
        return int(features)

    def config(self) -> bytes:
        cols, rows = self._size or (0, 0)
        return CONFIG.pack(cols, rows, 1, 0)  # emerg_wr reads as 0: it is write-only

    def write_config(self, offset: int, data: bytes) -> None:
        """Only emerg_wr is writable (§5.3.4); its low byte is one character."""
        if offset <= EMERG_WR < offset + len(data):
            with self._tx_lock:
                self._emit(data[EMERG_WR - offset : EMERG_WR - offset + 1])

    def activate(self, activation: Activation) -> None:
        with self._rx_lock, self._tx_lock:
            self._activation = activation
            self._fault = None
        with self._rx_lock:
            self._deliver(raise_errors=False)  # input typed ahead of the driver

    def notify(self, queue: int) -> None:
        """receiveq: buffers came, deliver waiting input; transmitq: output (§5.3.6)."""
        if self._fault is not None:
            raise self._fault
        if queue == RECEIVEQ:
            with self._rx_lock:
                self._deliver(raise_errors=True)
        elif queue == TRANSMITQ:
            with self._tx_lock:
                self._transmit()

    def reset(self) -> None:
        """Forget the queues; input not yet delivered stays for the next activation."""
        with self._rx_lock, self._tx_lock:
            self._activation = None
            self._fault = None

    def close(self) -> None:
        with self._rx_lock, self._tx_lock:
            self._activation = None

    def save(self) -> ConsoleState:
        """The size and the host input the guest has no buffer for yet. Every chain is
        used within the call that popped it, so nothing is in flight between calls;
        the output callback is configuration, and the counters are statistics."""
        with self._rx_lock, self._tx_lock:
            return ConsoleState(self._size, bytes(self._pending))

    def restore(self, state: object) -> None:
        """A console with F_SIZE takes a size, one without none (the offered features
        must not change under the driver); the input fits the host buffer."""
        checked = check_type(self.name, state, ConsoleState)
        size = None
        if checked.size is not None:
            pair = check_tuple(self.name, "size", checked.size, 2)
            if len(pair) != 2:
                raise fail(self.name, f"size holds {len(pair)} entries, not (cols, rows)")
            size = (
                check_int(self.name, "cols", pair[0], 0, 0xFFFF),
                check_int(self.name, "rows", pair[1], 0, 0xFFFF),
            )
        if (size is None) != (self._size is None):
            raise fail(self.name, "a size is saved for a console without one, or none for one with a size")
        pending = check_bytes(self.name, "pending_input", checked.pending_input, 0, self._host_buffer_size)
        with self._rx_lock, self._tx_lock:
            self._size = size
            self._pending = bytearray(pending)

    # --- host side -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue host input for the guest and deliver what its buffers can take. Safe
        from any thread; past the host buffer bytes are dropped and counted."""
        with self._rx_lock:
            room = max(self._host_buffer_size - len(self._pending), 0)
            accepted = data[:room]
            self._pending += accepted
            self.rx_bytes += len(accepted)
            dropped = len(data) - len(accepted)
            if dropped:
                if not self.rx_dropped:
                    log.warning("virtio-console input buffer full: dropping host input")
                self.rx_dropped += dropped
            self._deliver(raise_errors=False)

    def resize(self, cols: int, rows: int) -> None:
        """The terminal changed size: new cols/rows and a configuration change
        notification (§5.3.6.2, only with VIRTIO_CONSOLE_F_SIZE offered)."""
        if self._size is None:
            return
        self._size = _checked_size((cols, rows))
        activation = self._activation
        if activation is not None and activation.features & ConsoleFeature.SIZE:
            activation.interrupt.config_changed()

    def input_room(self) -> int:
        """How many bytes `feed` would take now without dropping any."""
        with self._rx_lock:
            return max(self._host_buffer_size - len(self._pending), 0)

    @property
    def pending_input(self) -> int:
        """Bytes fed that wait for receive buffers."""
        return len(self._pending)

    # --- the queues ----------------------------------------------------------------

    def _deliver(self, *, raise_errors: bool) -> None:
        """Move waiting input into receive buffers, in order; with `_rx_lock` held."""
        activation = self._activation
        if activation is None or not self._pending:
            return
        receiveq = activation.queues[RECEIVEQ]
        try:
            self._fill(receiveq)
            if receiveq.needs_interrupt():
                activation.interrupt.used_buffer(RECEIVEQ)
        except VirtqueueError as error:
            if raise_errors:
                raise
            if receiveq.fault is None:
                return  # not the guest's doing: a reset raced us (the queue is not ready)
            self._fault = error
            activation.needs_reset(f"receiveq: {error}")  # §2.1.2: tell the driver now

    def _fill(self, receiveq: Virtqueue) -> None:
        pending = self._pending
        while pending:
            chain = receiveq.pop()
            if chain is None:
                return  # no buffer: the rest waits for the next notify
            count = min(len(pending), chain.writable_len)
            if count:
                chain.write(pending[:count])
                del pending[:count]
            receiveq.add_used(chain.head, count)
            self.rx_delivered += count

    def _transmit(self) -> None:
        activation = self._activation
        if activation is None:
            return
        transmitq = activation.queues[TRANSMITQ]
        while (chain := transmitq.pop()) is not None:
            self._send(chain)
            transmitq.add_used(chain.head, 0)  # §2.7.8: nothing written to the driver
        if transmitq.needs_interrupt():
            activation.interrupt.used_buffer(TRANSMITQ)

    def _send(self, chain: DescriptorChain) -> None:
        if chain.readable_len <= min(OUTPUT_CHUNK, self._max_tx_chain_bytes):  # usual: one copy
            if chain.readable_len:
                self._emit(chain.read())
            return
        budget = self._max_tx_chain_bytes
        for view in chain.readable:
            for start in range(0, min(len(view), budget), OUTPUT_CHUNK):
                self._emit(view[start : min(start + OUTPUT_CHUNK, budget)].tobytes())
            budget -= min(len(view), budget)
            if budget == 0:
                break
        cut = chain.readable_len - min(chain.readable_len, self._max_tx_chain_bytes)
        if cut:
            if not self.tx_dropped:
                log.warning("%s: transmit chain of %d bytes cut to %d", self.name, chain.readable_len,
                            self._max_tx_chain_bytes)  # fmt: skip
            self.tx_dropped += cut

    def _emit(self, data: bytes) -> None:
        self.tx_bytes += len(data)
        self._output(data)


def _checked_size(size: tuple[int, int]) -> tuple[int, int]:
    cols, rows = size
    if not (0 <= cols <= 0xFFFF and 0 <= rows <= 0xFFFF):
        raise ValueError(f"console size {cols}x{rows} does not fit the 16-bit cols/rows (§5.3.4)")
    return cols, rows
