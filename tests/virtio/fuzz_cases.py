"""Generated virtqueue cases: arbitrary descriptor tables, indirect tables, rings, indices,
lengths, flags, features and device operations, run against a real GuestMemory.

One generator serves both the hypothesis tests (tests/virtio/test_properties.py, which
draw each choice through hypothesis so that failures shrink) and
benchmarks/virtqueue_fuzz.py (a seeded `random.Random`, for speed). Values are drawn
from pools that mix the valid with the edges (ends of RAM regions, the hole between
them, the top of the address space, off-by-one indices) so that most cases get past
the first check and reach the deep ones.

`run_case` returns the outcomes of its operations; the only exception it lets out is
one that breaks the property: anything but `VirtqueueError`, or a chain that
violates an invariant (`InvariantError`).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pyvmm.memory import GuestMemory
from pyvmm.virtio import DescriptorChain, Fault, Feature, Virtqueue, VirtqueueError
from pyvmm.virtio.chain import MAX_INDIRECT_ENTRIES
from pyvmm.virtio.spec import DESC

T = TypeVar("T")

# Two RAM regions with a hole between them, as GuestMemory has around the MMIO hole.
REGIONS = [(0, 0x10000), (0x20000, 0x10000)]
HOLE = 0x10000
RAM_END = 0x30000
MAX_SIZE = 16
DESC_AT, AVAIL_AT, USED_AT = 0x1000, 0x1400, 0x1800
TABLES = (0x3000, 0x2F000)  # indirect tables: one per region, the second near RAM's end
TABLE_ENTRIES = 8
DATA = (0x8000, 0x28000)

OPS = ("pop", "pop", "pop", "add_used", "interrupt", "disable", "enable", "poke", "save_restore")


class Chooser(Protocol):
    """Where the choices come from: hypothesis' `data.draw`, or a random.Random."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: tuple[T, ...]) -> T: ...


class InvariantError(AssertionError):
    """A chain the queue accepted breaks a rule it should have enforced."""


@dataclass
class Case:
    size: int
    features: int
    rings: tuple[int, int, int]
    max_chain_bytes: int
    max_chain_descriptors: int | None
    table: list[tuple[int, int, int, int]]
    tables: list[list[tuple[int, int, int, int]]]
    avail_flags: int
    ring: list[int]
    used_event: int
    start: int
    avail_idx: int
    ops: list[tuple[str, int, int]] = field(default_factory=list)


def _address(c: Chooser) -> int:
    kind = c.integer(0, 15)
    if kind <= 9:
        return c.choice(DATA) + 16 * c.integer(0, 64)
    if kind == 10:
        return c.choice(TABLES) + 16 * c.integer(0, 2)
    if kind == 11:  # just before the end of a region: buffers that run out of it
        return c.choice((HOLE, RAM_END)) - c.integer(0, 40)
    if kind == 12:
        return HOLE + c.integer(0, 0xFFFF)
    if kind == 13:
        return (1 << 64) - c.integer(1, 64)
    if kind == 14:
        return c.choice((DESC_AT, AVAIL_AT, USED_AT))  # a buffer over the rings: allowed
    return c.integer(0, (1 << 64) - 1)


def _length(c: Chooser) -> int:
    kind = c.integer(0, 15)
    if kind <= 9:
        return c.integer(0, 64)
    if kind <= 11:
        return 16 * c.integer(0, TABLE_ENTRIES + 1)  # indirect table lengths
    if kind == 12:
        return 16 * c.integer(1, TABLE_ENTRIES) + c.integer(1, 15)
    if kind == 13:
        return c.choice((0x1000, 0x10000, 0x20000, 1 << 31, (1 << 32) - 1))
    return c.integer(0, (1 << 32) - 1)


def _flags(c: Chooser) -> int:
    kind = c.integer(0, 19)
    if kind <= 15:
        return c.choice((0, 1, 2, 3))  # NEXT / WRITE
    if kind <= 18:
        return 4 | c.integer(0, 3)  # INDIRECT, maybe with NEXT or WRITE
    return c.integer(0, 0xFFFF)  # and bits the spec does not define


def _next(c: Chooser, entries: int) -> int:
    kind = c.integer(0, 19)
    if kind <= 17:
        return c.integer(0, entries - 1)
    if kind == 18:
        return entries + c.integer(0, 2)
    return c.integer(0, 0xFFFF)


