"""`pyvmm run --incoming file:PATH`: a snapshot taken through the Python API resumes
in a new process where it stopped; one that does not fit is one error line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cli.test_cli import assert_one_line_error, pyvmm
from guest_code import write
from machine.counter_guest import COUNTER, counted

from pyvmm import Machine, MachineConfig

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """The counting guest's kernel, a snapshot of it, and the bytes printed by then."""
    directory = tmp_path_factory.mktemp("incoming")
    kernel = write(directory, "counter.bin", COUNTER)
    machine = Machine(MachineConfig(kernel=kernel, kernel_format="flat", memory="64M"))
    machine.start()
    while len(machine.console_output) < 24:
        time.sleep(0.01)
    machine.pause()
    printed = len(machine.console_output)
    machine.snapshot(directory / "counter.snap")
    machine.stop()
    machine.wait(10)
    return kernel, directory / "counter.snap", printed


def test_a_new_process_resumes_the_snapshot(saved: tuple[Path, Path, int]) -> None:
    kernel, snapshot, printed = saved
    result = pyvmm(
        "run", "--kernel", str(kernel), "--kernel-format", "flat", "--memory", "64M",
        "--incoming", f"file:{snapshot}", "--timeout", "1",
    )  # fmt: skip
    output = result.stdout.encode()
    assert len(output) >= 8, result.stderr
    assert counted(output, printed)
    assert result.returncode == 72  # stopped by the timeout


def test_a_snapshot_of_another_machine_is_one_error_line(saved: tuple[Path, Path, int]) -> None:
    kernel, snapshot, _ = saved
    result = pyvmm(
        "run", "--kernel", str(kernel), "--kernel-format", "flat", "--memory", "128M",
        "--incoming", f"file:{snapshot}", "--timeout", "5",
    )  # fmt: skip
    assert_one_line_error(result, "pyvmm: error:", "RAM size")


def test_a_missing_snapshot_and_a_bad_uri_are_one_error_line(
    saved: tuple[Path, Path, int], tmp_path: Path
) -> None:
    kernel, _, _ = saved
    common = ("run", "--kernel", str(kernel), "--kernel-format", "flat", "--memory", "64M")
    assert_one_line_error(pyvmm(*common, "--incoming", f"file:{tmp_path / 'none'}"), "pyvmm: error:")
    bad = pyvmm(*common, "--incoming", "tcp:localhost:4444")
    assert bad.returncode == 2 and "expected file:PATH" in bad.stderr
