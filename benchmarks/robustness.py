"""Hostile guests against the real `pyvmm run`: does the VMM survive them?

A few hundred tiny guests, generated in Python and deterministic from `--seed`, each
run as its own `python -m pyvmm run --kernel ... --timeout T` process on the real
/dev/kvm (a crash, a traceback or a hang of the VMM shows as such):

- `random-real`: random code in real mode at 0x7C00 (a flat 512-byte boot sector
  ending in 55 AA, booted with `--kernel-format flat`);
- `random-32`: random code in 32-bit protected mode (a Multiboot kernel, a.out kludge);
- `random-64`: random code in 64-bit long mode (a minimal ELF64);
- `port-sweep`: IN and OUT of 1, 2 and 4 bytes on a 2 Ki slice of the 64 Ki ports (the
  slices rotate: a few dozen guests cover them all), skipping the ports that end the VM
  on purpose (debug-exit, ACPI sleep/reset, PM1a, i8042 reset, 0xCF9);
- `mmio-sweep`: reads and writes of 1, 2, 4 and 8 (MMX) bytes across the end of RAM,
  the MMIO hole below 4 GiB (IOAPIC, HPET, LAPIC, the top page) and beyond RAM;
- `string-io`: `rep ins`/`rep outs` of bytes, words and dwords across the end of RAM
  and in the MMIO hole, on devices and unclaimed ports;
- `uart-flood`: COM1 (0x3F8) written until the timeout, by OUT or `rep outsb`.

The script prints the outcomes by exit status (the meanings of README.md, "Exit
status"), the count of runs whose stderr holds a Python traceback, the hangs (not
ended by --timeout plus a grace period; they are killed), and the VMM's peak RSS
(VmHWM from /proc, sampled while it runs): the largest of all runs, and that of the
UART floods against the largest of the other guests.

    python benchmarks/robustness.py [--count 300] [--seed 1] [--timeout 3] [--jobs 2] [--strict] [-v]

It exits 0 whatever the outcomes are (with --strict: 1 when a run printed a traceback,
hung or a flood's RSS was not bounded), and 1 with one line on stderr when it cannot
run (no /dev/kvm). tests/benchmarks/test_robustness.py runs its core with a few guests.

`--devices [CASE,...]` runs the device cases instead (robustness_devices.py: hostile
virtio drivers in the C guest tests/guests/hostile, and host-side faults; needs root),
all of them or those named, on the transports of `--transport` (default pci,mmio),
and prints one row per run with the targets each missed; with --strict it exits 1
when any target was missed. `--pyvmm DIR` runs the pyvmm of another checkout (to
compare revisions). tests/benchmarks/test_robustness_devices.py runs a few of them.

    python benchmarks/robustness.py --devices [--transport pci,mmio] [--timeout 6] [--jobs 2] [--strict]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: find pyvmm beside us
    sys.path.insert(0, str(ROOT))

from pyvmm.devices.debug_exit import DEBUG_EXIT_LENGTH, DEBUG_EXIT_PORT  # noqa: E402
from pyvmm.devices.i8042 import I8042_COMMAND_PORT  # noqa: E402
from pyvmm.devices.power import PM1A_CNT_PORT, SLEEP_PORTS_BASE, SLEEP_PORTS_LENGTH  # noqa: E402

PYVMM = [sys.executable, "-m", "pyvmm", "run"]
MEMORY = 64 << 20  # every guest's RAM: all of it below the MMIO hole
GRACE = 15.0  # seconds past --timeout before a run counts as a hang (start-up, a loaded host)
# A UART flood's VmHWM may grow by this much over the second half of its run, when its
# start-up is long over and it does nothing but print: a console kept whole grows with
# every byte (how much a run shows depends on the host's exit rate, see main's help).
FLOOD_GROWTH_LIMIT_KIB = 2 << 10
DONE = 0x2A  # what a sweep writes to the debug-exit port when it got through
DONE_STATUS = (DONE << 1) | 1
PORT_SLICE = 2048
COM1 = 0x3F8
MULTIBOOT_LOAD = 0x100000
ELF_LOAD = 0x400000
RAM_END = MEMORY
HOLE_TARGETS = [RAM_END - 64, 0xC000_0000, 0xFEC0_0000, 0xFED0_0000, 0xFEE0_0000, 0xFFFF_F000, 0x8000_0000]
# Ports whose writes end the VM on purpose (debug-exit, ACPI sleep and reset, PM1a
# control, the i8042 reset line): a sweep skips them to reach the other ports; the
# random-code guests still hit them.
STOP_PORTS = frozenset(
    {I8042_COMMAND_PORT, PM1A_CNT_PORT, PM1A_CNT_PORT + 1, 0xCF9}
    | set(range(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT + DEBUG_EXIT_LENGTH))
    | set(range(SLEEP_PORTS_BASE, SLEEP_PORTS_BASE + SLEEP_PORTS_LENGTH))
)

# README.md, "Exit status".
STATUS_MEANINGS = {0: "poweroff", 1: "error (one line)", 2: "bad usage", 64: "reboot", 70: "VM error",
                   71: "triple fault", 72: "stopped (timeout)"}  # fmt: skip


class RobustnessError(Exception):
    """Something kept the script from running; one line for the user."""


# --- the guests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guest:
    """One hostile guest: its image and the `pyvmm run` options it needs."""

    name: str
    kind: str
    image: bytes
    options: tuple[str, ...] = ()
    flood: bool = False  # runs until the timeout by design


def _debug_exit() -> bytes:
    """mov al, DONE; out 0xF4, al; then hlt forever (cli is in force at entry)."""
    return bytes([0xB0, DONE, 0xE6, DEBUG_EXIT_PORT, 0xF4, 0xEB, 0xFD])


def _loop(body: bytes, counter_setup: bytes) -> bytes:
    """`counter_setup` (sets ECX), then `body` repeated until ECX reaches 0 (dec ecx;
    jnz back: a short jump, so the body stays under 124 bytes)."""
    tail = b"\x49\x75" + bytes([(-(len(body) + 3)) & 0xFF])
    assert len(body) + 3 <= 128
    return counter_setup + body + tail


def boot_sector(code: bytes) -> bytes:
    """A 512-byte flat image with the boot signature 55 AA at offset 510."""
    sector = bytearray(code[:510].ljust(510, b"\xf4"))
    return bytes(sector) + b"\x55\xaa"


def multiboot_kernel(code: bytes) -> bytes:
    """A Multiboot v1 image with the a.out kludge (Multiboot 0.6.96 §3.1.3): loaded at
    1 MiB, entered in 32-bit protected mode right after the 32-byte header."""
    magic, flags = 0x1BADB002, 1 << 16
    end = MULTIBOOT_LOAD + 32 + len(code)
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFF_FFFF, MULTIBOOT_LOAD,
                         MULTIBOOT_LOAD, end, 0, MULTIBOOT_LOAD + 32)  # fmt: skip
    return header + code


def elf64_kernel(code: bytes) -> bytes:
    """A minimal ELF64 executable (one PT_LOAD at 4 MiB) entered in long mode (docs/boot.md)."""
    headers = 64 + 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, ELF_LOAD + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    size = headers + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, ELF_LOAD, ELF_LOAD, size, size, 0x1000)
    return ehdr + phdr + code


def _random_code(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def random_real(rng: random.Random) -> Guest:
    return Guest("", "random-real", boot_sector(_random_code(rng, 510)), ("--kernel-format", "flat"))


def random_32(rng: random.Random) -> Guest:
    return Guest("", "random-32", multiboot_kernel(_random_code(rng, 4096)))


def random_64(rng: random.Random) -> Guest:
    return Guest("", "random-64", elf64_kernel(_random_code(rng, 4096)))


def sweep_ports(index: int) -> list[int]:
    """Slice `index` of the 64 Ki ports, less those whose 4-byte access would touch a
    port that ends the VM."""
    first = (index * PORT_SLICE) % 0x10000
    return [port for port in range(first, first + PORT_SLICE) if not STOP_PORTS & set(range(port, port + 4))]


def port_sweep(rng: random.Random, index: int) -> Guest:
    """IN and OUT of every size on the ports of `sweep_ports(index)`, from a table."""
    ports = sweep_ports(index)
    value = rng.getrandbits(32)
    body = (
        b"\x0f\xb7\x16"  # movzx edx, word [esi]
        b"\xec\x66\xed\xed"  # in al, dx; in ax, dx; in eax, dx
        + b"\xb8" + struct.pack("<I", value)  # mov eax, value
        + b"\xee\x66\xef\xef"  # out dx, al; out dx, ax; out dx, eax
        b"\x83\xc6\x02"  # add esi, 2
    )  # fmt: skip
    code_size = 5 + 5 + len(body) + 3 + len(_debug_exit())
    table = MULTIBOOT_LOAD + 32 + code_size
    setup = b"\xbe" + struct.pack("<I", table) + b"\xb9" + struct.pack("<I", len(ports))  # mov esi; mov ecx
    code = _loop(body, setup) + _debug_exit()
    assert len(code) == code_size
    return Guest("", "port-sweep", multiboot_kernel(code + struct.pack(f"<{len(ports)}H", *ports)))


def mmio_sweep(rng: random.Random) -> Guest:
    """Reads and writes of 1, 2, 4 and 8 (MMX) bytes at `count` addresses from a start
    in the MMIO hole, at the end of RAM or beyond it, `stride` apart."""
    start = (rng.choice(HOLE_TARGETS) + rng.randrange(-256, 256)) & 0xFFFF_FFF0
    stride = rng.choice([1, 2, 4, 8, 64, 4096, 0x10000, 0x100000])
    count = rng.choice([256, 1024, 4096])
    value = rng.getrandbits(32)
    body = (
        b"\x8a\x06\x66\x8b\x06\x8b\x06"  # mov al, [esi]; mov ax, [esi]; mov eax, [esi]
        b"\x0f\x6f\x06"  # movq mm0, [esi]
        + b"\xb8" + struct.pack("<I", value)  # mov eax, value
        + b"\x88\x06\x66\x89\x06\x89\x06"  # mov [esi], al; mov [esi], ax; mov [esi], eax
        b"\x0f\x7f\x06"  # movq [esi], mm0
        b"\x81\xc6" + struct.pack("<I", stride)  # add esi, stride
    )  # fmt: skip
    # The guest's flat segments end at 4 GiB: an access past it is #GP, a triple fault.
    setup = b"\xdb\xe3" + b"\xbe" + struct.pack("<I", start) + b"\xb9" + struct.pack("<I", count)  # fninit
    return Guest("", "mmio-sweep", multiboot_kernel(_loop(body, setup) + _debug_exit()))


def string_io(rng: random.Random) -> Guest:
    """rep ins then rep outs of one size, from just below the end of RAM (or in the
    hole) over a count that crosses it, on a device or an unclaimed port."""
    size = rng.choice([1, 2, 4])
    base = rng.choice([RAM_END - rng.randrange(1, 8192), RAM_END, rng.choice(HOLE_TARGETS)])
    count = rng.choice([1, 2, 15, 4096, 16384, rng.randrange(1, 65536)])
    port = rng.choice([COM1, COM1 + 5, 0x80, 0xF0, 0x510, 0x511, 0x70, 0x71, 0x60, rng.randrange(0x10000)])
    prefix = b"\x66" if size == 2 else b""
    ins, outs = (b"\x6c", b"\x6e") if size == 1 else (b"\x6d", b"\x6f")
    direction = rng.choice([b"\xfc", b"\xfd"])  # cld / std
    code = (
        b"\xbf" + struct.pack("<I", base & 0xFFFF_FFFF)  # mov edi, base
        + b"\xb9" + struct.pack("<I", count)  # mov ecx, count
        + b"\x66\xba" + struct.pack("<H", port)  # mov dx, port
        + direction
        + b"\xf3" + prefix + ins  # rep ins
        + b"\xbe" + struct.pack("<I", base & 0xFFFF_FFFF)  # mov esi, base
        + b"\xb9" + struct.pack("<I", count)
        + b"\xf3" + prefix + outs  # rep outs
        + _debug_exit()
    )  # fmt: skip
    return Guest("", "string-io", multiboot_kernel(code))


def uart_flood(rng: random.Random) -> Guest:
    """COM1 written without end: one byte per OUT, or 4 KiB per `rep outsb`."""
    if rng.random() < 0.5:
        code = b"\x66\xba" + struct.pack("<H", COM1) + b"\xee\xfe\xc0\xeb\xfb"  # l: out dx, al; inc al; jmp l
    else:
        loop = (
            b"\xbe" + struct.pack("<I", MULTIBOOT_LOAD)  # l: mov esi, the image (any bytes)
            + b"\xb9\x00\x10\x00\x00"  # mov ecx, 4096
            + b"\xfc\xf3\x6e"  # cld; rep outsb
        )  # fmt: skip
        code = b"\x66\xba" + struct.pack("<H", COM1) + loop + b"\xeb" + bytes([(-(len(loop) + 2)) & 0xFF])
    return Guest("", "uart-flood", multiboot_kernel(code), flood=True)


KINDS: dict[str, Callable[[random.Random, int], Guest]] = {
    "random-real": lambda rng, _: random_real(rng),
    "random-32": lambda rng, _: random_32(rng),
    "random-64": lambda rng, _: random_64(rng),
    "port-sweep": port_sweep,
    "mmio-sweep": lambda rng, _: mmio_sweep(rng),
    "string-io": lambda rng, _: string_io(rng),
    "uart-flood": lambda rng, _: uart_flood(rng),
}


def generate(count: int, seed: int, kinds: Iterable[str] = KINDS) -> list[Guest]:
    """`count` guests, the kinds in turn, each from its own `random.Random(seed, n)`."""
    names = list(kinds)
    guests = []
    for number in range(count):
        kind = names[number % len(names)]
        guest = KINDS[kind](random.Random(f"{seed}/{number}"), number // len(names))
        guests.append(Guest(f"{kind}#{number}", kind, guest.image, guest.options, guest.flood))
    return guests


# --- running them ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one `pyvmm run` ended."""

    guest: Guest
    status: int | None  # None: killed as a hang
    seconds: float
    peak_rss_kib: int
    traceback: bool
    stderr: str
    console_bytes: int
    late_growth_kib: int  # VmHWM growth over the second half of the run
    late_console_bytes: int  # console bytes printed over the second half

    @property
    def hung(self) -> bool:
        return self.status is None

    def describe(self) -> str:
        last = self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""
        return f"{self.guest.name}: status {self.status}, {self.seconds:.1f} s, {last[:160]}"