def _descriptor(c: Chooser, entries: int) -> tuple[int, int, int, int]:
    flags = _flags(c)
    if flags & 4 and c.integer(0, 3):  # most indirect descriptors name a real table
        length = 16 * c.choice((c.integer(1, TABLE_ENTRIES), 257))  # 257: past RAM from TABLES[1]
        return (c.choice(TABLES), length, flags, _next(c, entries))
    return (_address(c), _length(c), flags, _next(c, entries))


def _ring_address(c: Chooser, good: int, align: int) -> int:
    kind = c.integer(0, 59)
    if kind <= 56:
        return good
    if kind == 57:
        return good + c.integer(1, align)  # misaligned (or the next aligned slot)
    if kind == 58:
        return c.choice((HOLE, RAM_END)) - c.integer(0, 64) * 2
    return c.integer(0, (1 << 64) - 1)


def _any_head(c: Chooser, entries: int) -> int:
    return c.choice((c.integer(0, entries + 1), c.integer(0, 0xFFFF)))


def generate(c: Chooser) -> Case:
    """One case, every value drawn from `c`."""
    size = c.choice((1, 2, 4, 8, 16) if c.integer(0, 20) else (3, 32, 0))
    entries = max(size, 1)
    features = int(Feature.VERSION_1)
    if c.integer(0, 3):
        features |= Feature.INDIRECT_DESC
    if c.integer(0, 1):
        features |= Feature.EVENT_IDX
    rings = (_ring_address(c, DESC_AT, 16), _ring_address(c, AVAIL_AT, 2), _ring_address(c, USED_AT, 4))
    start = c.choice((0, 0xFFFF - c.integer(0, 20), c.integer(0, 0xFFFF)))
    ahead = (
        c.integer(0, entries)
        if c.integer(0, 9)
        else c.choice((entries + c.integer(1, 3), c.integer(0xFF, 0xFFFF)))
    )
    ops = []
    for _ in range(c.integer(1, 24)):
        ops.append((c.choice(OPS), c.integer(0, 0x3FFF), c.integer(0, 0xFFFF)))
    return Case(
        size=size,
        features=features,
        rings=rings,
        max_chain_bytes=c.choice((1 << 32, 1 << 32, 4096, 64)),
        max_chain_descriptors=c.choice((None, None, 1, 4)),
        table=[_descriptor(c, entries) for _ in range(entries)],
        tables=[[_descriptor(c, TABLE_ENTRIES) for _ in range(TABLE_ENTRIES)] for _ in TABLES],
        avail_flags=c.choice((0, 1, c.integer(0, 0xFFFF))),
        ring=[
            c.integer(0, entries - 1) if c.integer(0, 15) else _any_head(c, entries) for _ in range(entries)
        ],
        used_event=c.choice((start, (start + c.integer(0, 4)) & 0xFFFF, c.integer(0, 0xFFFF))),
        start=start,
        avail_idx=(start + ahead) & 0xFFFF,
        ops=ops,
    )


def make_memory() -> GuestMemory:
    return GuestMemory(REGIONS)


def _lay_out(case: Case, memory: GuestMemory) -> None:
    """Write the case's rings and tables where a driver would have put them."""
    for gpa, size in REGIONS:
        memory.fill(gpa, size)
    entries = max(case.size, 1)
    memory.write(DESC_AT, b"".join(DESC.pack(*d) for d in case.table))
    for base, table in zip(TABLES, case.tables, strict=True):
        memory.write(base, b"".join(DESC.pack(*d) for d in table))
    memory.write_u16(AVAIL_AT, case.avail_flags)
    memory.write_u16(AVAIL_AT + 2, case.avail_idx)
    for slot, head in enumerate(case.ring):
        memory.write_u16(AVAIL_AT + 4 + 2 * slot, head)
    memory.write_u16(AVAIL_AT + 4 + 2 * entries, case.used_event)
    memory.write_u16(USED_AT + 2, case.start)


