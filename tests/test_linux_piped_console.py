"""pyvmm's default Linux guest driven through pipes only, as a script or a CI job
drives it: `pyvmm run` as a user types it (its root disk, a writable copy made in a
data directory of the test's own, never the user's), stdin and stdout pipes.

What is written waits for the shell's prompt: bytes that arrive before user space
reads the console would wait in the UART's buffer, where the kernel may take them."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cli.test_console import read_until
from test_linux_guest import BOOT_SECONDS, PYVMM, ROOT, images

pytestmark = pytest.mark.kvm

PROMPT_SECONDS = 120  # from "pyvmm-init: ready" to the shell's prompt
ANSWER = re.compile(rb"\n42\r?\n")  # the shell's answer, not the echo of what was typed


def test_a_script_runs_a_command_in_the_default_guest_and_powers_it_off(tmp_path: Path) -> None:
    images("default")  # built (or found in the cache) before the clock starts
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    pipe = subprocess.PIPE
    with (tmp_path / "stderr").open("w+b") as errors:
        started = time.monotonic()
        command = [*PYVMM, "run", "--timeout", str(BOOT_SECONDS)]
        process = subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=errors, cwd=ROOT, env=env)
        assert process.stdin is not None and process.stdout is not None
        try:
            out = process.stdout.fileno()
            seen = read_until(out, b"pyvmm-init: ready", BOOT_SECONDS)
            assert b"pyvmm-init: ready" in seen, seen[-3000:]
            prompt = read_until(out, b"/ # ", PROMPT_SECONDS)  # (busybox then asks a terminal where
            seen += prompt  # its cursor is, ESC [6n: on a pipe no answer comes, and none is needed)
            assert b"/ # " in prompt, seen[-3000:]
            booted = time.monotonic()
            process.stdin.write(b"echo $((6*7))\n")
            process.stdin.flush()
            answer = read_until(out, b"/ # ", PROMPT_SECONDS)
            assert ANSWER.search(answer), answer
            process.stdin.write(b"poweroff\n")
            process.stdin.close()  # the end of the input: the guest runs on, to its power-off
            rest = read_until(out, b"\0", 300)  # (no NUL comes: read until pyvmm's stdout ends)
            status = process.wait(60)
            ended = time.monotonic()
        finally:
            process.kill()
            process.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    print(f"boot to the prompt {booted - started:.0f} s, command and power-off {ended - booted:.0f} s")
    assert b"pyvmm-init: poweroff" in rest, rest[-3000:]
    assert status == 0, stderr + (seen + answer + rest)[-3000:].decode(errors="replace")
    assert "Traceback" not in stderr
    disks = tmp_path / "data" / "pyvmm" / "disks"
    assert len(list(disks.iterdir())) == 1  # the run's own copy of the root disk, not the user's
