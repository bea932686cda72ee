"""The machine's lifecycle on the real /dev/kvm (pyvmm/machine/lifecycle.py): start,
pause, resume, stop and wait with a guest that counts on COM1, checked transitions,
work on a paused vCPU's own thread, and console input held while paused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_code import write
from machine.counter_guest import COUNTER, counted, wait_for

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.errors import LifecycleError
from pyvmm.machine.lifecycle import MachineState, check_transition

pytestmark = pytest.mark.kvm


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Machine]:
    machine = Machine(MachineConfig(kernel=write(tmp_path, "counter.bin", COUNTER), kernel_format="flat"))
    events: list[str] = []
    machine.add_listener(lambda event, data: events.append(event))
    machine.events = events  # type: ignore[attr-defined]
    yield machine
    machine.stop()
    machine.wait(10)


def test_the_transitions_are_checked() -> None:
    check_transition(MachineState.CREATED, MachineState.RUNNING)
    check_transition(MachineState.RUNNING, MachineState.PAUSED)
    check_transition(MachineState.PAUSED, MachineState.RUNNING)
    check_transition(MachineState.RUNNING, MachineState.DEBUG)
    for state in MachineState:
        if state is not MachineState.STOPPED:
            check_transition(state, MachineState.STOPPED)
    with pytest.raises(LifecycleError, match="stopped: it cannot become running"):
        check_transition(MachineState.STOPPED, MachineState.RUNNING)
    with pytest.raises(LifecycleError):
        check_transition(MachineState.CREATED, MachineState.DEBUG)


def test_a_paused_guest_does_nothing_and_resumes_with_the_next_number(counter: Machine) -> None:
    assert counter.state is MachineState.CREATED
    counter.start()
    assert counter.state is MachineState.RUNNING
    wait_for(lambda: len(counter.console_output) >= 16)
    counter.pause()
    assert counter.state is MachineState.PAUSED
    assert all(runner.parked for runner in counter.runners) and counter.io.parked
    printed = counter.console_output
    time.sleep(0.5)
    assert counter.console_output == printed  # not one more byte while paused
    counter.resume()
    assert counter.state is MachineState.RUNNING
    wait_for(lambda: len(counter.console_output) >= len(printed) + 16)
    assert counted(counter.console_output)  # on with the next number: nothing lost, nothing twice
    counter.stop()
    result = counter.wait(10)
    assert result is not None and result.exit.kind is ExitKind.STOPPED
    assert counter.state is MachineState.STOPPED
    assert counter.events == ["STOP", "RESUME", "SHUTDOWN"]  # type: ignore[attr-defined]


def test_pause_and_resume_many_times(counter: Machine) -> None:
    counter.start()
    for _ in range(20):
        counter.pause()
        counter.resume()
    wait_for(lambda: len(counter.console_output) >= 32)
    assert counted(counter.console_output)


def test_requests_the_state_does_not_allow_are_refused(counter: Machine) -> None:
    with pytest.raises(LifecycleError, match="created: only a running machine pauses"):
        counter.pause()
    with pytest.raises(LifecycleError):
        counter.resume()
    counter.start()
    with pytest.raises(LifecycleError, match="running: only a paused machine resumes"):
        counter.resume()
    with pytest.raises(LifecycleError):
        counter.start()
    counter.stop()
    assert counter.wait(10) is not None
    with pytest.raises(LifecycleError, match="stopped"):
        counter.pause()


def test_vcpu_state_is_read_on_its_own_thread_only_while_paused(counter: Machine) -> None:
    counter.start()
    wait_for(lambda: len(counter.console_output) >= 8)
    # A running machine's vCPU parks for the call alone, and runs on.
    assert counter.on_vcpu(0, lambda vcpu: vcpu.get_regs()).rbx > 0
    assert counter.state is MachineState.RUNNING and not counter.runners[0].parked
    with pytest.raises(LifecycleError, match="running: pause it first"):
        counter.runners[0].call(lambda vcpu: None)  # the runner itself wants it parked
    printed = len(counter.console_output)
    wait_for(lambda: len(counter.console_output) > printed)
    counter.pause()
    threads: list[str] = []

    def read(vcpu):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return vcpu.get_regs(), vcpu.get_sregs()

    regs, sregs = counter.on_vcpu(0, read)
    assert threads == ["vcpu0"]
    # BX counts the bytes printed. The last OUT's exit completed before the vCPU
    # parked: its byte is out, and RIP is past it (at most on the INC that follows).
    assert counter.memory is not None
    printed = len(counter.console_output) & 0xFFFF
    next_instruction = counter.memory.read(sregs.cs.base + regs.rip, 1)
    assert regs.rbx & 0xFFFF == printed or (regs.rbx + 1 == printed and next_instruction == b"\x43")
    with pytest.raises(LifecycleError, match="no vCPU 3"):
        counter.on_vcpu(3, lambda vcpu: None)
    with pytest.raises(ZeroDivisionError):
        counter.on_vcpu(0, lambda vcpu: 1 // 0)  # raised in the caller, the vCPU stays parked
    counter.resume()
    wait_for(lambda: len(counter.console_output) >= 16)


def test_a_paused_machine_stops_promptly(counter: Machine) -> None:
    counter.start()
    counter.pause()
    started = time.monotonic()
    counter.stop()
    result = counter.wait(10)
    assert result is not None and time.monotonic() - started < 2
    assert all(not runner.thread.is_alive() for runner in counter.runners)


def test_start_paused_runs_nothing_until_resumed(counter: Machine) -> None:
    counter.start(paused=True)
    assert counter.state is MachineState.PAUSED
    time.sleep(0.3)
    assert counter.console_output == b""
    regs = counter.on_vcpu(0, lambda vcpu: vcpu.get_regs())
    assert regs.rbx == 0  # not one instruction yet
    counter.resume()
    wait_for(lambda: len(counter.console_output) >= 8)


def test_console_input_waits_while_paused(tmp_path: Path) -> None:
    """COM1's receive buffer does not change while paused; what was typed arrives on resume."""
    machine = Machine(MachineConfig(kernel=write(tmp_path, "counter.bin", COUNTER), kernel_format="flat"))
    machine.start()
    machine.pause()
    assert machine.serial is not None
    before = machine.serial.save()
    room = machine.input_room()
    machine.send_input(b"abc")
    assert machine.serial.save() == before  # held, not in the UART
    assert machine.input_room() == room - 3
    machine.resume()
    assert machine.serial.save() != before  # the guest never reads: the FIFO holds it
    machine.stop()
    machine.wait(10)
