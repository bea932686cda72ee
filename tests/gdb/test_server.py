"""The gdb stub driven by the real gdb (batch mode) and by a raw socket, against real
KVM vCPUs running a small 64-bit loop (`vcpu_target.py`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from vcpu_target import DATA, GUEST_ENTRY, INC_RBX_RIP, SECOND_ENTRY, STORE_RIP, VcpuTarget

from pyvmm.errors import ConfigError
from pyvmm.gdb.breakpoints import HostSupport
from pyvmm.gdb.packets import EventKind, PacketReader, frame
from pyvmm.gdb.server import DEFAULT_ADDRESS, GdbAddress, GdbServer, parse_gdb_address
from pyvmm.gdb.target import StopReason

HARDWARE_ONLY = HostSupport(software_breakpoints=False, watchpoints=False)
GDB = shutil.which("gdb")  # scripts/setup.sh installs it


@pytest.fixture
def target() -> Iterator[VcpuTarget]:
    machine = VcpuTarget(vcpus=2)
    machine.debug_continue(None)  # the guest runs before any debugger comes
    yield machine
    machine.close()


@pytest.fixture
def server(target: VcpuTarget) -> Iterator[GdbServer]:
    stub = GdbServer(target, GdbAddress("127.0.0.1", 0), HARDWARE_ONLY)
    stub.start()
    yield stub
    stub.close()


def gdb(server: GdbServer, *commands: str) -> str:
    assert GDB is not None
    argv = [GDB, "-nx", "-batch", "-ex", "set architecture i386:x86-64"]
    argv += ["-ex", f"target remote 127.0.0.1:{server.address.port}"]
    for command in commands:
        argv += ["-ex", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def test_parse_gdb_address() -> None:
    assert parse_gdb_address("tcp::1234") == GdbAddress("127.0.0.1", 1234) == DEFAULT_ADDRESS
    assert parse_gdb_address("tcp:0.0.0.0:4321") == GdbAddress("0.0.0.0", 4321)
    assert parse_gdb_address("tcp:[::1]:99") == GdbAddress("::1", 99)
    assert parse_gdb_address("2345") == GdbAddress("127.0.0.1", 2345)
    for bad in ("tcp::", "tcp::70000", "udp::1", "tcp:a b:1", "tcp::-1", ""):
        with pytest.raises(ConfigError):
            parse_gdb_address(bad)


@pytest.mark.kvm
def test_registers_memory_breakpoint_step_threads_detach(target: VcpuTarget, server: GdbServer) -> None:
    out = gdb(
        server,
        f"break *{INC_RBX_RIP:#x}",
        "continue",
        "p/x $rip",
        "stepi",
        "p/x $rip",
        "set var $rbx = 0x1234abcd",
        "p/x $rbx",
        "p/x $cs",
        f"set {{long}}{DATA + 8:#x} = 0x5a5a",
        f"x/2xg {DATA:#x}",
        f"x/3xb {GUEST_ENTRY:#x}",
        "info threads",
        "thread 2",
        "p/x $rip",
        "p $xmm1.uint128",
        "detach",
    )
    assert f"hit Breakpoint 1, {INC_RBX_RIP:#018x}" in out, out
    assert f"$1 = {INC_RBX_RIP:#x}" in out and f"$2 = {INC_RBX_RIP + 3:#x}" in out, out
    assert "$3 = 0x1234abcd" in out, out
    assert "0x48\t0xff\t0xc0" in out, out  # inc rax, read through the page tables
    assert "0x0000000000005a5a" in out, out
    assert "* 1    Thread 1" in out and "  2    Thread 2" in out, out
    # vCPU 1 in its own loop
    assert f"$5 = {SECOND_ENTRY:#x}\n" in out or f"$5 = {SECOND_ENTRY + 3:#x}\n" in out, out
    assert "$6 = 0" in out and "detached" in out, out
    assert target.memory.read_u64(DATA + 8) == 0x5A5A
    # detached: the guest runs on, the breakpoint is gone and rbx kept gdb's value
    time.sleep(0.2)
    assert target.running() and target.wait_debug_event(0.2) is None
    target.debug_stop()
    assert target.wait_debug_event(0).reason is StopReason.REQUESTED  # type: ignore[union-attr]
    rbx = target.run_on_vcpu(0, lambda vcpu: vcpu.get_regs().rbx)
    assert rbx > 0x1234ABCD
    code_segment = target.run_on_vcpu(0, lambda vcpu: vcpu.get_sregs().cs.selector)
    assert f"$4 = {code_segment:#x}\n" in out, out


@pytest.mark.kvm
def test_g_packet_writes_and_kill(target: VcpuTarget, server: GdbServer) -> None:
    out = gdb(
        server,
        "set var $r12 = 0xfeedface",
        "set var $xmm2.v4_int32[1] = 7",
        "set var $eflags = 0x246",
        "info registers r12 eflags",
        "kill",
    )
    assert "0xfeedface" in out and "[ PF ZF IF ]" in out, out
    regs, fpu = target.run_on_vcpu(0, lambda vcpu: (vcpu.get_regs(), vcpu.get_fpu()))
    assert regs.r12 == 0xFEEDFACE and regs.rflags == 0x246
    assert bytes(fpu.xmm[2])[4:8] == (7).to_bytes(4, "little")
    assert target.killed and not target.running()


class RawClient:
    def __init__(self, server: GdbServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.address.port), timeout=5)
        self.reader = PacketReader()
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.pending += [e.payload for e in self.reader.feed(data) if e.kind is EventKind.PACKET]
        return self.pending.pop(0)

    def ask(self, payload: bytes) -> bytes:
        self.send(frame(payload))
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.kvm
def test_hostile_bytes_get_refused_and_the_session_goes_on(target: VcpuTarget, server: GdbServer) -> None:
    client = RawClient(server)
    client.send(b"\x00garbage$#zz$m100000,4#00" + b"$" + b"m" * 100_000 + b"#00")
    assert client.ask(b"QStartNoAckMode") == b"OK"
    for bad, answer in [
        (b"m100000", b"E01"),
        (b"mzz,4", b"E01"),
        (b"m7fffffff000,4", b"E14"),  # not mapped by the identity map
        (b"Hg99", b"E01"),
        (b"P999=00", b"E01"),
        (b"P10=00", b"E01"),  # rip takes 8 bytes
        (b"G00", b"E01"),
        (b"M100000,4:0011", b"E01"),
        (b"Z1,100000,4", b"E01"),
        (b"Z2,180000,4", b""),  # no data breakpoints on this (declared) host
        (b"Z3,180000,4", b""),
        (b"qXfer:features:read:other.xml:0,10", b"E01"),
        (b"vCont;x", b"E01"),
        (b"vMustReplyEmpty", b""),
    ]:
        assert client.ask(bad) == answer, bad
    assert client.ask(b"m100000,3") == b"48ffc0"
    xml = client.ask(b"qXfer:features:read:target.xml:0,3fff")
    assert xml.startswith(b"l<?xml") and b"i386:x86-64" in xml
    client.close()


@pytest.mark.kvm
def test_ctrl_c_and_vcont_step(target: VcpuTarget, server: GdbServer) -> None:
    client = RawClient(server)
    client.ask(b"QStartNoAckMode")
    assert client.ask(b"qfThreadInfo") == b"m1,2" and client.ask(b"qsThreadInfo") == b"l"
    assert client.ask(b"vCont?") == b"vCont;c;C;s;S;t"
    client.send(frame(b"c"))
    time.sleep(0.2)
    client.send(b"\x03")
    stop = client.reply()
    assert stop.startswith(b"T02thread:"), stop
    # step vCPU 1 only (thread 2): its rip moves by one instruction, vCPU 0 stays put
    rip0 = target.run_on_vcpu(0, lambda vcpu: vcpu.get_regs().rip)
    rip1 = target.run_on_vcpu(1, lambda vcpu: vcpu.get_regs().rip)
    assert client.ask(b"vCont;s:2") == b"T05thread:2;"
    assert target.run_on_vcpu(0, lambda vcpu: vcpu.get_regs().rip) == rip0
    after = target.run_on_vcpu(1, lambda vcpu: vcpu.get_regs().rip)
    assert {rip1, after} == {SECOND_ENTRY, SECOND_ENTRY + 3}
    assert client.ask(b"qC") == b"QC2"
    # a hardware breakpoint on the store, then continue: vCPU 0 stops there
    assert client.ask(b"Z1,%x,1" % STORE_RIP) == b"OK"
    assert client.ask(b"vCont;c") == b"T05thread:1;"
    assert target.run_on_vcpu(0, lambda vcpu: vcpu.get_regs().rip) == STORE_RIP
    assert client.ask(b"z1,%x,1" % STORE_RIP) == b"OK"
    assert client.ask(b"z1,%x,1" % STORE_RIP) == b"E01"  # not there any more
    client.ask(b"D")
    client.close()


@pytest.mark.kvm
def test_a_second_debugger_is_refused(target: VcpuTarget, server: GdbServer) -> None:
    first = RawClient(server)
    assert first.ask(b"QStartNoAckMode") == b"OK"
    second = RawClient(server)
    assert second.reply().startswith(b"E.")
    assert second.sock.recv(100) == b""  # then disconnected
    assert first.ask(b"qAttached") == b"1"
    first.close()
    time.sleep(0.3)
    assert target.running()  # the first one went away: the guest runs on


@pytest.mark.kvm
def test_stopped_before_the_first_instruction_and_software_watchpoints() -> None:
    """--gdb-wait: the machine never ran; gdb starts at the entry point. Where the
    host has no data breakpoints, `watch` needs gdb's own single-stepping."""
    target = VcpuTarget(vcpus=1)
    stub = GdbServer(target, GdbAddress("127.0.0.1", 0), HARDWARE_ONLY)
    stub.start()
    try:
        out = gdb(
            stub,
            "x/2i $pc",
            "stepi",
            f"hbreak *{INC_RBX_RIP:#x}",
            "continue",
            f"watch *(long*){DATA:#x}",
            "continue",
            "delete",
            "set can-use-hw-watchpoints 0",
            f"watch *(long*){DATA:#x}",
            "continue",
            "detach",
        )
    finally:
        stub.close()
        target.close()
    assert f"=> {GUEST_ENTRY:#x}:\tinc    %rax" in out, out
    assert f"{STORE_RIP:#018x} in ??" in out, out  # one instruction later
    assert f"Breakpoint 1, {INC_RBX_RIP:#018x}" in out, out
    assert "Could not insert hardware watchpoint 2" in out, out
    assert "Old value = 1\nNew value = 2" in out, out


@pytest.mark.kvm
def test_a_debugger_that_vanishes_while_the_guest_runs(target: VcpuTarget, server: GdbServer) -> None:
    client = RawClient(server)
    client.ask(b"QStartNoAckMode")
    assert client.ask(b"Z1,%x,1" % INC_RBX_RIP) == b"OK"
    assert client.ask(b"vCont;c") == b"T05thread:1;"
    client.send(frame(b"c"))  # and gone
    client.close()
    time.sleep(0.5)
    # the session ended as a detach: running, and the breakpoint no longer stops it
    assert target.running() and target.wait_debug_event(0.3) is None


@pytest.mark.kvm
def test_ctrl_c_in_the_same_segment_as_continue(target: VcpuTarget, server: GdbServer) -> None:
    client = RawClient(server)
    client.ask(b"QStartNoAckMode")
    client.send(frame(b"vCont;c") + b"\x03")
    assert client.reply().startswith(b"T02thread:")
    assert not target.running()
    client.close()
