"""A real-mode guest that takes interrupts: its local APIC enabled, one handler per
vector that reports the vector on port 0x44 and then EOIs, and a vCPU thread that
pauses after each report so a test can act between delivery and EOI."""

from __future__ import annotations

import ctypes
import mmap
import queue
import signal
import struct
import threading
from collections.abc import Iterator

import pytest

from pyvmm.kvm import ExitReason, Kvm, Vcpu, Vm, uapi

REPORT_PORT = 0x44
READY_PORT = 0x45
VECTORS = range(0x40, 0x48)  # the vectors the guest has handlers for
LAPIC_BASE = 0xFEE0_0000
RAM_SIZE = 0x10000
CODE = 0x1000
HANDLERS = 0x2000
WAIT = 10.0  # generous: two shared cores, and a software KVM
QUIET = 0.5

# fs points at the local APIC (base set from the host), so 16-bit code reaches it.
MAIN = bytes.fromhex(
    "66b8ff010000"  # mov eax, 0x1ff
    "6466a3f000"  # mov fs:[0xf0], eax      ; spurious vector register: APIC on
    "b001e645"  # mov al, 1; out 0x45, al   ; ready
    "fb"  # sti
    "f4"  # hlt
    "ebfd"  # jmp back to hlt
)


def handler(vector: int) -> bytes:
    return bytes([0xB0, vector, 0xE6, REPORT_PORT]) + bytes.fromhex(
        "6631c0"  # xor eax, eax
        "6466a3b000"  # mov fs:[0xb0], eax      ; EOI
        "cf"  # iret
    )


class InterruptGuest:
    """The VM (with in-kernel irqchip), its vCPU thread and the reports it made."""

    def __init__(self, vm: Vm, vcpu: Vcpu) -> None:
        self.vm = vm
        self.vcpu = vcpu
        self.reports: queue.Queue[int | str] = queue.Queue()
        self._proceed = threading.Semaphore(0)
        self._stopping = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="test-vcpu", daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT)
        assert self.next_report() == "ready"
        self.proceed()

    def route_ioapic_pin(self, pin: int, vector: int, *, level: bool) -> None:
        """Unmask IOAPIC pin `pin` → `vector` on APIC 0, fixed delivery."""
        chip = self.vm.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC)
        chip.chip.ioapic.redirtbl[pin] = vector | (int(level) << 15)
        self.vm.set_irqchip(chip)

    def next_report(self, timeout: float = WAIT) -> int | str:
        return self.reports.get(timeout=timeout)

    def expect(self, vector: int) -> None:
        """The guest took `vector`; let it EOI and go on."""
        assert self.next_report() == vector
        self.proceed()

    def pin_asserted(self, pin: int) -> bool:
        """The IOAPIC's view of the pin: asserted now (its IRR bit)."""
        return bool(self.vm.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC).chip.ioapic.irr >> pin & 1)

    def settle(self, vector: int, most: int = 3) -> None:
        """Let the guest take what is still pending of `vector` (a software KVM may
        deliver a level interrupt once more than the line asks), then be quiet."""
        for _ in range(most):
            try:
                report = self.next_report(QUIET)
            except queue.Empty:
                return
            assert report == vector
            self.proceed()
        self.assert_quiet()

    def assert_quiet(self) -> None:
        with pytest.raises(queue.Empty):
            report = self.next_report(QUIET)
            pytest.fail(f"unexpected report {report!r}")

    def proceed(self) -> None:
        self._proceed.release()

    def stop(self) -> None:
        self._stopping = True
        self.vcpu.set_immediate_exit(True)
        self._proceed.release()
        if self._thread.ident is not None and self._thread.is_alive():
            signal.pthread_kill(self._thread.ident, signal.SIGUSR1)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def _main(self) -> None:
        # SIGUSR1 stays blocked here except inside KVM_RUN: a kick ends KVM_RUN with
        # EINTR and is then consumed, as pyvmm's vCPU threads do.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        self.vcpu.set_signal_mask(set())
        self._ready.set()
        while not self._stopping:
            reason = self.vcpu.run()
            if reason == ExitReason.INTR:
                signal.sigtimedwait({signal.SIGUSR1}, 0)
                continue
            if reason != ExitReason.IO:
                self.reports.put(f"exit {reason}")
                return
            io = self.vcpu.run_state.io
            value = self.vcpu.run_mapping[io.data_offset]
            self.reports.put("ready" if io.port == READY_PORT else value)
            self._proceed.acquire()


@pytest.fixture
def guest() -> Iterator[InterruptGuest]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        ram = mmap.mmap(-1, RAM_SIZE)
        ram[CODE : CODE + len(MAIN)] = MAIN
        for index, vector in enumerate(VECTORS):
            address = HANDLERS + 0x20 * index
            code = handler(vector)
            ram[address : address + len(code)] = code
            struct.pack_into("<HH", ram, 4 * vector, address, 0)  # the real-mode IVT
        vm.set_user_memory_region(0, 0, RAM_SIZE, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        sregs.fs.base, sregs.fs.limit = LAPIC_BASE, 0xFFFF
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = CODE, 2
        vcpu.set_regs(regs)
        running = InterruptGuest(vm, vcpu)
        try:
            yield running
        finally:
            running.stop()
            vcpu.close()
