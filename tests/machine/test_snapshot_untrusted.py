"""A snapshot file is untrusted input (issue 17; docs/security.md): whatever is in it,
`Machine.restore` either takes it or refuses it with a `StateError` (one clear line in
the CLI), never another exception, and a refused restore leaves nothing running.
Hypothesis changes one field anywhere in a real snapshot's decoded state (devices, VM,
vCPUs, the machine's shape) and writes it back as a well-formed file, so the checks
behind the file's checksums are what is tested; plain bit flips and truncations of
the file are refused by the file's own checks."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm import Machine, MachineConfig
from pyvmm.arch.x86.layout import MMIO_HOLE_END, MMIO_HOLE_START
from pyvmm.errors import StateError
from pyvmm.memory import split_around_hole
from pyvmm.snapshot.codec import decode, encode
from pyvmm.snapshot.file import read_snapshot, write_snapshot

pytestmark = pytest.mark.kvm

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([0, 1, 255, 256, 65535, 1 << 32, (1 << 64) - 1]),
    st.binary(max_size=64),
    st.text(max_size=8),
    st.tuples(st.integers(0, 3)),
)


def leaves(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path to a field or tuple element inside a decoded state tree."""
    found = [path] if path else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found += leaves(getattr(value, field.name), (*path, field.name))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            found += leaves(item, (*path, index))
    return found


def replaced(value: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(head, str):
        return dataclasses.replace(value, **{head: replaced(getattr(value, head), rest, new)})  # type: ignore[type-var]
    assert isinstance(value, tuple) and isinstance(head, int)
    return (*value[:head], replaced(value[head], rest, new), *value[head + 1 :])


@pytest.fixture(scope="module")
def decoded(
    saved: tuple[Path, MachineConfig, int],
) -> tuple[dict[str, object], dict[str, list[tuple[object, ...]]]]:
    path, _, _ = saved
    with read_snapshot(path) as snapshot:
        parts = {name: decode(data) for name, data in snapshot.parts.items()}
    return parts, {name: leaves(tree) for name, tree in parts.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_changed_field_is_refused_or_taken_never_a_crash(
    saved: tuple[Path, MachineConfig, int],
    decoded: tuple[dict[str, object], dict[str, list[tuple[object, ...]]]],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    path, config, _ = saved
    parts, paths = decoded
    part = data.draw(st.sampled_from(sorted(name for name in paths if paths[name])))
    where = data.draw(st.sampled_from(paths[part]))
    new = data.draw(VALUES)
    try:
        changed = {
            name: encode(replaced(tree, where, new) if name == part else tree) for name, tree in parts.items()
        }
    except StateError:
        return  # the codec itself cannot write that value: nothing to test
    target = tmp_path_factory.mktemp("changed") / "vm.snap"
    layout = split_around_hole(config.memory_bytes(), MMIO_HOLE_START, MMIO_HOLE_END)
    with read_snapshot(path) as original:
        memory = original.guest_memory(layout)
    try:
        write_snapshot(target, changed, memory)
    finally:
        memory.close()
    threads = threading.active_count()
    try:
        machine = Machine.restore(target, config, paused=True)
    except StateError:
        assert threading.active_count() <= threads  # nothing left running
        return
    machine.stop()
    assert machine.wait(10) is not None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0), flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_a_damaged_file_is_refused(
    saved: tuple[Path, MachineConfig, int],
    tmp_path_factory: pytest.TempPathFactory,
    cut: int,
    flips: list[int],
) -> None:
    path, config, _ = saved
    data = bytearray(path.read_bytes())
    with read_snapshot(path) as snapshot:  # the header and parts: what the checksums always cover
        header_end = min(region.file_offset for region in snapshot.regions)
    for offset, bit in {(flip % header_end, flip // header_end % 8) for flip in flips}:
        data[offset] ^= 1 << bit  # each bit once: two flips of one bit would undo each other
    data = data[: len(data) - cut % 4096] if cut % 3 == 0 else data
    target = tmp_path_factory.mktemp("damaged") / "vm.snap"
    target.write_bytes(bytes(data))
    os.truncate(target, len(data))
    with pytest.raises(StateError):
        Machine.restore(target, config, paused=True)
