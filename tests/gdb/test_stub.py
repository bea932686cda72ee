"""The packet handler against an in-memory target: what a real vCPU on this host
cannot show (int3 breakpoints, data watchpoints firing, a machine that ends)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from pyvmm.gdb.breakpoints import HostSupport
from pyvmm.gdb.debugregs import Access, GuestDebug
from pyvmm.gdb.stub import Action, Reply, Resume, Stub
from pyvmm.gdb.target import DebugEvent, StopReason
from pyvmm.kvm.x86 import kvm_fpu, kvm_regs, kvm_sregs
from pyvmm.memory import GuestMemory

T = TypeVar("T")
FULL = HostSupport(software_breakpoints=True, watchpoints=True)


class FakeVcpu:
    """The Vcpu methods the stub calls, over plain structures (paging off)."""

    def __init__(self) -> None:
        self.regs, self.sregs, self.fpu = kvm_regs(rip=0x1000), kvm_sregs(), kvm_fpu()
        self.guest_debug: tuple[int, list[int]] = (0, [])

    def get_regs(self) -> kvm_regs:
        return kvm_regs.from_buffer_copy(self.regs)

    def set_regs(self, regs: kvm_regs) -> None:
        self.regs = kvm_regs.from_buffer_copy(regs)

    def get_sregs(self) -> kvm_sregs:
        return kvm_sregs.from_buffer_copy(self.sregs)

    def set_sregs(self, sregs: kvm_sregs) -> None:
        self.sregs = kvm_sregs.from_buffer_copy(sregs)

    def get_fpu(self) -> kvm_fpu:
        return kvm_fpu.from_buffer_copy(self.fpu)

    def set_fpu(self, fpu: kvm_fpu) -> None:
        self.fpu = kvm_fpu.from_buffer_copy(fpu)

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        self.guest_debug = (control, list(debugreg or []))


class FakeTarget:
    def __init__(self, memory: GuestMemory, vcpus: int = 2) -> None:
        self.memory = memory
        self.vcpu_count = vcpus
        self.vcpus = [FakeVcpu() for _ in range(vcpus)]

    def set_guest_debug(self, index: int, control: int, debugreg: list[int]) -> None:
        self.run_on_vcpu(index, lambda vcpu: vcpu.set_guest_debug(control, debugreg))

    def run_on_vcpu(self, index: int, fn: Callable[[Any], T]) -> T:
        return fn(self.vcpus[index])

    def debug_stop(self) -> None:
        pass

    def debug_continue(self, step_vcpu: int | None) -> None:
        pass

    def wait_debug_event(self, timeout: float) -> DebugEvent | None:
        return None

    def kill(self) -> None:
        pass


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, 0x10000)])
    yield guest
    guest.close()


def reply(result: Reply | Resume) -> bytes:
    assert isinstance(result, Reply)
    return result.payload


def test_int3_breakpoints_where_the_host_reports_them(memory: GuestMemory) -> None:
    target = FakeTarget(memory)
    stub = Stub(target, FULL)
    memory.write(0x1000, b"\x90\x90")
    assert reply(stub.handle(b"qSupported:swbreak+;hwbreak+")).endswith(b";swbreak+")
    assert reply(stub.handle(b"Z0,1001,1")) == b"OK"
    assert memory.read(0x1000, 2) == b"\x90\xcc"
    assert stub.handle(b"c") == Resume(None)
    control, _ = target.vcpus[1].guest_debug
    assert control == GuestDebug.ENABLE | GuestDebug.USE_SW_BP
    assert (
        stub.stop_reply(DebugEvent(1, StopReason.DEBUG_EXIT, exception=3, pc=0x1001))
        == b"T05thread:2;swbreak:;"
    )
    assert reply(stub.handle(b"z0,1001,1")) == b"OK"
    assert memory.read(0x1000, 2) == b"\x90\x90"
    assert reply(stub.handle(b"Z0,1001,1")) == b"OK"
    stub.release()  # gdb went away: the byte is back, guest debugging off
    assert memory.read(0x1001, 1) == b"\x90" and target.vcpus[0].guest_debug[0] == 0


def test_watchpoints_where_the_host_reports_them(memory: GuestMemory) -> None:
    target = FakeTarget(memory)
    stub = Stub(target, FULL)
    assert reply(stub.handle(b"Z2,2003,4")) == b"OK"  # misaligned: three debug registers
    assert reply(stub.handle(b"Z4,3000,8")) == b"OK"
    assert reply(stub.handle(b"Z1,1000,1")) == b"E01"  # all four in use
    assert stub.handle(b"vCont;s:1") == Resume(0)
    control, debugreg = target.vcpus[0].guest_debug
    assert control == GuestDebug.ENABLE | GuestDebug.USE_HW_BP | GuestDebug.SINGLESTEP
    assert target.vcpus[1].guest_debug[0] == GuestDebug.ENABLE | GuestDebug.USE_HW_BP
    assert debugreg[:4] == [0x2003, 0x2004, 0x2006, 0x3000]
    assert debugreg[7] >> 28 & 3 == Access.READ_WRITE
    watch = DebugEvent(0, StopReason.DEBUG_EXIT, exception=1, pc=0x1003, dr6=0xFFFF0FF2)
    assert stub.stop_reply(watch) == b"T05thread:1;watch:2004;"
    access = DebugEvent(0, StopReason.DEBUG_EXIT, exception=1, pc=0x1003, dr6=0xFFFF0FF8)
    assert stub.stop_reply(access) == b"T05thread:1;awatch:3000;"
    assert reply(stub.handle(b"z2,2003,4")) == b"OK"
    assert reply(stub.handle(b"Z1,1000,1")) == b"OK"


def test_single_registers(memory: GuestMemory) -> None:
    target = FakeTarget(memory)
    stub = Stub(target, FULL)
    assert reply(stub.handle(b"Hg2")) == b"OK"
    assert reply(stub.handle(b"P10=0020000000000000")) == b"OK"  # rip of thread 2
    assert target.vcpus[1].regs.rip == 0x2000 and target.vcpus[0].regs.rip == 0x1000
    assert reply(stub.handle(b"p10")) == b"0020000000000000"
    assert reply(stub.handle(b"p3b")) == b"E01"  # one past gs_base
    assert reply(stub.handle(b"qC")) == b"QC2"


def test_a_machine_that_ended(memory: GuestMemory) -> None:
    stub = Stub(FakeTarget(memory), FULL)
    assert stub.stop_reply(DebugEvent(0, StopReason.ENDED, exit_status=3)) == b"W03"
    assert reply(stub.handle(b"?")) == b"W03"
    assert stub.handle(b"k") == Reply(b"", then=Action.KILL)
    assert stub.handle(b"D") == Reply(b"OK", then=Action.DETACH)
