"""IoThread with real eventfds and real threads: callbacks run in the loop thread,
registration works from any thread, pause parks the loop, errors are reported."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pyvmm.io import thread as io_thread
from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import IoThread

WAIT = 5.0  # generous: the host has two cores shared by everyone
QUIET = 0.3  # how long "nothing happens" is watched for


class Errors:
    def __init__(self) -> None:
        self.reports: list[tuple[str, BaseException]] = []
        self.arrived = threading.Event()

    def __call__(self, source: str, error: BaseException) -> None:
        self.reports.append((source, error))
        self.arrived.set()


@pytest.fixture
def errors() -> Errors:
    return Errors()


@pytest.fixture
def loop(errors: Errors) -> Iterator[IoThread]:
    io = IoThread(errors, name="test-io")
    io.start()
    yield io
    io.stop()
    assert not io.running


@pytest.fixture
def event() -> Iterator[EventFd]:
    with EventFd() as fd:
        yield fd


def counting(event: EventFd, calls: list[str], fired: threading.Event | None = None) -> Callable[[], None]:
    def callback() -> None:
        event.consume()
        calls.append(threading.current_thread().name)
        if fired is not None:
            fired.set()

    return callback


def test_callback_runs_in_the_loop_thread_when_the_fd_is_signalled(loop: IoThread, event: EventFd) -> None:
    calls: list[str] = []
    fired = threading.Event()
    loop.register(event, counting(event, calls, fired), "doorbell")
    event.signal()
    assert fired.wait(WAIT)
    assert calls == ["test-io"]
    fired.clear()
    threading.Thread(target=event.signal).start()  # from any thread
    assert fired.wait(WAIT)
    assert calls == ["test-io", "test-io"]


def test_after_unregister_returns_the_callback_never_runs(loop: IoThread, event: EventFd) -> None:
    calls: list[str] = []
    loop.register(event.fileno(), counting(event, calls), "doorbell")
    assert loop.unregister(event) is True
    event.signal()
    time.sleep(QUIET)
    assert calls == []
    assert loop.unregister(event) is False  # not registered any more
    assert event.consume() == 1  # the signal is still there: nobody read it


def test_a_callback_can_unregister_another_source_ready_in_the_same_wakeup(loop: IoThread) -> None:
    """Both fds are ready in one select(); whichever runs first unregisters the other,
    which must then not run, although select() had already returned it."""
    ran: list[str] = []
    with EventFd() as first, EventFd() as second:
        done = threading.Event()

        def make(own: EventFd, other: EventFd, name: str) -> Callable[[], None]:
            def callback() -> None:
                own.consume()
                ran.append(name)
                loop.unregister(other)
                loop.unregister(own)
                done.set()

            return callback

        assert loop.pause(WAIT)  # so that both are ready before the loop looks
        loop.register(first, make(first, second, "first"), "first")
        loop.register(second, make(second, first, "second"), "second")
        first.signal()
        second.signal()
        loop.resume()
        assert done.wait(WAIT)
        time.sleep(QUIET)
        assert len(ran) == 1


def test_register_from_a_callback_and_from_other_threads(loop: IoThread) -> None:
    calls: list[str] = []
    with EventFd() as first, EventFd() as second:
        registered, fired = threading.Event(), threading.Event()

        def on_first() -> None:
            first.consume()
            loop.register(second, counting(second, calls, fired), "second")  # inline: no deadlock
            registered.set()

        worker = threading.Thread(target=loop.register, args=(first, on_first, "first"))
        worker.start()
        worker.join(WAIT)
        first.signal()
        assert registered.wait(WAIT)
        second.signal()
        assert fired.wait(WAIT)
        assert calls == ["test-io"]


def test_registering_an_fd_twice_is_an_error_in_the_callers_thread(loop: IoThread, event: EventFd) -> None:
    loop.register(event, lambda: None, "doorbell")
    with pytest.raises(ValueError, match="already registered"):
        loop.register(event, lambda: None, "again")
    with pytest.raises(ValueError, match="not an open file descriptor"):
        loop.register(-1, lambda: None, "nothing")


def test_pause_waits_for_the_running_callback_and_holds_new_ones(loop: IoThread, event: EventFd) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> None:
        event.consume()
        calls.append("slow")
        entered.set()
        assert release.wait(WAIT)

    loop.register(event, slow, "slow")
    event.signal()
    assert entered.wait(WAIT)
    paused = threading.Event()
    pauser = threading.Thread(target=lambda: loop.pause(WAIT) and paused.set())
    pauser.start()
    assert not paused.wait(QUIET)  # a callback is still running: not parked yet
    assert loop.pause(0.01) is False  # the same, with a timeout
    release.set()
    assert paused.wait(WAIT)
    assert loop.parked
    event.signal()
    time.sleep(QUIET)
    assert calls == ["slow"]  # parked: the ready fd waits
    entered.clear()
    loop.resume()
    assert entered.wait(WAIT)  # served after resume: nothing lost
    assert calls == ["slow", "slow"]
    pauser.join(WAIT)


def test_registration_works_while_paused(loop: IoThread, event: EventFd) -> None:
    calls: list[str] = []
    fired = threading.Event()
    assert loop.pause(WAIT)
    loop.register(event, counting(event, calls, fired), "late")
    event.signal()
    assert not fired.wait(QUIET)
    loop.resume()
    assert fired.wait(WAIT)


def test_a_failing_callback_is_reported_and_the_loop_goes_on(
    loop: IoThread, errors: Errors, event: EventFd
) -> None:
    def broken() -> None:
        raise ZeroDivisionError("device bug")

    calls: list[str] = []
    fired = threading.Event()
    with EventFd() as healthy:
        loop.register(event, broken, "virtio-blk queue 0")
        loop.register(healthy, counting(healthy, calls, fired), "healthy")
        event.signal()
        assert errors.arrived.wait(WAIT)
        [(source, error)] = errors.reports
        assert source == "virtio-blk queue 0" and isinstance(error, ZeroDivisionError)
        assert loop.running
        assert loop.unregister(event) is False  # dropped: its fd would fire again at once
        healthy.signal()
        assert fired.wait(WAIT)
        assert len(errors.reports) == 1  # the unread eventfd did not fire it again


def test_an_error_report_that_fails_does_not_kill_the_loop(event: EventFd) -> None:
    def bad_report(source: str, error: BaseException) -> None:
        raise RuntimeError("report failed too")

    raised = threading.Event()

    def broken() -> None:
        raised.set()
        raise ZeroDivisionError("device bug")

    loop = IoThread(bad_report)
    loop.start()
    try:
        loop.register(event, broken, "broken")
        event.signal()
        assert raised.wait(WAIT)
        calls: list[str] = []
        fired = threading.Event()
        with EventFd() as healthy:
            loop.register(healthy, counting(healthy, calls, fired), "healthy")
            healthy.signal()
            assert fired.wait(WAIT)
        assert loop.running
    finally:
        loop.stop()


def test_pause_from_a_callback_is_refused_and_reported(
    loop: IoThread, errors: Errors, event: EventFd
) -> None:
    loop.register(event, loop.pause, "self-pausing")
    event.signal()
    assert errors.arrived.wait(WAIT)
    assert "cannot pause itself" in str(errors.reports[0][1])


def test_stop_ends_a_paused_loop_and_later_registration_is_refused(errors: Errors, event: EventFd) -> None:
    loop = IoThread(errors)
    loop.start()
    assert loop.pause(WAIT)
    loop.stop()
    assert not loop.running
    with pytest.raises(RuntimeError, match="has stopped"):
        loop.register(event, lambda: None, "late")
    assert loop.unregister(event) is False
    loop.stop()  # idempotent


def test_stop_from_a_callback_ends_the_loop(errors: Errors, event: EventFd) -> None:
    loop = IoThread(errors)
    loop.register(event, loop.stop, "stopper")  # before start: applied directly
    loop.start()
    event.signal()
    deadline = time.monotonic() + WAIT
    while loop.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not loop.running
    assert errors.reports == []
    loop.stop()


def test_a_loop_paused_before_start_starts_parked(errors: Errors, event: EventFd) -> None:
    loop = IoThread(errors)
    calls: list[str] = []
    fired = threading.Event()
    loop.register(event, counting(event, calls, fired), "doorbell")
    assert loop.pause(WAIT)
    loop.start()
    event.signal()
    assert not fired.wait(QUIET)
    loop.resume()
    assert fired.wait(WAIT)
    loop.stop()


def test_busy_time_and_callbacks_are_counted() -> None:
    """What benchmarks read to tell how busy device work kept the I/O thread."""
    errors: list[tuple[str, BaseException]] = []
    loop = IoThread(lambda source, error: errors.append((source, error)))
    loop.start()
    done = threading.Event()
    source = EventFd()

    def slow() -> None:
        source.consume()
        time.sleep(0.05)
        done.set()

    try:
        loop.register(source, slow, "slow")
        source.signal()
        assert done.wait(5)
    finally:
        loop.stop()
        source.close()
    assert loop.callbacks == 1 and loop.busy_seconds >= 0.05
    assert not errors


def test_a_source_with_a_fault_handler_stays_registered_and_the_vm_is_not_told(
    loop: IoThread, event: EventFd, errors: Errors
) -> None:
    """The device-fault rule: the handler gets the error, the fault is counted, the
    source keeps being served, nothing reaches `on_error` (which stops the VM)."""
    faults: list[BaseException] = []
    calls: list[str] = []
    fired = threading.Event()

    def callback() -> None:
        event.consume()
        calls.append("call")
        fired.set()
        if len(calls) == 1:
            raise ValueError("a device bug")

    loop.register(event, callback, "device", faults.append)
    event.signal()
    assert fired.wait(WAIT)
    fired.clear()
    event.signal()  # still served after the fault
    assert fired.wait(WAIT)
    assert calls == ["call", "call"]
    assert [type(error) for error in faults] == [ValueError]
    assert loop.faults == 1
    assert errors.reports == []


def test_a_fault_handler_that_raises_unregisters_its_source_and_reports(
    loop: IoThread, event: EventFd, errors: Errors
) -> None:
    def callback() -> None:
        event.consume()
        raise ValueError("a device bug")

    def handler(error: BaseException) -> None:
        raise RuntimeError("the handler is broken too")

    loop.register(event, callback, "device", handler)
    event.signal()
    assert errors.arrived.wait(WAIT)
    assert [(source, type(error)) for source, error in errors.reports] == [("device", RuntimeError)]
    assert loop.unregister(event) is False  # already dropped


def test_a_stuck_callback_makes_unregister_and_stop_give_up_in_bounded_time(errors: Errors) -> None:
    """Issue: a callback stuck for ever (a write into a pipe nobody reads) made
    teardown wait for ever in unregister."""
    io = IoThread(errors, name="stuck-io")
    io.start()
    release = threading.Event()
    with EventFd() as stuck, EventFd() as other:
        io.register(stuck, lambda: release.wait(), "stuck")
        io.register(other, other.consume, "other")
        stuck.signal()
        time.sleep(QUIET)  # the loop is inside the stuck callback now
        started = time.monotonic()
        assert io.unregister(other) is False  # gave up: still registered
        with EventFd() as late, pytest.raises(RuntimeError, match="stuck"):
            io.register(late, lambda: None, "late")
        assert io.stop() is False
        assert time.monotonic() - started < io_thread.SUBMIT_SECONDS * 2 + io_thread.STOP_SECONDS + 1
        release.set()
        assert io.stop() is True or not io.running
    assert errors.reports == []
