"""A full memory barrier for the few places a device needs one (virtio 1.2 §2.7.7, §2.7.10).

x86 keeps stores in order with stores and loads in order with loads, so the device's
"write the used element, then the used idx" (§2.7.8.2) and "read the available idx,
then the ring and descriptors" (§2.7.13.3.1) need nothing in pure Python: each field
is one memcpy, issued in program order. What x86 does reorder is a store followed by
a load of another address (the store waits in the store buffer). A device that
publishes the used idx and then reads used_event / the NO_INTERRUPT flag, or that
writes avail_event / clears NO_NOTIFY and then re-reads the available idx, needs a
full barrier in between, or a notification is lost (Linux's virtio_mb / vhost's
smp_mb sit in the same two places).

Python has no fence instruction. Acquiring an uncontended `threading.Lock` executes
a locked read-modify-write (glibc's sem_trywait / futex word), and the Intel SDM
(vol. 3A, "Memory Ordering in P6 and More Recent Processor Families") guarantees that
reads and writes are not reordered with locked instructions: the store buffer is
drained before any later load. It costs a fraction of a microsecond.
"""

from __future__ import annotations

import threading

_fence = threading.Lock()


def full_barrier() -> None:
    """Order every earlier store before every later load (x86 locked instruction)."""
    with _fence:
        pass
