"""virtio-rng, the entropy device (virtio 1.2 §5.4), fed from the host's urandom.

One queue, requestq (§5.4.2). Each chain the driver posts is a request for random
bytes: the device fills the chain's device-writable buffers and returns the number of
bytes it wrote as the used length, which the driver must read (§5.4.6.1).

Decisions, against a hostile guest:

- Bytes per request are capped at `MAX_REQUEST_BYTES` (64 KiB). §5.4.7.1 lets the
  device "use less than the entire buffer length", so a capped request is still a
  conforming answer. Linux asks for at most a few cache lines at a time
  (drivers/char/hw_random/virtio-rng.c, `rng_buffer_size()`), so the cap never
  shortens a real request; without it one notify could ask for 4 GiB per chain and
  keep the I/O thread busy (QEMU's default rate limit is unbounded, which is not a
  bound at all). Host memory is not at stake either way: the bytes are read from
  /dev/urandom with readv straight into the guest's buffers, nothing is allocated.
- Device-readable buffers in a request are ignored (not read, not a fault). §5.4.6.1
  forbids the driver to post them, but gives the device no rule and nothing the
  device does depends on them; faulting the device (DEVICE_NEEDS_RESET) would take
  the guest's entropy source away for a harmless mistake. A chain with no writable
  byte gets used length 0.
- The readv is bounded to `MAX_IOVECS` views: a chain may have more buffers (an
  indirect table of 32768 entries) than the kernel's IOV_MAX, and the cap is reached
  long before that in any real request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from pyvmm.errors import ConfigError
from pyvmm.kvm.fd import FileDescriptor
from pyvmm.snapshot.checks import check_type
from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice
from pyvmm.virtio.device_state import EntropyState

log = logging.getLogger(__name__)

REQUESTQ = 0
QUEUE_SIZE = 64  # Linux keeps one request in flight; 64 bounds one notify's work at 4 MiB
MAX_REQUEST_BYTES = 64 * 1024
MAX_IOVECS = 64
URANDOM = "/dev/urandom"


def capped_views(views: Sequence[memoryview], limit: int, max_views: int) -> list[memoryview]:
    """The first `limit` bytes of `views` (at most `max_views` of them), as views of the
    same memory: what a readv into a chain's writable buffers may fill."""
    result: list[memoryview] = []
    for view in views:
        if limit <= 0 or len(result) == max_views:
            break
        if len(view) == 0:
            continue
        piece = view if len(view) <= limit else view[:limit]
        result.append(piece)
        limit -= len(piece)
    return result


class EntropyDevice(VirtioDevice):
    """virtio-rng (§5.4): no features, no configuration space (§5.4.3, §5.4.4).

    `source` is the file the bytes come from (the host's /dev/urandom, which never
    blocks once the host's pool is initialized); it is opened here, so a missing one is
    a `ConfigError` when the device is built, and closed by `close()` (a
    `FileDescriptor`, pyvmm's one fd owner, holds it: closed once, also when dropped).
    """

    device_type = DeviceType.ENTROPY
    kind = "virtio-rng"
    name = "virtio-rng"

    def __init__(self, source: str = URANDOM, *, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        try:
            self._source = FileDescriptor(os.open(source, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise ConfigError(f"virtio-rng: cannot open {source}: {exc.strerror}") from exc
        self.max_request_bytes = max_request_bytes
        self._activation: Activation | None = None
        # notify may run on the I/O thread and, without ioeventfd, on several vCPU
        # threads at once; a Virtqueue is not safe to pop from two threads.
        self._lock = threading.Lock()
        self.bytes_served = 0

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (QUEUE_SIZE,)

    def device_features(self) -> int:
        return 0  # §5.4.3: none defined

    def config(self) -> bytes:
        return b""  # §5.4.4: none defined

    def write_config(self, offset: int, data: bytes) -> None:
        pass

    def activate(self, activation: Activation) -> None:
        with self._lock:
            self._activation = activation

    def notify(self, queue: int) -> None:
        """Serve every pending request (§5.4.7.1); raises `VirtqueueError` for a
        malformed ring or chain, which the core turns into DEVICE_NEEDS_RESET."""
        with self._lock:
            activation = self._activation
            if activation is None or queue != REQUESTQ:
                return
            requestq = activation.queues[REQUESTQ]
            served = 0
            while (chain := requestq.pop()) is not None:
                views = capped_views(chain.writable, self.max_request_bytes, MAX_IOVECS)
                written = os.readv(self._source.fd, views) if views else 0
                requestq.add_used(chain.head, written)
                served += written
            self.bytes_served += served
            if requestq.needs_interrupt():
                activation.interrupt.used_buffer(REQUESTQ)

    def reset(self) -> None:
        with self._lock:
            self._activation = None

    def save(self) -> EntropyState:
        """Nothing beyond the queue: each request is served within one `notify`, so a
        paused I/O thread leaves none half done. The source is configuration."""
        return EntropyState()

    def restore(self, state: object) -> None:
        check_type(self.name, state, EntropyState)

    def close(self) -> None:
        with self._lock:
            self._activation = None  # under our lock: no notify reads the fd after this
            self._source.close()