def _vm_hwm_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_guest(guest: Guest, directory: Path, timeout: float, *, grace: float = GRACE) -> Outcome:
    """Run `guest` under `pyvmm run --timeout timeout`; kill it after timeout + grace."""
    path = directory / f"{guest.name.replace('#', '-')}.img"
    path.write_bytes(guest.image)
    command = [*PYVMM, "--kernel", str(path), "--memory", f"{MEMORY >> 20}M", "--timeout", str(timeout),
               *guest.options]  # fmt: skip
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=ROOT,
                                   start_new_session=True)  # fmt: skip
        peak = 0
        halfway: tuple[int, int] | None = None  # (VmHWM, console bytes) at half the timeout
        status: int | None = None
        while True:
            pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(wait_status)
                break
            if time.monotonic() - started > timeout + grace:
                os.killpg(process.pid, signal.SIGKILL)
                _, _, usage = os.wait4(process.pid, 0)
                break
            peak = max(peak, _vm_hwm_kib(process.pid) or 0)
            if halfway is None and peak and time.monotonic() - started > timeout / 2:
                halfway = (peak, os.fstat(stdout.fileno()).st_size)
            time.sleep(0.05)
        process.returncode = status if status is not None else -signal.SIGKILL  # reaped here, not by Popen
        seconds = time.monotonic() - started
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
        console = stdout.seek(0, os.SEEK_END)
    path.unlink()
    # The sampled VmHWM is the VMM's own; ru_maxrss only when it ended before a sample.
    growth, late_console = (peak - halfway[0], console - halfway[1]) if halfway else (0, 0)
    rss = peak or int(usage.ru_maxrss)
    return Outcome(guest, status, seconds, rss, "Traceback" in errors, errors, console, growth, late_console)


