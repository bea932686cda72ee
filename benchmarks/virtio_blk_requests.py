"""What pyvmm costs per virtio-blk request, without a guest: requests laid out by the
test driver (tests/virtio/blk_harness.py) in a real GuestMemory, through a real
VirtioCore and BlockDevice, against the host's own os.preadv / os.pwritev of the
same sizes on the same (page-cached) file.

For each request and each device mode (workers=0: all on the notifying thread, which
is the VM's I/O thread; workers=N: a pool does the file I/O) it prints:
- req/s: what the test driver reaches flat out (its own Python posting included);
- device CPU us: CPU per request in pyvmm's device (the I/O thread's notify plus the
  pool threads), against the host's syscall alone on the same buffer sizes;
- I/O thread busy: the share of the run the I/O thread spent inside notify, i.e.
  unavailable to every other device of the VM, with the driver going flat out.

    .venv/bin/python benchmarks/virtio_blk_requests.py [--seconds 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

for path in (Path(__file__).resolve().parent.parent / "tests",):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from virtio.blk_harness import BlockHarness  # noqa: E402

from pyvmm.device_config import DiskConfig  # noqa: E402
from pyvmm.memory import GuestMemory  # noqa: E402
from pyvmm.virtio.block import S_OK, T_FLUSH, T_IN, T_OUT, BlockDevice  # noqa: E402

MiB = 1 << 20
IMAGE_SIZE = 256 * MiB


class BatchInterrupts:
    """Sets an event at each used buffer notification (the driver asks for one per batch)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.used = 0
        self.config = 0

    def used_buffer(self, queue: int) -> None:
        self.used += 1
        self.event.set()

    def config_changed(self) -> None:
        self.config += 1


def run_device(path: str, kind: int, size: int, batch: int, workers: int, seconds: float) -> dict[str, float]:
    memory = GuestMemory([(0, 64 * MiB + batch * (size + 4096))])
    device = BlockDevice(DiskConfig(path), workers=workers)
    interrupts = BatchInterrupts()
    harness = BlockHarness(device, memory, interrupts=interrupts)
    assert harness.core.active
    sectors = IMAGE_SIZE // 512
    step = max(size, 512) // 512
    payload = os.urandom(size) if kind == T_OUT else b""
    done = 0
    notify_cpu = notify_wall = 0.0
    position = 0
    cpu_start, main_start, start = time.process_time(), time.thread_time(), time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            harness.rewind()
            requests = []
            for _ in range(batch):
                sector = position % (sectors - step)
                position += step
                if kind == T_IN:
                    requests.append(harness.post(T_IN, sector, in_len=size))
                elif kind == T_OUT:
                    requests.append(harness.post(T_OUT, sector, out=payload))
                else:
                    requests.append(harness.post(kind))
            # Linux's virtqueue_enable_cb_delayed: one interrupt when the batch is done.
            harness.driver.set_used_event((harness.driver.last_used + batch - 1) & 0xFFFF)
            interrupts.event.clear()
            before_cpu, before_wall = time.thread_time(), time.perf_counter()
            harness.core.notify(0)
            notify_cpu += time.thread_time() - before_cpu
            notify_wall += time.perf_counter() - before_wall
            if not interrupts.event.wait(30):
                raise TimeoutError("no interrupt for the batch")
            used = harness.driver.get_used()
            assert len(used) == batch, len(used)
            assert all(harness.status(r) == S_OK for r in requests)
            done += batch
    finally:
        elapsed = time.perf_counter() - start
        pool_cpu = time.process_time() - cpu_start - (time.thread_time() - main_start)
        device.close()
        memory.close()
    return {
        "rate": done / elapsed,
        "device_us": (notify_cpu + max(pool_cpu, 0.0)) / done * 1e6,
        "busy": notify_wall / elapsed,
    }


def run_raw(path: str, kind: int, size: int, seconds: float) -> dict[str, float]:
    """The host's own syscall on the same file and sizes, into one anonymous buffer."""
    fd = os.open(path, os.O_RDWR)
    memory = GuestMemory([(0, 2 * max(size, 4096))])
    view = memory.view(0, size)
    sectors = IMAGE_SIZE // 512
    step = max(size, 512) // 512
    position = done = 0
    start, cpu_start = time.perf_counter(), time.thread_time()
    try:
        while time.perf_counter() - start < seconds:
            for _ in range(16):
                offset = (position % (sectors - step)) * 512
                position += step
                if kind == T_IN:
                    os.preadv(fd, [view], offset)
                elif kind == T_OUT:
                    os.pwritev(fd, [view], offset)
                else:
                    os.fdatasync(fd)
            done += 16
    finally:
        elapsed = time.perf_counter() - start
        cpu = time.thread_time() - cpu_start
        view.release()
        memory.close()
        os.close(fd)
    return {"rate": done / elapsed, "device_us": cpu / done * 1e6, "wall_us": elapsed / done * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per case")
    parser.add_argument("--dir", default=None, help="where the 256 MiB image goes (default: a temp dir)")
    parser.add_argument("--batch", type=int, default=32, help="requests posted per notify")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.img")
        with open(path, "wb") as file:
            for _ in range(IMAGE_SIZE // MiB):
                file.write(os.urandom(MiB))  # written, so the page cache holds it
        print(f"image {path}: {IMAGE_SIZE // MiB} MiB, page-cached; {args.batch} requests per notify")
        header = f"{'request':<16}{'path':<20}{'req/s':>9}{'device CPU us':>16}{'I/O thread busy':>17}"
        print(header)
        print("-" * len(header))
        cases = [(T_IN, "read", 4096), (T_IN, "read", MiB), (T_OUT, "write", 4096), (T_OUT, "write", MiB)]
        cases.append((T_FLUSH, "flush", 0))
        for kind, name, size in cases:
            label = f"{name} {size // 1024} KiB" if size else name
            raw = run_raw(path, kind, size, args.seconds)
            host = f" {raw['device_us']:.1f} (wall {raw['wall_us']:.0f})"
            print(f"{label:<16}{'host syscall':<20}{raw['rate']:>9.0f}{host:>16}")
            for workers in (0, 2, 4):
                result = run_device(path, kind, size, args.batch, workers, args.seconds)
                mode = "pyvmm inline" if workers == 0 else f"pyvmm pool of {workers}"
                line = f"{'':<16}{mode:<20}{result['rate']:>9.0f}{result['device_us']:>16.1f}"
                print(f"{line}{result['busy']:>16.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
