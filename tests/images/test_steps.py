"""Running a build's commands: output to the log, progress to the user, one error."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from pyvmm.images.errors import ImageBuildError
from pyvmm.images.progress import Progress, format_elapsed
from pyvmm.images.steps import Steps

PY = sys.executable


def make_steps(tmp_path: Path, live: bool = False, heartbeat: float = 20.0) -> tuple[Steps, io.StringIO]:
    shown = io.StringIO()
    return Steps(Progress(shown, live=live, heartbeat=heartbeat), tmp_path / "logs" / "x.log"), shown


def test_output_goes_to_the_log_and_matching_lines_are_counted(tmp_path: Path) -> None:
    steps, shown = make_steps(tmp_path)
    script = "for i in range(5): print(f'  CC      obj{i}.o'); print('  LD      vmlinux')"
    with steps.phase("compile"):
        count = steps.run([PY, "-c", script], count=r"^\s+CC\s", unit="objects")
    steps.close()
    assert count == 5
    log = steps.log.read_text()
    assert "==> compile" in log and "CC      obj4.o" in log and "LD      vmlinux" in log
    assert "obj4" not in shown.getvalue(), "command output stays in the log"
    assert "compile: started" in shown.getvalue() and "compile: done in" in shown.getvalue()


def test_a_failing_command_names_the_phase_and_the_log(tmp_path: Path) -> None:
    steps, shown = make_steps(tmp_path)
    with pytest.raises(ImageBuildError) as caught, steps.phase("configure"):
        steps.run([PY, "-c", "import sys; print('boom'); sys.exit(3)"])
    steps.close()
    message = str(caught.value)
    assert caught.value.phase == "configure"
    assert "configure failed" in message and "status 3" in message and str(steps.log) in message
    assert "\n" not in message
    assert "boom" in steps.log.read_text()
    assert "done in" not in shown.getvalue()


def test_a_missing_program_is_a_build_error(tmp_path: Path) -> None:
    steps, _ = make_steps(tmp_path)
    with pytest.raises(ImageBuildError, match="cannot run"), steps.phase("unpack"):
        steps.run(["/nonexistent/tar"])
    steps.close()


def test_plain_output_has_a_heartbeat_during_a_silent_command(tmp_path: Path) -> None:
    steps, shown = make_steps(tmp_path, heartbeat=0.5)
    with steps.phase("unpack"):
        steps.run([PY, "-c", "import time; time.sleep(2.2)"])
    steps.close()
    heartbeats = [line for line in shown.getvalue().splitlines() if line.startswith("pyvmm images: unpack: ")]
    assert len(heartbeats) >= 4  # started, at least two beats, done


def test_a_terminal_gets_one_status_line_redrawn_in_place(tmp_path: Path) -> None:
    steps, shown = make_steps(tmp_path, live=True)
    with steps.phase("compile"):
        script = "import time\nfor i in range(6): print('  CC x.o', flush=True); time.sleep(0.1)"
        steps.run([PY, "-c", script], count=r"CC", unit="objects")
    steps.close()
    text = shown.getvalue()
    assert "\r\x1b[K" in text and "objects" in text
    assert text.endswith("compile: done in " + text.rsplit("compile: done in ", 1)[1])
    assert text.count("\n") == 1, "only the finished phase stays on screen"


def test_elapsed_times_read_well() -> None:
    assert format_elapsed(4.25) == "4.2s"
    assert format_elapsed(431) == "7m11s"
