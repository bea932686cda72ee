"""Property-based tests of the virtqueue (virtio 1.2 §2.7): whatever a guest writes into
its descriptor tables, indirect tables and rings, and whatever the device does in what
order, the queue raises nothing but `VirtqueueError`, hands out only chains whose every
buffer lies in RAM and which keep the chain rules, and never hangs (every walk is
bounded by a ttl; hypothesis' deadline catches a slow one).

The generator is tests/virtio/fuzz_cases.py, shared with benchmarks/virtqueue_fuzz.py,
which runs far more cases from a seeded random generator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio.fuzz_cases import RandomChooser, generate, make_memory, run_case

from pyvmm.memory import GuestMemory
from pyvmm.virtio.errors import Fault

T = TypeVar("T")


class DrawChooser:
    """Each choice drawn through hypothesis, so that a failing case shrinks."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options: tuple[T, ...]) -> T:
        return self.data.draw(st.sampled_from(options))


@pytest.fixture(scope="module")
def fuzz_memory() -> Iterator[GuestMemory]:
    memory = make_memory()
    yield memory
    memory.close()


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_guest_input_gives_checked_chains_or_a_virtqueue_error(
    fuzz_memory: GuestMemory, data: st.DataObject
) -> None:
    run_case(generate(DrawChooser(data)), fuzz_memory)


def test_the_generator_reaches_every_kind_of_outcome(fuzz_memory: GuestMemory) -> None:
    """A fuzzer that never gets past the first check proves nothing: the seeded cases
    (the benchmark's generator) reach valid chains and every chain and ring fault."""
    seen: Counter[str] = Counter()
    for seed in range(3000):
        seen += run_case(generate(RandomChooser(seed)), fuzz_memory).operations
    expected = {f.name for f in Fault} - {"NOT_READY", "BUFFER_TOO_SMALL", "USED", "STATE"}  # unit-tested
    assert seen["chain"] > 300 and seen["empty"] > 0
    assert expected <= set(seen), expected - set(seen)
