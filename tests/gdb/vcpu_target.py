"""A `DebugTarget` over real KVM vCPUs of a bare VM, for the gdb stub's tests: each
vCPU has a thread that runs KVM_RUN or, parked, the functions `run_on_vcpu` hands
it, as the machine's vCPU threads will. Kicks are immediate_exit plus SIGUSR1, which
is blocked outside KVM_RUN (as `pyvmm/machine/vcpu.py` does).

The guest: 64-bit code from `GUEST_ENTRY` (vCPU 0) and `SECOND_ENTRY` (vCPU 1), in
long mode on the identity map `pyvmm.arch.x86.cpu.enter` builds.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyvmm.arch.x86.cpu import enter
from pyvmm.boot.entry import CpuMode, EntryPoint
from pyvmm.gdb.target import DebugEvent, StopReason
from pyvmm.kvm import ExitReason, Kvm, Vcpu, Vm
from pyvmm.memory import GuestMemory

T = TypeVar("T")
KICK = signal.SIGUSR1
RAM = 4 << 20
GUEST_ENTRY = 0x100000
SECOND_ENTRY = 0x100100
DATA = 0x180000
# loop: inc rax; mov [DATA], rax; inc rbx; jmp loop
LOOP = bytes.fromhex("48ffc048890425" + DATA.to_bytes(4, "little").hex() + "48ffc3ebf0")
STORE_RIP = GUEST_ENTRY + 3
INC_RBX_RIP = GUEST_ENTRY + 11
# inc rcx; jmp back
SECOND_LOOP = bytes.fromhex("48ffc1ebfb")
_RUN = "run"
_QUIT = "quit"


class _Thread(threading.Thread):
    def __init__(self, owner: VcpuTarget, index: int, vcpu: Vcpu) -> None:
        super().__init__(name=f"test-vcpu{index}", daemon=True)
        self.owner, self.index, self.vcpu = owner, index, vcpu
        self.calls: queue.Queue[Any] = queue.Queue()

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {KICK})
        self.vcpu.set_signal_mask(set())
        while True:
            item = self.calls.get()
            if item == _QUIT:
                return
            if item == _RUN:
                self.owner._parked(self.index, self._run_until_stop())
                continue
            fn, box = item
            try:
                box.put((True, fn(self.vcpu)))
            except BaseException as exc:  # handed to the caller
                box.put((False, exc))

    def _run_until_stop(self) -> DebugEvent | None:
        while not self.owner.stop_flag:
            reason = self.vcpu.run()
            if reason == ExitReason.INTR:
                self.vcpu.set_immediate_exit(False)
                signal.sigtimedwait({KICK}, 0)
                continue
            if reason == ExitReason.DEBUG:
                arch = self.vcpu.run_state.u.debug.arch
                return DebugEvent(
                    self.index, StopReason.DEBUG_EXIT, arch.exception, arch.pc, arch.dr6, arch.dr7
                )
            return DebugEvent(self.index, StopReason.ENDED, exit_status=0 if reason == ExitReason.HLT else 1)
        return None

    def kick(self) -> None:
        self.vcpu.set_immediate_exit(True)
        if self.ident is not None:
            signal.pthread_kill(self.ident, KICK)


class VcpuTarget:
    """`DebugTarget` for `vcpus` vCPUs running `LOOP` (and `SECOND_LOOP`)."""

    def __init__(self, vcpus: int = 1) -> None:
        self._memory = GuestMemory([(0, RAM)])
        self._memory.write(GUEST_ENTRY, LOOP)
        self._memory.write(SECOND_ENTRY, SECOND_LOOP)
        self.kvm = Kvm()
        self.vm: Vm = self.kvm.create_vm()
        self._memory.register(self.vm)
        self.vcpus = [self.vm.create_vcpu(i) for i in range(vcpus)]
        for index, vcpu in enumerate(self.vcpus):
            enter(vcpu, self._memory, EntryPoint(CpuMode.LONG64, GUEST_ENTRY if index == 0 else SECOND_ENTRY))
        self.events: queue.Queue[DebugEvent] = queue.Queue()
        self.stop_flag = False
        self.killed = False
        self._lock = threading.Condition()
        self._running: set[int] = set()
        self._pending: DebugEvent | None = None
        self.threads = [_Thread(self, i, vcpu) for i, vcpu in enumerate(self.vcpus)]
        for thread in self.threads:
            thread.start()

    @property
    def vcpu_count(self) -> int:
        return len(self.vcpus)

    @property
    def memory(self) -> GuestMemory:
        return self._memory

    def _parked(self, index: int, event: DebugEvent | None) -> None:
        with self._lock:
            if event is not None and self._pending is None:
                self._pending = event
                self.stop_flag = True
                for thread in self.threads:
                    if thread.index != index and thread.index in self._running:
                        thread.kick()
            self._running.discard(index)
            if not self._running:
                if self._pending is not None:
                    self.events.put(self._pending)
                self._lock.notify_all()

    def set_guest_debug(self, index: int, control: int, debugreg: list[int]) -> None:
        self.run_on_vcpu(index, lambda vcpu: vcpu.set_guest_debug(control, debugreg))

    def run_on_vcpu(self, index: int, fn: Callable[[Vcpu], T]) -> T:
        with self._lock:
            if index in self._running:
                raise RuntimeError(f"vCPU {index} is running")
        box: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.threads[index].calls.put((fn, box))
        ok, value = box.get(timeout=10)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def debug_stop(self, reason: StopReason = StopReason.REQUESTED) -> None:
        with self._lock:
            if not self._running:
                return
            if self._pending is None:
                self._pending = DebugEvent(min(self._running), reason)
            self.stop_flag = True
            for index in self._running:
                self.threads[index].kick()
            if not self._lock.wait_for(lambda: not self._running, timeout=10):
                raise RuntimeError("vCPUs did not park")

    def debug_continue(self, step_vcpu: int | None) -> None:
        with self._lock:
            if self.killed:
                return
            self.stop_flag = False
            self._pending = None
            which = range(self.vcpu_count) if step_vcpu is None else [step_vcpu]
            self._running.update(which)
            for index in which:
                self.threads[index].calls.put(_RUN)

    def wait_debug_event(self, timeout: float) -> DebugEvent | None:
        try:
            return self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return None

    def kill(self) -> None:
        self.killed = True
        if self.running():
            self.debug_stop(StopReason.ENDED)
        else:
            self.events.put(DebugEvent(0, StopReason.ENDED))

    def running(self) -> bool:
        with self._lock:
            return bool(self._running)

    def close(self) -> None:
        self.debug_stop()
        for thread in self.threads:
            thread.calls.put(_QUIT)
            thread.join(5)
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()
        self.kvm.close()
        self._memory.close()
