"""The PC real-time clock and CMOS RAM (Motorola MC146818A datasheet), at I/O 0x70-0x71.

The register map and the BCD / 12-hour codecs are in `pyvmm.devices.rtc_registers`;
this module is the device: the clock, the update cycle and the interrupts.

Ports. Bit 7 of an index write (port 0x70) is the PC's NMI mask; it is kept in
`nmi_masked` but gates nothing (KVM delivers NMIs on its own) and never takes part in
addressing. Reads of port 0x70 return 0xFF: on the PC AT it is write only.

Time. The clock registers are computed on each read from the host clock (UTC) plus an
offset. Setting the clock changes only that offset, never the host's clock. Time is
kept in integer nanoseconds so that setting the clock keeps the sub-second phase exactly.
The clock stops while register B's SET bit is set or register A's divider is held in
reset, as the hardware's update cycle does; the divider keeps its phase while SET is
set, and leaving divider reset starts the first second half a second later (datasheet,
"Divider Control"). Values the guest writes are decoded in the current data mode, and a
date that does not exist is clamped to the nearest one that does. Changing the data mode
re-encodes the clock registers, which the datasheet leaves undefined. The day of the
week counts on from what the guest last wrote, as the chip's does. Daylight saving (DSE)
and the square-wave output are not modelled.

Update-in-progress. The update is instantaneous here, so register A's UIP bit is set
for the 244 µs (8 cycles of the 32.768 kHz time base) before each second boundary: a
guest that sees UIP clear has at least 244 µs to read the registers, as on the chip.

Interrupts. Register C's flags are worked out lazily: every register access first
replays the events (periodic ticks, updates, alarm matches) between the previous access
and now. IRQ 8 is a level that follows IRQF, so reading C (which clears the flags) lowers
it and the next event is a new edge. For interrupts to arrive while the guest is not
touching the device, one daemon thread per device is started the first time the guest
enables PIE, AIE or UIE. It sleeps on a condition of the device lock until the next
event that can raise IRQF, or with no timeout while IRQF is already up (reading C or any
register write wakes it to look again). A timed sleep lasts 1 ms to 1 s, so a fast
periodic rate gives one interrupt per guest acknowledgement, about a thousand a second
at most, and a host clock step is noticed within a second. The sleeps are in host time,
so an injected clock should advance at real speed for the thread to be punctual; the
lazy replay is exact whatever the clock does. `close()` ends the thread; the machine
should call it before it closes the interrupt line's VM.

Divider. DV = 11x holds the divider in reset; every other DV value counts as the
32.768 kHz time base (010, what every PC uses).

Locking: one lock (and its condition) guards all state; the interrupt line is driven
with it held and must not call back into the device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pyvmm.devices.rtc_registers import (
    ALARM_DONT_CARE,
    BASE_MEMORY_KIB,
    CHECKSUM_END,
    CHECKSUM_FIRST,
    CLOCK_REGISTERS,
    DIVIDER_RESET,
    GIB,
    INDEX_MASK,
    INITIAL_A,
    INITIAL_B,
    INTERRUPT_ENABLES,
    KIB,
    MIB,
    NMI_DISABLE,
    REGISTER_D,
    ClockFields,
    Port,
    Register,
    RegisterA,
    RegisterB,
    RegisterC,
    decode_field,
    decode_hours,
    encode_field,
    encode_hours,
)
from pyvmm.devices.rtc_state import CMOS_SIZE, NS, RtcState, check_rtc_state
from pyvmm.errors import ConfigError
from pyvmm.outcome import InterruptLine

logger = logging.getLogger(__name__)

RTC_PORT = 0x70
RTC_PORT_LENGTH = 2  # index, data
RTC_IRQ = 8

UIP_NS = 8 * NS // 32768  # 244.140625 µs, rounded down to the nanosecond
MIN_TIMER_WAIT = 0.001
MAX_TIMER_WAIT = 1.0


def _to_ns(seconds: float) -> int:
    whole = int(seconds // 1)
    return whole * NS + round((seconds - whole) * NS)


class CmosRtc:
    """The MC146818A RTC with 128 bytes of CMOS RAM, on one interrupt line."""

    def __init__(self, irq: InterruptLine, clock: Callable[[], float] = time.time) -> None:
        self._irq = irq
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._irq_level = False
        self._timer: threading.Thread | None = None
        self._closed = False
        self._paused = False  # the machine is paused: the timer raises nothing

        self._ram = bytearray(CMOS_SIZE)
        self._ram[Register.A] = INITIAL_A
        self._ram[Register.B] = INITIAL_B
        self._index = 0
        self._nmi_masked = False
        self._flags = 0  # register C's PF / AF / UF
        self._offset_ns = 0  # guest time - host time, while the clock runs
        self._frozen: int | None = None  # guest time in whole seconds, while stopped
        self._phase_ns = 0  # the divider's second boundaries fall on host times ≡ this mod 1 s
        self._weekday_adjust = 0  # guest-written day of week - computed one, mod 7
        self._last_ns = self._now_ns()  # when events were last replayed

    @property
    def nmi_masked(self) -> bool:
        """Bit 7 of the last index write: the guest wants NMIs masked."""
        return self._nmi_masked

    def guest_time(self) -> float:
        """The guest's clock as seconds since 1970 (UTC)."""
        with self._lock:
            return self._guest_ns(self._now_ns()) / NS

    # --- host side -------------------------------------------------------------------

    def set_memory_size(self, bytes_below_4g: int, bytes_above_4g: int) -> None:
        """Fill the CMOS memory-size bytes a BIOS (SeaBIOS among them) reads."""
        if not 0 <= bytes_below_4g <= 4 * GIB or bytes_above_4g < 0:
            raise ConfigError(f"CMOS cannot describe {bytes_below_4g:#x} + {bytes_above_4g:#x} bytes")
        extended_kib = min(max(bytes_below_4g - MIB, 0) // KIB, 0xFFFF)
        above_16m = min(max(bytes_below_4g - 16 * MIB, 0) // (64 * KIB), 0xFFFF)
        above_4g = min(bytes_above_4g // (64 * KIB), 0xFF_FFFF)
        with self._lock:
            self._put(Register.BASE_MEMORY_LOW, BASE_MEMORY_KIB, 2)
            self._put(Register.EXTENDED_MEMORY_LOW, extended_kib, 2)
            self._put(Register.EXTENDED_MEMORY2_LOW, extended_kib, 2)
            self._put(Register.MEMORY_ABOVE_16M_LOW, above_16m, 2)
            self._put(Register.MEMORY_ABOVE_4G_LOW, above_4g, 3)
            checksum = sum(self._ram[CHECKSUM_FIRST:CHECKSUM_END])
            self._ram[Register.CHECKSUM_HIGH] = checksum >> 8 & 0xFF
            self._ram[Register.CHECKSUM_LOW] = checksum & 0xFF

    def _put(self, index: int, value: int, size: int) -> None:
        self._ram[index : index + size] = value.to_bytes(size, "little")

    def pause(self, timeout: float) -> bool:
        """The machine pauses: the interrupt timer raises nothing until `resume()`.
        Immediate: the timer works only with the lock held, so it is idle once this
        holds it."""
        with self._lock:
            self._paused = True
        return True

    def resume(self) -> None:
        """The timer catches up with what became due meanwhile (one interrupt, as for
        any late tick) and goes on."""
        with self._lock:
            self._paused = False
            self._wake.notify_all()

    def close(self) -> None:
        """Stop the interrupt timer thread, if one runs. Register accesses still work."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join()

    # --- reset and saved state --------------------------------------------------------

    def reset(self) -> None:
        """What the chip's RESET pin does (datasheet, "RESET"): PIE, AIE, UIE and SQWE
        cleared, register C's flags cleared, the line low; plus the PC's index latch and
        NMI mask back to their power-on values. The clock, the alarm and CMOS RAM are
        battery-backed and kept: a PC's reset does not touch them, and the RAM holds the
        memory sizes the host wrote (`set_memory_size`)."""
        with self._lock:
            self._advance(self._now_ns())
            self._ram[Register.B] &= ~int(INTERRUPT_ENABLES | RegisterB.SQWE)
            self._flags = 0
            self._index = 0
            self._nmi_masked = False
            self._update_irq()
            self._wake.notify_all()

    def save(self) -> RtcState:
        with self._lock:
            now = self._now_ns()
            self._advance(now)  # the flags of every event up to now
            self._update_irq()
            return RtcState(
                cmos=bytes(self._ram),
                index=self._index,
                nmi_masked=self._nmi_masked,
                flags=int(self._flags),
                offset_ns=self._offset_ns,
                stopped_at=self._frozen,
                phase_ns=self._phase_ns,
                weekday_adjust=self._weekday_adjust,
            )

    def restore(self, state: object) -> None:
        """Take `state` (checked first: a bad one raises `StateError` and changes
        nothing); the clock goes on from the saved offset, events are replayed from
        now, and the line goes to the level the flags and register B give."""
        checked = check_rtc_state(state)
        with self._lock:
            self._ram[:] = checked.cmos
            self._index = checked.index
            self._nmi_masked = checked.nmi_masked
            self._flags = checked.flags
            self._offset_ns = checked.offset_ns
            self._frozen = checked.stopped_at
            self._phase_ns = checked.phase_ns
            self._weekday_adjust = checked.weekday_adjust
            self._last_ns = self._now_ns()
            self._update_irq()
            self._start_timer()
            self._wake.notify_all()  # the timer's next event may have moved

    # --- guest side ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = 0
            for byte in range(size):
                value |= self._read_port(offset + byte) << (8 * byte)
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for byte in range(size):
                self._write_port(offset + byte, (value >> (8 * byte)) & 0xFF)

    def _read_port(self, port: int) -> int:
        if port != Port.DATA:
            return 0xFF
        now = self._now_ns()
        self._advance(now)
        value = self._read_register(self._index, now)
        self._update_irq()
        return value

    def _write_port(self, port: int, value: int) -> None:
        if port == Port.INDEX:
            self._index = value & INDEX_MASK
            self._nmi_masked = bool(value & NMI_DISABLE)
        elif port == Port.DATA:
            now = self._now_ns()
            self._advance(now)
            self._write_register(self._index, value, now)
            self._update_irq()
            self._start_timer()
            self._wake.notify_all()  # the next event may have moved

    def _read_register(self, index: int, now: int) -> int:
        if index in CLOCK_REGISTERS:
            return self._read_clock(index, now)
        if index == Register.A:
            uip = self._running() and self._guest_ns(now) % NS >= NS - UIP_NS
            return self._ram[Register.A] | (RegisterA.UIP if uip else 0)
        if index == Register.C:
            value = self._register_c()
            self._flags = 0
            self._wake.notify_all()  # IRQF cleared: the timer has a next event again
            return value
        if index == Register.D:
            return REGISTER_D
        return self._ram[index]

    def _write_register(self, index: int, value: int, now: int) -> None:
        if index in CLOCK_REGISTERS:
            self._write_clock(index, value, now)
        elif index in (Register.A, Register.B):
            was_running = self._running()
            leaving_reset = index == Register.A and self._divider_reset() and not self._divider_reset(value)
            if index == Register.B and value & RegisterB.SET:
                value &= ~int(RegisterB.UIE)  # setting SET clears UIE (datasheet, register B)
            self._ram[index] = value & ~int(RegisterA.UIP) if index == Register.A else value
            if leaving_reset:
                self._phase_ns = (now + NS // 2) % NS  # the first update comes 500 ms later
            self._restart_or_stop(was_running, now)
        elif index not in (Register.C, Register.D):  # C and D are read only
            self._ram[index] = value

    # --- the clock -------------------------------------------------------------------

    def _now_ns(self) -> int:
        return _to_ns(self._clock())

    def _divider_reset(self, value: int | None = None) -> bool:
        register = self._ram[Register.A] if value is None else value
        return register & DIVIDER_RESET == DIVIDER_RESET

    def _running(self) -> bool:
        return not self._ram[Register.B] & RegisterB.SET and not self._divider_reset()

    def _guest_ns(self, now: int) -> int:
        return self._frozen * NS if self._frozen is not None else now + self._offset_ns

    def _restart_or_stop(self, was_running: bool, now: int) -> None:
        running = self._running()
        if was_running and not running:
            self._frozen = (now + self._offset_ns) // NS
        elif running and not was_running:
            assert self._frozen is not None
            # The divider ran on while the clock stood: resume on its phase.
            self._offset_ns = self._frozen * NS + (now - self._phase_ns) % NS - now
            self._frozen = None

    def _mode(self) -> tuple[bool, bool]:
        b = self._ram[Register.B]
        return bool(b & RegisterB.BINARY), bool(b & RegisterB.HOURS_24)

    def _read_clock(self, index: int, now: int) -> int:
        fields = ClockFields(self._guest_ns(now) // NS)
        binary, hours_24 = self._mode()
        if index == Register.HOURS:
            return encode_hours(fields.hour, binary, hours_24)
        value = {
            Register.SECONDS: fields.second,
            Register.MINUTES: fields.minute,
            Register.DAY_OF_WEEK: (fields.weekday - 1 + self._weekday_adjust) % 7 + 1,
            Register.DAY_OF_MONTH: fields.day,
            Register.MONTH: fields.month,
            Register.YEAR: fields.year % 100,
            Register.CENTURY: fields.year // 100,
        }[Register(index)]
        return encode_field(value, binary)

    def _write_clock(self, index: int, raw: int, now: int) -> None:
        guest = self._guest_ns(now)
        fields = ClockFields(guest // NS)
        binary, hours_24 = self._mode()
        value = decode_field(raw, binary)
        if index == Register.SECONDS:
            fields.second = value
        elif index == Register.MINUTES:
            fields.minute = value
        elif index == Register.HOURS:
            fields.hour = decode_hours(raw, binary, hours_24)
        elif index == Register.DAY_OF_WEEK:
            self._weekday_adjust = (value - fields.weekday) % 7
            return
        elif index == Register.DAY_OF_MONTH:
            fields.day = value
        elif index == Register.MONTH:
            fields.month = value
        elif index == Register.YEAR:
            fields.year = fields.year // 100 * 100 + value
        else:
            fields.year = value * 100 + fields.year % 100
        weekday = (fields.weekday - 1 + self._weekday_adjust) % 7
        seconds = fields.seconds()
        self._weekday_adjust = (weekday - (ClockFields(seconds).weekday - 1)) % 7
        if self._frozen is not None:
            self._frozen = seconds
        else:
            self._offset_ns = seconds * NS + guest % NS - now
        logger.debug(
            "guest set RTC register %#x: clock now %d s from the host's", index, self._offset_ns // NS
        )

    # --- interrupts ------------------------------------------------------------------

    def _periodic_ticks(self, host_ns: int) -> int | None:
        """Periodic ticks of the divider up to `host_ns`, or None when there are none."""
        rate = self._ram[Register.A] & RegisterA.RATE_MASK
        if not rate or self._divider_reset():
            return None
        return (host_ns - self._phase_ns) * 65536 // (NS << self._rate_shift(rate))

    @staticmethod
    def _rate_shift(rate: int) -> int:
        # With the 32.768 kHz base, rates 1 and 2 repeat rates 8 and 9 (datasheet, Table 5).
        return rate + 7 if rate < 3 else rate

    def _alarm_targets(self) -> tuple[int | None, int | None, int | None] | None:
        """The (hour, minute, second) the alarm waits for, None for "any"; None if never."""
        binary, hours_24 = self._mode()
        targets: list[int | None] = []
        for index, values in (
            (Register.HOURS_ALARM, {encode_hours(h, binary, hours_24): h for h in range(24)}),
            (Register.MINUTES_ALARM, {encode_field(m, binary): m for m in range(60)}),
            (Register.SECONDS_ALARM, {encode_field(s, binary): s for s in range(60)}),
        ):
            alarm = self._ram[index]
            if alarm & ALARM_DONT_CARE == ALARM_DONT_CARE:
                targets.append(None)
            elif alarm in values:
                targets.append(values[alarm])
            else:
                return None  # a byte no clock value equals: the alarm never goes off
        return targets[0], targets[1], targets[2]

    def _next_alarm(self, after: int) -> int | None:
        """The first second after `after` (guest seconds) at which the alarm matches."""
        targets = self._alarm_targets()
        if targets is None:
            return None
        hour, minute, second = targets
        seconds = after + 1
        for _ in range(8):  # each step fixes one field, coarsest first
            fields = ClockFields(seconds)
            into_hour = fields.minute * 60 + fields.second
            if hour is not None and fields.hour != hour:
                seconds += (hour - fields.hour) % 24 * 3600 - into_hour
            elif minute is not None and fields.minute != minute:
                seconds += (minute - fields.minute) % 60 * 60 - fields.second
            elif second is not None and fields.second != second:
                seconds += (second - fields.second) % 60
            else:
                return seconds
        return None

    def _advance(self, now: int) -> None:
        """Set the flags of the events since the last replay. State was constant since."""
        last, self._last_ns = self._last_ns, now
        if now <= last:
            return  # no time passed, or the host clock stepped back
        first_tick, last_tick = self._periodic_ticks(last), self._periodic_ticks(now)
        if first_tick is not None and last_tick is not None and last_tick > first_tick:
            self._flags |= RegisterC.PF
        if not self._running():
            return
        start, end = (last + self._offset_ns) // NS, (now + self._offset_ns) // NS
        if end > start:
            self._flags |= RegisterC.UF
            alarm = self._next_alarm(start)
            if alarm is not None and alarm <= end:
                self._flags |= RegisterC.AF

    def _register_c(self) -> int:
        enabled = self._ram[Register.B] & INTERRUPT_ENABLES  # PIE/AIE/UIE sit on PF/AF/UF
        return self._flags | (RegisterC.IRQF if self._flags & enabled else 0)

    def _update_irq(self) -> None:
        level = bool(self._register_c() & RegisterC.IRQF)
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    def _next_event(self, now: int) -> int | None:
        """Host time of the next event that would raise IRQF, if IRQF is not already up."""
        if self._irq_level:
            return None
        b = self._ram[Register.B]
        candidates = []
        tick = self._periodic_ticks(now)
        if b & RegisterB.PIE and tick is not None:
            shift = self._rate_shift(self._ram[Register.A] & RegisterA.RATE_MASK)
            candidates.append(self._phase_ns + -(-(tick + 1) * (NS << shift) // 65536))
        if self._running() and b & (RegisterB.UIE | RegisterB.AIE):
            second = (now + self._offset_ns) // NS
            if b & RegisterB.UIE:
                candidates.append((second + 1) * NS - self._offset_ns)
            alarm = self._next_alarm(second) if b & RegisterB.AIE else None
            if alarm is not None:
                candidates.append(alarm * NS - self._offset_ns)
        return min(candidates, default=None)

    def _start_timer(self) -> None:
        if self._timer is None and not self._closed and self._ram[Register.B] & INTERRUPT_ENABLES:
            self._timer = threading.Thread(target=self._run_timer, name="cmos-rtc", daemon=True)
            self._timer.start()

    def _run_timer(self) -> None:
        with self._lock:
            while not self._closed:
                if self._paused:
                    self._wake.wait()
                    continue
                now = self._now_ns()
                try:
                    self._advance(now)
                    self._update_irq()
                except Exception:
                    logger.exception("RTC interrupt line failed; RTC interrupts stop")
                    return
                deadline = self._next_event(now)
                if deadline is None:
                    self._wake.wait()  # until an access changes what can happen next
                else:
                    wait = min(max((deadline - now) / NS, MIN_TIMER_WAIT), MAX_TIMER_WAIT)
                    self._wake.wait(wait)
