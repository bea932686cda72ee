"""Generated virtqueue cases, many of them: the hypothesis tests' generator
(tests/virtio/fuzz_cases.py) driven by a seeded random generator for speed.

Each case lays out a guest's descriptor table, two indirect tables and both rings in
a real GuestMemory (two RAM regions with a hole between them), enables a queue with
random features and device limits, and runs up to 24 device operations (pop,
add_used, interrupt decisions, notification switches, the guest rewriting its rings,
save and restore). The property is the one the tests assert: nothing but
`VirtqueueError`, every chain inside RAM and keeping the chain rules, no hang.

    python benchmarks/virtqueue_fuzz.py [--cases 100000] [--seed 0]

Prints the count, how the cases ended (the first fault, or none), what the
operations gave, and the rate. Exits 0 when the property held for every case, 1 with
the failing seed and the error otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):  # run as a script from anywhere: pyvmm and the generator
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from virtio.fuzz_cases import RandomChooser, generate, make_memory, run_case  # noqa: E402

from pyvmm.virtio.errors import Fault  # noqa: E402


def table(title: str, counts: Counter[str], total: int) -> list[str]:
    lines = [f"{title:<28} {'count':>9} {'share':>7}  spec"]
    for name, count in counts.most_common():
        clause = Fault[name].value.split(":")[0] if name in Fault.__members__ else ""
        lines.append(f"  {name:<26} {count:>9} {100 * count / total:>6.2f}%  {clause}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="how many cases (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    args = parser.parse_args(argv)
    if args.cases <= 0:
        parser.error("--cases must be positive")

    memory = make_memory()
    outcomes: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    started = time.perf_counter()
    for i in range(args.cases):
        seed = args.seed + i
        try:
            result = run_case(generate(RandomChooser(seed)), memory)
        except Exception:
            print(f"virtqueue_fuzz: the property failed for seed {seed}:", file=sys.stderr)
            traceback.print_exc()
            return 1
        outcomes[result.outcome] += 1
        operations += result.operations
    seconds = time.perf_counter() - started

    print(f"{args.cases} cases (seeds {args.seed}..{args.seed + args.cases - 1}): property held for all")
    print("\n".join(table("cases ended by", outcomes, args.cases)))
    print("\n".join(table("operations gave", operations, sum(operations.values()))))
    print(f"{args.cases / seconds:.0f} cases/s, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
