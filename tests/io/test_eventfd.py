"""EventFd: eventfd(2) counter semantics, non-blocking reads, a safe close."""

from __future__ import annotations

import os
import selectors
import threading

from pyvmm.io.eventfd import EventFd


def test_signals_add_up_until_consumed() -> None:
    with EventFd() as event:
        assert event.consume() == 0  # non-blocking: nothing pending reads as 0
        event.signal()
        event.signal(3)
        assert event.consume() == 4
        assert event.consume() == 0


def test_it_is_a_real_eventfd_that_wakes_a_selector_from_another_thread() -> None:
    with EventFd() as event, selectors.DefaultSelector() as selector:
        selector.register(event.fileno(), selectors.EVENT_READ)
        assert selector.select(timeout=0) == []
        threading.Thread(target=event.signal).start()
        assert len(selector.select(timeout=5)) == 1
        assert os.eventfd_read(event.fileno()) == 1  # plain os calls see the same counter


def test_closed_eventfd_ignores_late_signals() -> None:
    event = EventFd()
    event.close()
    assert event.closed and event.fileno() == -1
    event.signal()  # a device torn down while an interrupt was on its way: no error
    assert event.consume() == 0
    event.close()  # twice is harmless


def test_a_full_counter_does_not_raise() -> None:
    with EventFd() as event:
        event.signal(0xFFFF_FFFF_FFFF_FFFE)  # the most an eventfd holds
        event.signal()  # would block: dropped, the reader has a wake-up pending anyway
        assert event.consume() == 0xFFFF_FFFF_FFFF_FFFE