def run_all(guests: list[Guest], timeout: float, jobs: int, *,
            progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:  # fmt: skip
    """Every guest, `jobs` at a time; outcomes in the guests' order."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise RobustnessError("/dev/kvm is missing or not accessible")
    with tempfile.TemporaryDirectory(prefix="pyvmm-robustness-") as directory:

        def one(guest: Guest) -> Outcome:
            outcome = run_guest(guest, Path(directory), timeout)
            if progress is not None:
                progress(outcome)
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, guests))


# --- what they tell ------------------------------------------------------------------------------


def meaning(status: int | None) -> str:
    if status is None:
        return "hang (killed)"
    if status == DONE_STATUS:
        return f"debug-exit {DONE:#x} (sweep done)"
    if status in STATUS_MEANINGS:
        return STATUS_MEANINGS[status]
    if status < 0:
        return f"killed by signal {-status}"
    if status & 1:
        return f"debug-exit {status >> 1:#x}"
    return "unexpected"


@dataclass
class Summary:
    """The outcomes, counted: what the table shows and the test asserts on."""

    outcomes: list[Outcome]
    by_status: Counter[int | None] = field(init=False)
    kinds_by_status: dict[int | None, Counter[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_status = Counter(outcome.status for outcome in self.outcomes)
        self.kinds_by_status = {}
        for outcome in self.outcomes:
            self.kinds_by_status.setdefault(outcome.status, Counter())[outcome.guest.kind] += 1

    @property
    def tracebacks(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.traceback]

    @property
    def hangs(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.hung]

    @property
    def unexpected(self) -> list[Outcome]:
        """Statuses README.md does not define (a signal, an odd code)."""
        return [outcome for outcome in self.outcomes if meaning(outcome.status) in ("unexpected",)
                or (outcome.status is not None and outcome.status < 0)]  # fmt: skip

    def peak_rss_kib(self, *, flood: bool | None = None) -> int:
        values = [o.peak_rss_kib for o in self.outcomes if flood is None or o.guest.flood is flood]
        return max(values, default=0)

    @property
    def floods(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.guest.flood]

    @property
    def flood_growth_kib(self) -> int:
        """The largest VmHWM growth of a UART flood over the second half of its run."""
        return max((outcome.late_growth_kib for outcome in self.floods), default=0)

    @property
    def flood_rss_bounded(self) -> bool:
        return self.flood_growth_kib <= FLOOD_GROWTH_LIMIT_KIB

    def problems(self) -> list[str]:
        """One line per thing the VMM must never do."""
        lines = [f"traceback: {o.describe()}" for o in self.tracebacks]
        lines += [f"hang: {o.describe()}" for o in self.hangs]
        lines += [f"unexpected status: {o.describe()}" for o in self.unexpected]
        if not self.flood_rss_bounded:
            lines.append(f"UART flood RSS grew {self.flood_growth_kib} KiB in the second half of its run "
                         f"(limit {FLOOD_GROWTH_LIMIT_KIB} KiB)")  # fmt: skip
        return lines

    def table(self) -> str:
        rows = []
        for status in sorted(self.by_status, key=lambda s: (s is None, s if s is not None else 0)):
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds_by_status[status].items()))
            rows.append(
                [
                    str(status) if status is not None else "-",
                    meaning(status),
                    str(self.by_status[status]),
                    kinds,
                ]
            )
        lines = [_table(rows, ["status", "meaning", "runs", "by kind"]), ""]
        late = max((o.late_console_bytes for o in self.floods), default=0)
        console = max((o.console_bytes for o in self.floods), default=0)
        verdict = "ok" if self.flood_rss_bounded else "EXCEEDED"
        lines += [
            f"runs {len(self.outcomes)}, tracebacks {len(self.tracebacks)}, hangs {len(self.hangs)}",
            f"peak RSS of the VMM: {self.peak_rss_kib() >> 10} MiB (UART floods "
            f"{self.peak_rss_kib(flood=True) >> 10} MiB, "
            f"other guests {self.peak_rss_kib(flood=False) >> 10} MiB)",
            f"UART floods: up to {console / 1e3:.0f} kB of console each; VmHWM growth over the second half "
            f"{self.flood_growth_kib} KiB while printing up to {late / 1e3:.0f} kB "
            f"(limit {FLOOD_GROWTH_LIMIT_KIB} KiB: {verdict})",
        ]
        problems = self.problems()
        if problems:
            lines += ["", "problems:", *(f"  {line}" for line in problems)]
        return "\n".join(lines)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])  # fmt: skip


def check(count: int, seed: int, timeout: float, jobs: int, *, kinds: Iterable[str] = KINDS,
          progress: Callable[[Outcome], None] | None = None) -> Summary:  # fmt: skip
    """Generate, run and count: the script's core (and the test's)."""
    return Summary(run_all(generate(count, seed, kinds), timeout, jobs, progress=progress))


def main() -> int:
    parser = argparse.ArgumentParser(description="Run hostile guests against `pyvmm run`.")
    parser.add_argument("--count", type=int, default=280, help="guests to run (default 280: 40 of each kind)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the guests (default 1)")
    parser.add_argument(
        "--timeout", type=float, help="pyvmm's --timeout per guest (default 3 s; device cases 6 s)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="guests run at once (default 2)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a problem was found")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run as it ends")
    parser.add_argument("--devices", nargs="?", const="all", metavar="CASE,...",
                        help="run the device cases (all, or those named), not the random kinds")  # fmt: skip
    parser.add_argument("--transport", default="pci,mmio", help="device cases: transports (default pci,mmio)")
    parser.add_argument("--pyvmm", type=Path, default=ROOT, help="device cases: the checkout running pyvmm")
    args = parser.parse_args()
    if args.devices is not None:
        return _devices_main(args)
    args.timeout = 3.0 if args.timeout is None else args.timeout

    def progress(outcome: Outcome) -> None:
        if args.verbose:
            print(f"  {outcome.describe()}", file=sys.stderr, flush=True)

    try:
        summary = check(args.count, args.seed, args.timeout, args.jobs, progress=progress)
    except RobustnessError as exc:
        print(f"robustness.py: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.count} hostile guests, seed {args.seed}, --timeout {args.timeout:g} s, {args.jobs} at a time"
    )
    print(summary.table())
    return 1 if args.strict and summary.problems() else 0


def _devices_main(args: argparse.Namespace) -> int:
    """`--devices`: robustness_devices.py's cases, one table."""
    import robustness_devices as devices  # beside this script; it imports this module back

    timeout = 6.0 if args.timeout is None else args.timeout
    transports = [name for name in args.transport.split(",") if name]

    def progress(outcome: devices.DeviceOutcome) -> None:
        if args.verbose:
            print(f"  {outcome.case.name}/{outcome.transport}: status {outcome.status}, "
                  f"{outcome.seconds:.1f} s", file=sys.stderr, flush=True)  # fmt: skip

    try:
        summary = devices.check_devices(args.devices.split(","), timeout, args.jobs, transports=transports,
                                        pyvmm_root=args.pyvmm, progress=progress)  # fmt: skip
    except (RobustnessError, devices.RobustnessError) as exc:  # two classes when run as a script
        print(f"robustness.py: {exc}", file=sys.stderr)
        return 1
    print(f"device cases, --timeout {timeout:g} s, {args.jobs} at a time, pyvmm from {args.pyvmm}")
    print(summary.table())
    return 1 if args.strict and summary.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