def check_chain(chain: DescriptorChain, queue: Virtqueue, memory: GuestMemory) -> None:
    """What every chain handed to a device satisfies, whatever the guest wrote."""

    def fail(why: str) -> None:
        raise InvariantError(f"{why}: {chain!r} {chain.buffers}")

    if not 0 <= chain.head < queue.size:
        fail("head out of range")
    seen_writable = False
    for buffer in chain.buffers:
        if not memory.contains(buffer.addr, buffer.length):
            fail("buffer outside RAM")
        if seen_writable and not buffer.writable:
            fail("readable after writable")
        seen_writable |= buffer.writable
    if len(chain.buffers) > queue.size + MAX_INDIRECT_ENTRIES:
        fail("too many descriptors")
    if queue.max_chain_descriptors is not None and len(chain.buffers) > queue.max_chain_descriptors:
        fail("over the device's descriptor limit")
    if sum(b.length for b in chain.buffers) > queue.max_chain_bytes:
        fail("over the byte limit")
    views = chain.readable + chain.writable
    if [len(v) for v in views] != [b.length for b in chain.buffers if not b.writable] + [
        b.length for b in chain.buffers if b.writable
    ]:
        fail("views do not match buffers")
    if not all(v.readonly for v in chain.readable) or any(v.readonly for v in chain.writable):
        fail("view permissions")


@dataclass
class Result:
    """How a case ended (its first fault's name, or "no fault") and what each
    operation gave ("chain", "empty", fault names; "BROKEN" for the refusals after)."""

    outcome: str
    operations: Counter[str]


def run_case(case: Case, memory: GuestMemory) -> Result:
    """Run `case` on `memory`."""
    _lay_out(case, memory)
    outcomes: Counter[str] = Counter()
    queue = Virtqueue(
        memory,
        MAX_SIZE,
        max_chain_bytes=case.max_chain_bytes,
        max_chain_descriptors=case.max_chain_descriptors,
    )
    queue.size = case.size
    queue.desc_table, queue.avail_ring, queue.used_ring = case.rings
    try:
        queue.enable(case.features)
        # Resume at `start` on both rings, as after a restore.
        queue.restore(dataclasses.replace(queue.save(), next_avail=case.start, next_used=case.start))
    except VirtqueueError as error:
        outcomes[error.fault.name] += 1
        return Result(error.fault.name, outcomes)
    in_flight: list[DescriptorChain] = []
    broken = False
    outcome = "no fault"
    for op, a, b in case.ops:
        if broken and op in ("pop", "interrupt", "disable", "enable"):
            # §2.1.2: after a fault the queue refuses everything until a reset.
            try:
                getattr(queue, _QUEUE_CALLS[op])()
            except VirtqueueError as error:
                if error.fault is not Fault.BROKEN:
                    raise InvariantError(f"broken queue raised {error.fault}") from error
                outcomes["BROKEN"] += 1
                continue
            raise InvariantError(f"broken queue accepted {op}")
        try:
            if op == "pop":
                chain = queue.pop()
                if chain is None:
                    outcomes["empty"] += 1
                    continue
                check_chain(chain, queue, memory)
                in_flight.append(chain)
                outcomes["chain"] += 1
            elif op == "add_used":
                if not in_flight:
                    continue
                done = in_flight.pop(a % len(in_flight))
                length = min(b, done.writable_len)
                done.write(bytes(length))
                queue.add_used(done.head, length)
            elif op == "interrupt":
                queue.needs_interrupt()
            elif op == "disable":
                queue.disable_notifications()
            elif op == "enable":
                queue.enable_notifications()
            elif op == "poke":  # the guest rewrites its rings or tables under the device
                memory.write_u16(poke_target(a), b)
            elif op == "save_restore":
                for done in in_flight:  # a device finishes (or gives back) its chains first
                    queue.add_used(done.head, 0)
                in_flight.clear()
                state = queue.save()
                queue = Virtqueue(
                    memory,
                    MAX_SIZE,
                    max_chain_bytes=case.max_chain_bytes,
                    max_chain_descriptors=case.max_chain_descriptors,
                )
                queue.restore(state)
            if op != "pop":
                outcomes[op] += 1
        except VirtqueueError as error:
            outcomes[error.fault.name] += 1
            if broken and error.fault is Fault.BROKEN:
                continue
            if queue.fault is not error:
                raise InvariantError(f"{error.fault} did not break the queue") from error
            broken = True
            outcome = error.fault.name
    return Result(outcome, outcomes)


_QUEUE_CALLS = {
    "pop": "pop",
    "interrupt": "needs_interrupt",
    "disable": "disable_notifications",
    "enable": "enable_notifications",
}


def poke_target(a: int) -> int:
    """An even address inside one of the areas the rings and tables live in."""
    areas = (DESC_AT, AVAIL_AT, USED_AT, *TABLES)
    return areas[a % len(areas)] + (a >> 3) % 0x100 * 2


class RandomChooser:
    """Choices from a seeded random.Random (the benchmark's generator)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def choice(self, options: tuple[T, ...]) -> T:
        return options[self.random.randrange(len(options))]
