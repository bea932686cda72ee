"""Fixtures the machine tests share: a snapshot of the counting guest."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_code import write
from machine.counter_guest import COUNTER, wait_for

from pyvmm import Machine, MachineConfig
from pyvmm.machine.lifecycle import MachineState


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MachineConfig, int]:
    """A snapshot of the counter, and how many bytes it had printed when saved."""
    directory = tmp_path_factory.mktemp("snapshot")
    config = MachineConfig(
        kernel=write(directory, "counter.bin", COUNTER), kernel_format="flat", memory="64M"
    )
    machine = Machine(config)
    machine.start()
    wait_for(lambda: len(machine.console_output) >= 20)
    machine.pause()
    printed = len(machine.console_output)
    info = machine.snapshot(directory / "counter.snap")
    assert machine.state is MachineState.PAUSED  # a paused machine stays paused
    machine.stop()
    assert machine.wait(10) is not None
    assert info.allocated <= 2 << 20  # the guest touched little of its 64 MiB
    return directory / "counter.snap", config, printed
