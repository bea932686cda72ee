"""The snapshot file: how long saving and restoring take, and what the file costs on disk.

For each guest RAM size (`--sizes`, MiB) and amount of it the "guest" wrote
(`--touched`, MiB of random pages spread over the RAM, plus a few pages only read),
in this process:

- write: `write_snapshot` of that memory and two small parts (seconds, MiB/s of
  touched memory), the file's length and its allocated blocks (`st_blocks * 512`;
  target: at most the touched memory + 1 MiB);
- restore: `read_snapshot` + `SnapshotFile.guest_memory()` + closing the file,
  median and worst of `--rounds` rounds, the file's pages already in the page cache
  (target: at most 10 ms for 256 MiB, and no growth with RAM: nothing is read);
- first touch: reading every touched page of the restored memory once (the cost
  moved from restore to the guest's first accesses);
- verify: `SnapshotFile.verify_memory()` (reads all the stored pages).

    python benchmarks/snapshot_file.py [--sizes 256,1024,4096] [--touched 16,128]
                                       [--rounds 20] [--dir DIR]

Exits 0 whatever the numbers are; 1 with one line on stderr when it cannot measure.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyvmm.errors import VmmError  # noqa: E402
from pyvmm.memory import PAGE_SIZE, GuestMemory  # noqa: E402
from pyvmm.snapshot.file import read_snapshot, write_snapshot  # noqa: E402

MiB = 1 << 20
PARTS = {"config": b"{}" * 100, "devices": bytes(64 << 10)}


@dataclass(frozen=True)
class Row:
    ram: int
    touched: int
    write_s: float
    file_size: int
    allocated: int
    restore_ms: list[float]
    first_touch_ms: float
    verify_ms: float


def _touch(memory: GuestMemory, touched: int, seed: int) -> list[int]:
    """Write random bytes to `touched` bytes of pages spread over the RAM (in runs of
    64 KiB, as a guest's allocations come), and read a few more pages."""
    rng = random.Random(seed)
    runs = memory.size // (64 << 10)
    chosen = sorted(rng.sample(range(runs), min(runs, touched // (64 << 10))))
    addresses = [run * (64 << 10) for run in chosen]
    for address in addresses:
        memory.write(address, rng.randbytes(64 << 10))
    for _ in range(16):
        memory.read(rng.randrange(memory.size // PAGE_SIZE) * PAGE_SIZE, PAGE_SIZE)
    return addresses


def measure(ram: int, touched: int, rounds: int, directory: Path) -> Row:
    memory = GuestMemory([(0, ram)])
    try:
        addresses = _touch(memory, touched, seed=ram ^ touched)
        path = directory / f"bench-{ram}-{touched}.snap"
        started = time.perf_counter()
        info = write_snapshot(path, PARTS, memory)
        write_s = time.perf_counter() - started
    finally:
        memory.close()
    restore = []
    for _ in range(rounds):
        started = time.perf_counter()
        with read_snapshot(path) as snapshot:
            restored = snapshot.guest_memory()
        restore.append((time.perf_counter() - started) * 1e3)
        restored.close()
    with read_snapshot(path) as snapshot:
        restored = snapshot.guest_memory()
        started = time.perf_counter()
        for address in addresses:
            restored.read(address, 64 << 10)
        first_touch_ms = (time.perf_counter() - started) * 1e3
        restored.close()
        started = time.perf_counter()
        snapshot.verify_memory()
        verify_ms = (time.perf_counter() - started) * 1e3
    path.unlink()
    return Row(
        ram,
        len(addresses) * (64 << 10),
        write_s,
        info.size,
        info.allocated,
        restore,
        first_touch_ms,
        verify_ms,
    )


def table(rows: list[Row]) -> str:
    header = (
        f"{'RAM':>7} {'touched':>8} {'write s':>8} {'MiB/s':>7} {'file':>8} {'blocks':>8} {'≤ target':>8} "
        f"{'restore ms':>10} {'worst':>7} {'1st touch ms':>12} {'verify ms':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        within = "yes" if row.allocated <= row.touched + MiB else "NO"
        rate = row.touched / MiB / row.write_s if row.write_s else 0.0
        lines.append(
            f"{row.ram // MiB:>6}M {row.touched // MiB:>7}M {row.write_s:>8.3f} {rate:>7.0f} "
            f"{row.file_size // MiB:>7}M {row.allocated / MiB:>7.1f}M {within:>8} "
            f"{statistics.median(row.restore_ms):>10.3f} {max(row.restore_ms):>7.3f} "
            f"{row.first_touch_ms:>12.1f} {row.verify_ms:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096", help="guest RAM sizes, MiB")
    parser.add_argument("--touched", default="16,128", help="MiB the guest wrote")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the files go (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) * MiB for size in args.sizes.split(",")]
        touched = [int(amount) * MiB for amount in args.touched.split(",")]
    except ValueError:
        print("snapshot_file: --sizes and --touched are comma-separated MiB", file=sys.stderr)
        return 1
    rows = []
    try:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="pyvmm-snapshot-bench-") as directory:
            for ram in sizes:
                for amount in touched:
                    if amount <= ram:
                        rows.append(measure(ram, amount, max(1, args.rounds), Path(directory)))
    except (VmmError, OSError) as exc:
        print(f"snapshot_file: cannot measure: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
