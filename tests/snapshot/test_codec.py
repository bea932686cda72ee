"""The saved-state codec (pyvmm/snapshot/codec.py): a real machine's device states go
through bytes and back unchanged, and a second machine takes the decoded states; an
int past 64 bits (the RTC's offset from the host clock) survives; what decode reads is
untrusted: a refusal is a `StateError`, never another exception, and damaged bytes of
a real save give a refusal or states the devices' `restore()` refuse or take."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import msgpack  # type: ignore[import-untyped]
import pytest
from devices.rtc_harness import BINARY_24H, Rtc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from machine.test_machine_state import built, machine_config, settled, use_devices

from pyvmm import Machine
from pyvmm.devices.device import DeviceState
from pyvmm.devices.rtc_registers import Register, RegisterB
from pyvmm.errors import StateError
from pyvmm.snapshot.codec import MAX_BIG_INT_BYTES, MAX_DEPTH, MAX_ENCODED, MAX_ITEMS, MAX_STR, decode, encode
from pyvmm.snapshot.registry import MAX_TAG, saved_state

# The wire format's ext types (codec.py): a format change must show here.
BIG_INT, TAG = 1, 2
INT_BITS = 8 * MAX_BIG_INT_BYTES  # signed: -(2**255) to 2**255 - 1


@saved_state("test-codec-node")
@dataclasses.dataclass(frozen=True)
class Node:
    """A registered state holding anything the codec writes."""

    value: object
    children: tuple[object, ...]


@saved_state("test-codec-empty")
@dataclasses.dataclass(frozen=True)
class Empty:
    """A state with no fields (as virtio-rng's)."""


def exact(value: object) -> str:
    """`value` with its types: 1 == True and (1,) == (True,), but their reprs differ."""
    return repr(value)


def wire(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def state_wire(tag: str, fields: object, *more: object) -> bytes:
    return wire((msgpack.ExtType(TAG, tag.encode()), fields, *more))


# --- real states ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["pci", "mmio"])
def machine_states(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Machine, dict[str, DeviceState]]]:
    """A machine's saved states, after a guest's writes, and a second machine built
    from the same configuration to restore them into (neither runs a guest)."""
    config = machine_config(tmp_path_factory.mktemp("codec"), request.param, net=False)
    with built(config, None) as first:
        use_devices(first)
        states = first.save_devices()
    with built(config, None) as second:
        assert settled(second.save_devices()) != settled(states)  # a restore that did nothing shows
        yield second, states


@pytest.mark.kvm
def test_a_machines_states_go_through_bytes_to_a_second_machine(
    machine_states: tuple[Machine, dict[str, DeviceState]],
) -> None:
    target, states = machine_states
    data = encode(states)
    decoded = decode(data)
    assert decoded == states and exact(decoded) == exact(states)
    assert encode(decoded) == data
    target.restore_devices(decoded)
    assert settled(target.save_devices()) == settled(states)
    # The guest-visible registers, read back on the second machine's buses.
    assert target.ports.read(0x3FF, 1) == 0x5A and target.ports.read(0xE0, 4) == 0xDEAD_BEEF


def damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` cut short anywhere, or with 1 to 8 bits flipped anywhere."""
    cut = st.integers(0, len(data) - 1).map(lambda end: data[:end])
    bit = st.integers(0, 8 * len(data) - 1)

    def flip(bits: list[int]) -> bytes:
        flipped = bytearray(data)
        for index in bits:
            flipped[index // 8] ^= 1 << index % 8
        return bytes(flipped)

    return cut | st.lists(bit, min_size=1, max_size=8, unique=True).map(flip)


@pytest.mark.kvm
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_save_is_refused_or_restored_never_another_error(
    machine_states: tuple[Machine, dict[str, DeviceState]], data: st.DataObject
) -> None:
    target, states = machine_states
    spoiled = data.draw(damaged(encode(states)))
    try:
        decoded = decode(spoiled)
    except StateError:
        return
    try:
        target.restore_devices(decoded)
    except StateError:
        pass
    # Whatever was taken or refused, the devices take the good states again.
    target.restore_devices(states)
    assert settled(target.save_devices()) == settled(states)


def test_an_rtc_offset_past_64_bits_survives() -> None:
    """A guest that set its clock to 9999: the RTC's offset from the host is ~2**68 ns."""
    source = Rtc()
    source.put(Register.B, BINARY_24H | RegisterB.SET)
    source.put(Register.CENTURY, 99)
    source.put(Register.YEAR, 99)
    source.put(Register.B, BINARY_24H)
    state = source.device.save()
    assert state.offset_ns > 1 << 64
    decoded = decode(encode(state))
    assert decoded == state
    target = Rtc(source.clock)
    target.device.restore(decoded)
    assert target.time() == source.time() and target.get(Register.CENTURY) == 99
    target.device.close()
    source.device.close()


# --- any tree ---------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << (INT_BITS - 1)), (1 << (INT_BITS - 1)) - 1)
    | st.integers(-(1 << 64), 1 << 64)
    | st.binary(max_size=64)
    | st.text(max_size=16)
    | st.just(Empty())
)
trees = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.builds(Node, inner, st.lists(inner, max_size=3).map(tuple))
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(tree=trees)
def test_any_tree_goes_through_bytes_unchanged(tree: object) -> None:
    decoded = decode(encode(tree))
    assert decoded == tree and exact(decoded) == exact(tree)


def nested(depth: int) -> object:
    value: object = None
    for _ in range(depth):
        value = (value,)
    return value


def test_nesting_up_to_the_cap_goes_through() -> None:
    deepest = nested(MAX_DEPTH)
    assert decode(encode(deepest)) == deepest
    states = Node(None, ())  # a state and its children's tuple: two levels
    for _ in range(MAX_DEPTH - 2):
        states = Node(states, ())
    assert decode(encode(states)) == states
    with pytest.raises(StateError, match="deeper"):
        encode(Node(states, ()))


@dataclasses.dataclass(frozen=True)
class Unregistered:
    value: int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Unregistered(1), "Unregistered is not a registered saved state"),
        (Node(RegisterB.SET, ()), "RegisterB is not a registered"),  # an IntFlag is no int
        (Register.A, "Register is not a registered"),
        ([1, 2], "list is not a registered"),
        (1.5, "float is not a registered"),
        (bytearray(b"x"), "bytearray is not a registered"),
        ("x" * (MAX_STR + 1), f"more than {MAX_STR}"),
        ("\ud800", "a lone surrogate"),
        ({1: "one"}, "dict key is not a str"),
        (1 << (INT_BITS - 1), f"more than {INT_BITS}"),
        (-(1 << (INT_BITS - 1)) - 1, f"more than {INT_BITS}"),
        (nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
        ((bytes(MAX_ENCODED),), f"more than {MAX_ENCODED}"),
        (tuple(range(MAX_ITEMS + 1)), f"entries, more than {MAX_ITEMS}"),
    ],
)
def test_what_decode_could_not_give_back_is_not_encoded(value: object, message: str) -> None:
    with pytest.raises(StateError, match=message):
        encode(value)


# --- untrusted bytes -------------------------------------------------------------------

NODE_FIELDS: dict[object, object] = {"value": 1, "children": ()}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "incomplete"),
        (b"\xc1", "FormatError"),  # a byte msgpack never uses
        (wire(1) + b"\x00", "extra data"),
        (bytes(MAX_ENCODED + 1), f"more than {MAX_ENCODED}"),
        (b"\xdd\xff\xff\xff\xff", "max_array_len"),  # an array of 2**32 - 1 entries, claimed
        (wire(1.5), "type float"),
        (b"\xd6\xff\x00\x00\x00\x01", "type Timestamp"),
        (b"\xa2\xff\xfe", "utf-8"),
        (wire({1: None}), "not a saved-state encoding"),  # an int key
        (b"\x81\x91\x01\xc0", "not a saved-state encoding"),  # an array key
        (b"\x82\xa1a\x01\xa1a\x02", "key twice"),
        (wire(msgpack.ExtType(9, b"")), "unknown ext type 9"),
        (wire(msgpack.ExtType(BIG_INT, b"")), "int of 0 bytes"),
        (wire(msgpack.ExtType(BIG_INT, bytes(MAX_BIG_INT_BYTES + 1))), f"not 1-{MAX_BIG_INT_BYTES}"),
        (wire(msgpack.ExtType(TAG, b"x" * (MAX_TAG + 1))), "max_ext_len"),
        (wire(msgpack.ExtType(TAG, b"\xff")), "not UTF-8"),
        (wire(msgpack.ExtType(TAG, b"test-codec-node")), "tag outside a state"),
        (wire({"a": (1, msgpack.ExtType(TAG, b"test-codec-empty"))}), "tag outside a state"),
        (state_wire("no-such-state", {}), "unknown tag 'no-such-state'"),
        (state_wire("test-codec-node", (1, ())), "not a tag and a map"),  # fields by position
        (state_wire("test-codec-node", NODE_FIELDS, None), "not a tag and a map"),
        (state_wire("test-codec-node", {"value": 1}), "missing field"),
        (state_wire("test-codec-node", {**NODE_FIELDS, "colour": 1}), "unknown field"),
        (state_wire("test-codec-node", {**NODE_FIELDS, b"value": 1}), "unknown field"),
        (wire(nested(MAX_DEPTH + 1)), f"deeper than {MAX_DEPTH}"),
        (b"\x91" * 5000 + b"\xc0", "StackError"),  # deeper than msgpack's own stack
    ],
)
def test_bad_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(StateError, match=message):
        decode(data)


def test_decode_takes_bytes_only() -> None:
    with pytest.raises(StateError, match="expected bytes"):
        decode(bytearray(encode(None)))  # type: ignore[arg-type]


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        decode(data)
    except StateError:
        pass


@settings(max_examples=200)
@given(tree=trees, data=st.data())
def test_a_damaged_tree_decodes_or_is_refused(tree: object, data: st.DataObject) -> None:
    encoded = encode(tree)
    if not encoded:
        return
    try:
        decode(data.draw(damaged(encoded)))
    except StateError:
        pass
