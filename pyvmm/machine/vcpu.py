"""One thread per vCPU: KVM_RUN in a loop, each exit dispatched by its reason.

The hot path (port I/O and MMIO) reads the `kvm_run` fields it needs with
precompiled `struct` formats straight from the shared page, looks the address up in
the bus, and re-enters the guest; it allocates nothing it does not hand to a device
and takes no lock. Everything that ends the VM goes through `stop`, which records
the first outcome and kicks every vCPU out of KVM_RUN (immediate_exit + a signal).

The vCPU thread is also where its commands run (Firecracker's `vstate/vcpu.rs`
events): `park()` kicks it out of KVM_RUN and it waits, parked, until `unpark()`;
while parked it runs what `call()` hands it (reading or writing its state) on its own
thread. It parks only after a KVM_RUN that returned EINTR: the kick set
immediate_exit, so that KVM_RUN first completed the port or MMIO access of the exit
before it (api.rst, "kvm_run": the access is complete only once KVM_RUN is entered
again), and the state read while parked is whole.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pyvmm.bus import MmioBus, PortBus
from pyvmm.errors import LifecycleError, VmmError
from pyvmm.kvm import ExitReason, InternalErrorSuberror, KvmError, KvmIoctlError, SystemEvent, Vcpu
from pyvmm.kvm.ioctls import KVM_RUN as _KVM_RUN
from pyvmm.kvm.uapi import KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
from pyvmm.kvm.vcpu import RUN_EXIT_DATA
from pyvmm.machine.stats import VcpuCounters
from pyvmm.outcome import ExitKind, GuestExit, StopRequest

log = logging.getLogger(__name__)

# The signal that kicks a vCPU thread out of KVM_RUN. It stays blocked in the vCPU
# thread and is unblocked only inside KVM_RUN (KVM_SET_SIGNAL_MASK), so it never runs
# a handler: it only makes KVM_RUN return EINTR, and is then consumed.
KICK_SIGNAL = signal.SIGUSR1

_IO = struct.Struct("<BBHIQ")  # kvm_run.io: direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # kvm_run.mmio: phys_addr, data, len, is_write
_FAIL_ENTRY = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
_INTERNAL = struct.Struct("<II16Q")  # suberror, ndata, data[16]
_EMULATION_FAILURE = struct.Struct("<IIQB15s")  # suberror, ndata, flags, insn_size, insn_bytes
_SYSTEM_EVENT = struct.Struct("<II")  # type, ndata
_DEBUG = struct.Struct("<IIQQQ")  # kvm_debug_exit_arch: exception, pad, pc, dr6, dr7
_DB_VECTOR = 1  # #DB
_DR6_SINGLE_STEP = 0xFFFF4FF0  # DR6 after a single step: BS (bit 14) and the reserved ones

_REASON_IO = ExitReason.IO.value
_REASON_MMIO = ExitReason.MMIO.value
_REASON_INTR = ExitReason.INTR.value
_REASON_DEBUG = ExitReason.DEBUG.value
_INTERRUPTED = (errno.EINTR, errno.EAGAIN)

Disassembler = Callable[[bytes, int, int], str]
# How long unpark() waits for the thread to leave its park: it only has to wake up.
UNPARK_SECONDS = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class DebugExit:
    """A KVM_EXIT_DEBUG (api.rst, `kvm_debug_exit_arch`): the exception vector (1: #DB,
    3: #BP), the guest's RIP, DR6 and DR7."""

    vcpu: int
    exception: int
    pc: int
    dr6: int
    dr7: int


class InstructionEmulator(Protocol):
    """Emulates the instruction at RIP that KVM could not (pyvmm.arch.x86.emulator)."""

    run_ahead: int

    def emulate(self, insn_bytes: bytes | None = None) -> list[str]: ...


def _thread_user_seconds_outside_guest() -> float:
    """The calling thread's user-mode CPU time less its guest time (proc(5),
    /proc/thread-self/stat fields 14 utime and 43 guest_time: the kernel counts time
    in the guest as user time too), i.e. what pyvmm's own code used."""
    try:
        with open("/proc/thread-self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, guest_time = int(fields[11]), int(fields[40])  # fields 14 and 43, counted from 3
    return max(utime - guest_time, 0) / os.sysconf("SC_CLK_TCK")


class VcpuRunner:
    """Owns one vCPU's thread and its exit loop."""

    def __init__(
        self,
        vcpu: Vcpu,
        ports: PortBus,
        mmio: MmioBus,
        stop: StopRequest,
        is_stopping: Callable[[], bool],
        *,
        has_irqchip: bool,
        disassemble: Disassembler | None = None,
        make_emulator: Callable[[], InstructionEmulator] | None = None,
        on_debug: Callable[[DebugExit], None] | None = None,
    ) -> None:
        self.vcpu = vcpu
        self.ports = ports
        self.mmio = mmio
        self.stop = stop
        self.is_stopping = is_stopping
        self.has_irqchip = has_irqchip
        self.disassemble = disassemble
        # A debugger's KVM_EXIT_DEBUG goes there, and the vCPU parks (gdb's all-stop);
        # without one such an exit is unhandled.
        self.on_debug = on_debug
        # Under a debugger the emulator runs no vector instruction ahead of the one KVM
        # could not: a step or breakpoint must not be passed over.
        self.debugged = False
        # The debugger asked for single steps (KVM_GUESTDBG_SINGLESTEP): an instruction
        # the emulator runs is a step KVM never sees, so the runner reports it itself.
        self.single_stepping = False
        # Built at the first emulation failure: many guests never have one, and the
        # emulator (with iced-x86) is a large part of pyvmm's start-up time.
        self._make_emulator = make_emulator
        self.emulator: InstructionEmulator | None = None
        self.emulation_failure = ""
        self.counters = VcpuCounters()
        self.thread = threading.Thread(target=self._thread_main, name=f"vcpu{vcpu.id}", daemon=True)
        self._started = threading.Event()
        # The command path: what the thread should be doing, and what it is doing.
        self._commands = threading.Condition()
        self._park_wanted = False
        self._parked = False
        self._finished = False
        self._calls: deque[tuple[Callable[[Vcpu], object], Future[object]]] = deque()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, parked: bool = False) -> None:
        """Start the thread; `parked`: it parks before its first KVM_RUN (a machine
        started paused, or restored, or waiting for a debugger)."""
        self._park_wanted = parked
        self.thread.start()
        self._started.wait()

    def park(self) -> None:
        """Ask the thread to leave KVM_RUN and park (`wait_parked` to know it has)."""
        with self._commands:
            self._park_wanted = True
        self.kick()

    def wait_parked(self, timeout: float | None) -> bool:
        """Whether the thread parked (or ended) within `timeout` seconds."""
        with self._commands:
            return self._commands.wait_for(lambda: self._parked or self._finished, timeout)

    def unpark(self) -> None:
        """Let a parked thread run the guest again; returns once it has left its park
        (so `parked` is False after it)."""
        with self._commands:
            self._park_wanted = False
            self._commands.notify_all()
            self._commands.wait_for(lambda: not self._parked or self._finished, UNPARK_SECONDS)

    @property
    def parked(self) -> bool:
        return self._parked

    def call(self, fn: Callable[[Vcpu], T], timeout: float | None = None) -> T:
        """Run `fn(vcpu)` on the vCPU's own thread while it is parked, and return what
        it returns (or raise what it raised). `LifecycleError` when the thread is not
        parked, ends first, or `timeout` passes; on a thread that never started (a
        machine built and not started, or ended) it runs in the caller's thread."""
        if not self.thread.is_alive():
            if self._started.is_set():
                raise LifecycleError(f"vCPU {self.vcpu.id} has ended")
            return fn(self.vcpu)
        future: Future[object] = Future()
        with self._commands:
            if not self._park_wanted:
                raise LifecycleError(f"vCPU {self.vcpu.id} is running: pause it first")
            self._calls.append((fn, future))
            self._commands.notify_all()
        try:
            return future.result(timeout)  # type: ignore[return-value]
        except TimeoutError:
            future.cancel()
            raise LifecycleError(f"vCPU {self.vcpu.id} did not answer within {timeout} s") from None

    def kick(self) -> None:
        """Make the vCPU leave KVM_RUN soon, wherever it is in its loop; a parked vCPU
        looks at what it is asked again (the machine may be stopping)."""
        with self._commands:
            self._commands.notify_all()
        try:
            self.vcpu.set_immediate_exit(True)
        except ValueError:
            return  # already closed
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _thread_main(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
        try:
            self.vcpu.set_signal_mask(set())
        finally:
            self._started.set()
        try:
            if not (self._park_wanted and self._park()):
                self._loop()
        except KvmError as exc:
            self.stop(GuestExit(ExitKind.ERROR, f"vCPU {self.vcpu.id}: {exc}"))
        except Exception as exc:  # a device bug must stop the VM, not hang it
            log.exception("vCPU %d: unexpected error", self.vcpu.id)
            self.stop(GuestExit(ExitKind.ERROR, f"vCPU {self.vcpu.id}: internal error: {exc!r}"))
        finally:
            self.counters.exit_seconds = _thread_user_seconds_outside_guest()
            with self._commands:
                self._finished = True
                calls, self._calls = list(self._calls), deque()
                self._commands.notify_all()
            for _, future in calls:
                future.set_exception(LifecycleError(f"vCPU {self.vcpu.id} has ended"))

    def _park(self) -> bool:
        """Parked: run the calls handed in until unparked; True when the machine is
        stopping instead (the thread ends)."""
        with self._commands:
            self._parked = True
            self._commands.notify_all()
            try:
                while True:
                    if self.is_stopping():
                        return True
                    if self._calls:
                        fn, future = self._calls.popleft()
                        self._commands.release()
                        try:
                            if future.set_running_or_notify_cancel():
                                try:
                                    future.set_result(fn(self.vcpu))
                                except BaseException as error:
                                    future.set_exception(error)
                        finally:
                            self._commands.acquire()
                        continue
                    if not self._park_wanted:
                        return False
                    self._commands.wait()
            finally:
                self._parked = False
                self._commands.notify_all()

    # --- the exit loop --------------------------------------------------------------------

    def _loop(self) -> None:
        """KVM_RUN until the machine stops.

        `is_stopping` is checked only when KVM_RUN was interrupted: `Machine.stop` sets
        the flag before it kicks, and a kick always makes the next KVM_RUN return EINTR.
        """
        vcpu = self.vcpu
        fd = vcpu.fd
        run_state = vcpu.run_state
        page = vcpu.run_mapping
        exits = self.counters.exits
        port_table = self.ports.table
        port_find = self.ports.find
        mmio_find = self.mmio.find
        io_fields = _IO.unpack_from
        mmio_fields = _MMIO.unpack_from
        ioctl = fcntl.ioctl
        while True:
            try:
                ioctl(fd, _KVM_RUN)
            except OSError as exc:
                if exc.errno not in _INTERRUPTED:
                    raise KvmIoctlError("KVM_RUN", exc.errno or errno.EIO, f"vCPU {vcpu.id}") from None
                exits[_REASON_INTR] += 1
                self._consume_kick()
                if self.is_stopping() or (self._park_wanted and self._park()):
                    return
                continue
            reason = run_state.exit_reason
            exits[reason] += 1
            if reason == _REASON_IO:
                direction, size, port, count, offset = io_fields(page, RUN_EXIT_DATA)
                target = port_table[port]
                if port + size > target.end:
                    target = port_find(port, size)
                if count == 1:
                    # BusRange.read/write inlined: one Python call less on every exit.
                    if direction == KVM_EXIT_IO_OUT:
                        target.writes += 1
                        if size == 1:
                            value = page[offset]
                        else:
                            value = int.from_bytes(page[offset : offset + size], "little")
                        target.device.write(port - target.base, size, value)
                    else:
                        target.reads += 1
                        value = target.device.read(port - target.base, size)
                        page[offset : offset + size] = value.to_bytes(size, "little")
                else:
                    self._string_io(direction, size, port, count, offset)
            elif reason == _REASON_MMIO:
                address, data, length, is_write = mmio_fields(page, RUN_EXIT_DATA)
                length = min(length, 8)
                target = mmio_find(address, length)
                if is_write:
                    target.write(address, length, int.from_bytes(data[:length], "little"))
                else:
                    value = target.read(address, length).to_bytes(length, "little")
                    page[RUN_EXIT_DATA + 8 : RUN_EXIT_DATA + 8 + length] = value
            elif reason == _REASON_DEBUG and self.on_debug is not None:
                exception, _, pc, dr6, dr7 = _DEBUG.unpack_from(page, RUN_EXIT_DATA)
                if self._debug_exit(DebugExit(vcpu.id, exception, pc, dr6, dr7)):
                    return
            else:
                outcome = self._other_exit(reason)
                if outcome is not None:
                    self.stop(outcome)
                    return
                if reason == ExitReason.INTERNAL_ERROR and self.single_stepping and self.on_debug is not None:
                    # The emulator took the step: #DB with DR6.BS, as KVM reports one.
                    step = DebugExit(vcpu.id, _DB_VECTOR, vcpu.get_regs().rip, _DR6_SINGLE_STEP, 0)
                    if self._debug_exit(step):
                        return

    def _debug_exit(self, hit: DebugExit) -> bool:
        """A breakpoint, watchpoint or single step the debugger set: tell it, then park
        until it lets this vCPU go (KVM_EXIT_DEBUG completes nothing on re-entry). True
        when the machine is stopping instead."""
        assert self.on_debug is not None
        with self._commands:
            self._park_wanted = True
        self.on_debug(hit)
        return self._park()

    def _string_io(self, direction: int, size: int, port: int, count: int, offset: int) -> None:
        """`rep ins/outs`: KVM hands over up to a page of `count` items at `offset`."""
        page = self.vcpu.run_mapping
        if offset + size * count > len(page):
            raise KvmError(f"KVM reported string I/O beyond the kvm_run mapping ({offset}+{size}x{count})")
        target = self.ports.find(port, size)
        for item in range(offset, offset + size * count, size):
            if direction == KVM_EXIT_IO_OUT:
                target.write(port, size, int.from_bytes(page[item : item + size], "little"))
            else:
                page[item : item + size] = target.read(port, size).to_bytes(size, "little")

    def _consume_kick(self) -> None:
        self.vcpu.set_immediate_exit(False)
        signal.sigtimedwait({KICK_SIGNAL}, 0)

    def _other_exit(self, reason: int) -> GuestExit | None:
        """Exits off the hot path; returns an outcome when the VM must stop."""
        page = self.vcpu.run_mapping
        cpu = f"vCPU {self.vcpu.id}"
        if reason == ExitReason.HLT:
            if self.has_irqchip:
                return None
            return GuestExit(ExitKind.STOPPED, f"{cpu} halted and nothing can wake it (no in-kernel irqchip)")
        if reason in (ExitReason.IRQ_WINDOW_OPEN, ExitReason.INTR):
            return None
        if reason == ExitReason.SHUTDOWN:
            return GuestExit(ExitKind.TRIPLE_FAULT, f"{cpu} triple-faulted at {self._where()}")
        if reason == ExitReason.SYSTEM_EVENT:
            kind, _ = _SYSTEM_EVENT.unpack_from(page, RUN_EXIT_DATA)
            if kind == SystemEvent.SHUTDOWN:
                return GuestExit(ExitKind.POWEROFF, f"{cpu} requested shutdown")
            if kind == SystemEvent.RESET:
                return GuestExit(ExitKind.REBOOT, f"{cpu} requested reset")
            return GuestExit(ExitKind.ERROR, f"{cpu} system event {kind} (crash or unsupported)")
        if reason == ExitReason.FAIL_ENTRY:
            hardware_reason, host_cpu = _FAIL_ENTRY.unpack_from(page, RUN_EXIT_DATA)
            return GuestExit(
                ExitKind.ERROR,
                f"{cpu}: KVM could not enter the guest (hardware entry failure reason "
                f"{hardware_reason:#x} on host CPU {host_cpu}) at {self._where()}",
            )
        if reason == ExitReason.INTERNAL_ERROR:
            if self._make_emulator is not None and self._emulate():
                return None
            return GuestExit(ExitKind.ERROR, f"{cpu}: {self._internal_error()}")
        try:
            name = ExitReason(reason).name
        except ValueError:
            name = str(reason)
        return GuestExit(ExitKind.ERROR, f"{cpu}: unhandled KVM exit {name} at {self._where()}")

    def _emulate(self) -> bool:
        """Emulate the instruction behind an emulation failure; False if not possible.

        Instruction bytes come from the exit when KVM gives them
        (KVM_CAP_EXIT_ON_EMULATION_FAILURE), else the emulator fetches them through
        the guest's page tables. Faults the instruction raises go to the guest.
        """
        assert self._make_emulator is not None
        if self.emulator is None:
            self.emulator = self._make_emulator()
        if self.debugged:
            self.emulator.run_ahead = 0
        page = self.vcpu.run_mapping
        suberror, _, flags, size, insn = _EMULATION_FAILURE.unpack_from(page, RUN_EXIT_DATA)
        if suberror != InternalErrorSuberror.EMULATION:
            return False
        code = None
        if flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES and 0 < size <= 15:
            code = bytes(insn[:size])
        try:
            mnemonics = self.emulator.emulate(code)
        except VmmError as exc:
            self.emulation_failure = str(exc)
            return False
        emulated = self.counters.emulated
        for mnemonic in mnemonics:
            emulated[mnemonic] += 1
        return True

    def _where(self) -> str:
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except KvmError:
            return "an unknown address"
        return f"RIP {regs.rip:#x} (CS base {sregs.cs.base:#x}, CR0 {sregs.cr0:#x})"

    def _internal_error(self) -> str:
        """Describe KVM_EXIT_INTERNAL_ERROR: suberror, RIP, instruction bytes if given."""
        page = self.vcpu.run_mapping
        suberror, ndata, *data = _INTERNAL.unpack_from(page, RUN_EXIT_DATA)
        try:
            name = InternalErrorSuberror(suberror).name
        except ValueError:
            name = f"suberror {suberror}"
        text = f"KVM internal error ({name}) at {self._where()}"
        if self.emulation_failure:
            return f"{text}; not emulated: {self.emulation_failure}"
        if suberror == InternalErrorSuberror.EMULATION:
            _, _, flags, size, insn = _EMULATION_FAILURE.unpack_from(page, RUN_EXIT_DATA)
            if flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES and size:
                code = bytes(insn[: min(size, 15)])
                text += f"; instruction bytes {code.hex(' ')}"
                if self.disassemble is not None:
                    text += f" ({self.disassemble(code, self.vcpu.get_regs().rip, self._bitness())})"
        elif ndata:
            text += "; data " + " ".join(f"{word:#x}" for word in data[: min(ndata, 16)])
        return text

    def _bitness(self) -> int:
        sregs = self.vcpu.get_sregs()
        if sregs.cs.l:
            return 64
        return 32 if sregs.cs.db else 16
