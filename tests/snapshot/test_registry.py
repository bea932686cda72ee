"""The saved-state tag registry (pyvmm/snapshot/registry.py): every state a real
machine saves is registered beside its class under its stable tag, each tag names one
class and each class one tag, and what the codec could not rebuild is refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from machine.test_machine_state import built, machine_config

from pyvmm.devices.device import DeviceState
from pyvmm.devices.serial_state import SerialState
from pyvmm.snapshot.registry import registered, saved_state, state_class, tag_of

# The tags a snapshot file holds: renaming one makes older files unreadable.
DEVICE_TAGS = {
    "device",
    "serial",
    "cmos-rtc",
    "i8042",
    "ps2-keyboard",
    "fw-cfg",
    "power-control",
    "acpi-sleep",
    "debug-exit",
    "port-sink",
    "pc-testdev",
    "pci-testdev",
    "pci-host",
    "pci-function",
    "pci-msix",
    "virtio-queue",
    "virtio-core",
    "virtio-pci",
    "virtio-mmio",
    "virtio-blk",
    "virtio-net",
    "virtio-rng",
    "virtio-console",
}


def states_within(value: object) -> Iterator[object]:
    """Every dataclass instance in a saved tree, the root included."""
    if dataclasses.is_dataclass(value):
        yield value
        for field in dataclasses.fields(value):
            yield from states_within(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            yield from states_within(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from states_within(item)


@pytest.mark.kvm
@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_every_state_a_machine_saves_is_registered(tmp_path: Path, transport: str) -> None:
    with built(machine_config(tmp_path, transport, net=False), None) as machine:
        saved = machine.save_devices()
    found = {type(state) for state in states_within(saved)}
    assert DeviceState in found and len(found) > 10
    assert [cls.__qualname__ for cls in found if tag_of(cls) is None] == []


def test_the_device_tags_name_their_classes_both_ways() -> None:
    tags = registered()
    assert tags.keys() >= DEVICE_TAGS
    for tag, cls in tags.items():
        assert state_class(tag) is cls and tag_of(cls) == tag
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert len(set(tags.values())) == len(tags)


def test_unknown_names_and_classes_are_none() -> None:
    assert state_class("no-such-state") is None
    assert tag_of(int) is None
    with pytest.raises(TypeError):
        registered()["serial"] = int  # type: ignore[index]


def test_registering_a_class_again_under_its_tag_changes_nothing() -> None:
    assert saved_state("serial")(SerialState) is SerialState
    assert state_class("serial") is SerialState


class Plain:
    value: int = 0


@dataclasses.dataclass
class Mutable:
    value: int


@dataclasses.dataclass(frozen=True)
class Checked:
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


@dataclasses.dataclass(frozen=True)
class Derived:
    value: int
    double: int = dataclasses.field(init=False, default=0)


@dataclasses.dataclass(frozen=True)
class Another:
    value: int


@pytest.mark.parametrize(
    ("tag", "cls", "message"),
    [
        ("test-plain", Plain, "frozen dataclass"),
        ("test-mutable", Mutable, "frozen dataclass"),
        ("test-checked", Checked, "from its fields alone"),
        ("test-derived", Derived, "from its fields alone"),
        ("serial", Another, "taken by SerialState"),
        ("test-serial-again", SerialState, "registered as 'serial'"),
        ("", Another, "not 1-64 printable ASCII"),
        ("tést", Another, "not 1-64 printable ASCII"),
        ("a\nb", Another, "not 1-64 printable ASCII"),
        ("x" * 65, Another, "not 1-64 printable ASCII"),
    ],
)
def test_what_the_codec_could_not_rebuild_is_refused(tag: str, cls: type, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        saved_state(tag)(cls)
    assert state_class(tag) is not cls
    assert tag_of(Another) is None
