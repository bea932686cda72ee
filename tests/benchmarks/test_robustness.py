"""benchmarks/robustness.py's core with a few hostile guests of every kind, on the
real /dev/kvm through the real `pyvmm run`: no traceback, no hang, no status README.md
does not define, and a UART flood's memory stays bounded. (The same `check` and
`Summary` print the script's table.)"""

from __future__ import annotations

import pytest
from benchmark_scripts import load

COUNT = 14  # two of each kind: about 15 s on 2 cores
TIMEOUT = 3.0
robustness = load("robustness")


def test_guests_are_deterministic_and_the_port_sweeps_cover_every_port() -> None:
    first, again = robustness.generate(70, seed=5), robustness.generate(70, seed=5)
    assert [g.image for g in first] == [g.image for g in again]
    assert [g.image for g in first] != [g.image for g in robustness.generate(70, seed=6)]
    assert {g.kind for g in first} == set(robustness.KINDS)
    covered: set[int] = set()
    for index in range(0x10000 // robustness.PORT_SLICE):
        ports = robustness.sweep_ports(index)
        covered |= set(ports)
        image = robustness.port_sweep(robustness.random.Random(index), index).image
        assert image.endswith(b"".join(port.to_bytes(2, "little") for port in ports))  # the guest's table
    skipped = {port for port in range(0x10000) if robustness.STOP_PORTS & set(range(port, port + 4))}
    assert covered == set(range(0x10000)) - skipped
    assert len(skipped) < 32


def test_boot_sector_has_its_signature() -> None:
    guest = robustness.random_real(robustness.random.Random(1))
    assert len(guest.image) == 512 and guest.image[510:] == b"\x55\xaa"
    assert guest.options == ("--kernel-format", "flat")


def _outcome(guest: object, status: int | None, *, traceback: bool = False, growth: int = 0) -> object:
    stderr = "Traceback (most recent call last):\n" if traceback else ""
    return robustness.Outcome(guest, status, 1.0, 30 << 10, traceback, stderr, 0, growth, 1000)


def test_summary_reports_what_the_vmm_must_never_do() -> None:
    """The detection itself: a traceback, a hang, a signal and a growing flood each
    make a problem line, and a clean run makes none."""
    guest = robustness.random_32(robustness.random.Random(0))
    flood = robustness.uart_flood(robustness.random.Random(0))
    clean = robustness.Summary([_outcome(guest, 71), _outcome(flood, 72, growth=100)])
    assert clean.problems() == [] and clean.flood_rss_bounded
    grown = _outcome(flood, 72, growth=robustness.FLOOD_GROWTH_LIMIT_KIB + 1)
    bad = robustness.Summary(
        [_outcome(guest, 70, traceback=True), _outcome(guest, None), _outcome(guest, -11), grown]
    )
    problems = bad.problems()
    assert [line.split(":")[0] for line in problems[:3]] == ["traceback", "hang", "unexpected status"]
    assert problems[3].startswith("UART flood RSS grew") and len(problems) == 4
    assert "hang (killed)" in bad.table() and "killed by signal 11" in bad.table()


@pytest.mark.kvm
def test_hostile_guests_do_not_crash_hang_or_grow_pyvmm() -> None:
    summary = robustness.check(COUNT, seed=3, timeout=TIMEOUT, jobs=2)
    assert len(summary.outcomes) == COUNT
    assert summary.problems() == []
    assert not summary.tracebacks and not summary.hangs and summary.flood_rss_bounded
    # The sweeps got through (they end with their own debug-exit code) and the floods
    # ran for the whole timeout, printing all along.
    for outcome in summary.outcomes:
        if outcome.guest.kind == "port-sweep":
            assert outcome.status == robustness.DONE_STATUS, outcome.describe()
        if outcome.guest.flood:
            assert outcome.status == 72 and outcome.late_console_bytes > 0, outcome.describe()
    assert 0 < summary.peak_rss_kib() < 512 << 10
    assert "tracebacks 0, hangs 0" in summary.table()
