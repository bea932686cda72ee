"""Snapshots of a whole machine on the real /dev/kvm (machine/snapshot.py): a guest
counting on COM1, saved and restored, goes on with the next number; two clones of one
snapshot run side by side; a snapshot that does not fit the machine, or is not whole,
is refused with one `StateError` and nothing runs."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
from guest_code import write
from machine.counter_guest import COUNTER, sequence, wait_for

from pyvmm import Machine, MachineConfig
from pyvmm.device_config import DiskConfig
from pyvmm.errors import LifecycleError, StateError
from pyvmm.machine.lifecycle import MachineState

pytestmark = pytest.mark.kvm


def test_a_restored_guest_goes_on_with_the_next_number(saved: tuple[Path, MachineConfig, int]) -> None:
    path, config, printed = saved
    machine = Machine.restore(path, config)
    try:
        assert machine.state is MachineState.RUNNING
        wait_for(lambda: len(machine.console_output) >= 16)
        output = machine.console_output
        assert output == sequence(printed, len(output))
    finally:
        machine.stop()
        machine.wait(10)


def test_two_clones_of_one_snapshot_run_side_by_side(saved: tuple[Path, MachineConfig, int]) -> None:
    path, config, printed = saved
    clones = [Machine.restore(path, config) for _ in range(2)]
    try:
        for clone in clones:
            wait_for(lambda clone=clone: len(clone.console_output) >= 16)  # type: ignore[misc]
            output = clone.console_output
            assert output == sequence(printed, len(output))
    finally:
        for clone in clones:
            clone.stop()
            clone.wait(10)


def test_a_snapshot_of_a_running_machine_resumes_it(tmp_path: Path) -> None:
    machine = Machine(MachineConfig(kernel=write(tmp_path, "counter.bin", COUNTER), kernel_format="flat"))
    with pytest.raises(LifecycleError, match="only a started machine is saved"):
        machine.snapshot(tmp_path / "early.snap")
    machine.start()
    try:
        machine.snapshot(tmp_path / "running.snap")
        assert machine.state is MachineState.RUNNING
        before = len(machine.console_output)
        wait_for(lambda: len(machine.console_output) > before)
    finally:
        machine.stop()
        machine.wait(10)


def test_a_restore_paused_runs_nothing_until_resumed(saved: tuple[Path, MachineConfig, int]) -> None:
    path, config, printed = saved
    machine = Machine.restore(path, config, paused=True)
    try:
        time.sleep(0.2)
        assert machine.console_output == b""
        machine.resume()
        wait_for(lambda: len(machine.console_output) >= 8)
        assert machine.console_output.startswith(sequence(printed, 8))
    finally:
        machine.stop()
        machine.wait(10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory": "128M"}, "RAM size"),
        ({"cpus": 2}, "vCPU count"),
        ({"transport": "mmio"}, "virtio transport"),
        ({"rng": True}, "entropy device"),
    ],
)
def test_a_different_machine_is_refused(
    saved: tuple[Path, MachineConfig, int], change: dict[str, object], message: str
) -> None:
    path, config, _ = saved
    other = dataclasses.replace(config, **change)  # type: ignore[arg-type]
    with pytest.raises(StateError, match=message):
        Machine.restore(path, other)


def test_a_truncated_or_foreign_file_is_refused(
    saved: tuple[Path, MachineConfig, int], tmp_path: Path
) -> None:
    path, config, _ = saved
    data = path.read_bytes()
    for length in (0, 10, 4096, len(data) // 2):
        cut = tmp_path / f"cut{length}.snap"
        cut.write_bytes(data[:length])
        with pytest.raises(StateError):
            Machine.restore(cut, config)
    foreign = tmp_path / "foreign.snap"
    foreign.write_bytes(Path(config.kernel).read_bytes())
    with pytest.raises(StateError):
        Machine.restore(foreign, config)


def test_a_clone_takes_its_own_copy_of_the_disk(tmp_path: Path) -> None:
    """Devices are named by place and type, not by the host file behind them: a clone
    restores onto a copy of the disk at another path (and a disk of another size is
    refused)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    kernel = write(tmp_path, "counter.bin", COUNTER)
    config = MachineConfig(kernel=kernel, kernel_format="flat", memory="64M", disks=(DiskConfig(str(disk)),))
    machine = Machine(config)
    machine.start()
    wait_for(lambda: len(machine.console_output) >= 8)
    machine.snapshot(tmp_path / "vm.snap")
    machine.stop()
    machine.wait(10)
    copy = tmp_path / "clone.img"
    shutil.copyfile(disk, copy)
    clone = Machine.restore(tmp_path / "vm.snap", dataclasses.replace(config, disks=(DiskConfig(str(copy)),)))
    try:
        wait_for(lambda: len(clone.console_output) >= 8)
    finally:
        clone.stop()
        clone.wait(10)
    copy.write_bytes(bytes(2 << 20))
    with pytest.raises(StateError, match="disk 0 was 1048576 bytes"):
        Machine.restore(tmp_path / "vm.snap", dataclasses.replace(config, disks=(DiskConfig(str(copy)),)))
