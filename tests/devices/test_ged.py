"""The Generic Event Device (ACPI 6.4 §5.6.9): host-side events set bits in the event
selector and pulse the interrupt; the guest's read returns them and clears them."""

from __future__ import annotations

import threading

import pytest
from device_fakes import FakeLine

from pyvmm.devices.ged import ALL_EVENTS, GED_LENGTH, Ged, GedEvent, GedState
from pyvmm.errors import StateError
from pyvmm.snapshot.registry import state_class

POWER = int(GedEvent.POWER_BUTTON)
GENERATION = int(GedEvent.GENERATION_ID)


def test_an_event_pulses_the_line_once_and_waits_in_the_selector(line: FakeLine) -> None:
    ged = Ged(line)
    assert ged.read(0, 4) == 0
    ged.press_power_button()
    assert line.levels == [True, False]  # an edge, and low again for the next one
    assert ged.pending is GedEvent.POWER_BUTTON
    assert ged.read(0, 4) == POWER
    assert ged.read(0, 4) == 0  # read to clear
    assert ged.events_raised == 1


def test_events_raised_before_the_read_are_all_in_it(line: FakeLine) -> None:
    ged = Ged(line)
    ged.notify_generation_id()
    ged.press_power_button()
    ged.press_power_button()
    assert line.levels == [True, False] * 3
    assert ged.read(0, 4) == POWER | GENERATION
    assert ged.read(0, 4) == 0


def test_narrow_reads_take_only_their_bytes(line: FakeLine) -> None:
    ged = Ged(line)
    ged.raise_event(GedEvent.GENERATION_ID)
    assert ged.read(1, 1) == 0  # the events live in byte 0
    assert ged.read(0, 1) == GENERATION
    assert ged.read(0, 2) == 0
    # Past the 4-byte register: an empty port.
    ged.press_power_button()
    assert ged.read(GED_LENGTH - 1, 2) == 0xFF00
    assert ged.read(0, 4) == POWER


def test_writes_change_nothing(line: FakeLine) -> None:
    ged = Ged(line)
    ged.press_power_button()
    ged.write(0, 4, 0xFFFF_FFFF)
    ged.write(0, 4, 0)
    assert ged.read(0, 4) == POWER


def test_events_from_many_threads_are_never_lost(line: FakeLine) -> None:
    """Presses from host threads race the guest's reads: every event raised is either
    read by the guest or still pending at the end."""
    ged = Ged(line)
    seen = 0
    done = threading.Event()

    def guest() -> None:
        nonlocal seen
        while not done.is_set():
            seen |= ged.read(0, 4)

    def host(event: GedEvent) -> None:
        for _ in range(200):
            ged.raise_event(event)

    reader = threading.Thread(target=guest)
    reader.start()
    hosts = [threading.Thread(target=host, args=(event,)) for event in GedEvent]
    for thread in hosts:
        thread.start()
    for thread in hosts:
        thread.join()
    done.set()
    reader.join()
    seen |= ged.read(0, 4)
    assert seen == ALL_EVENTS
    assert ged.events_raised == 200 * len(GedEvent)
    assert line.levels == [True, False] * ged.events_raised


def test_reset_forgets_pending_events_and_lowers_the_line(line: FakeLine) -> None:
    ged = Ged(line)
    ged.press_power_button()
    ged.reset()
    assert ged.read(0, 4) == 0
    assert not line.high


def test_save_and_restore_keep_pending_events(line: FakeLine) -> None:
    source, target = Ged(line), Ged(FakeLine())
    source.notify_generation_id()
    state = source.save()
    assert state == GedState(GENERATION)
    assert state_class("ged") is GedState
    target.restore(state)
    assert target.read(0, 4) == GENERATION


@pytest.mark.parametrize(
    "state",
    [
        GedState(ALL_EVENTS + 1),  # a bit no event has
        GedState(-1),
        GedState(True),
        GedState("1"),  # type: ignore[arg-type]
        object(),
        None,
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(line: FakeLine, state: object) -> None:
    ged = Ged(line)
    ged.press_power_button()
    with pytest.raises(StateError, match="ged state"):
        ged.restore(state)
    assert ged.read(0, 4) == POWER
