"""The packets of one gdb session, in all-stop mode (gdb manual, "Remote Protocol":
§E.2 "Packets", §E.4 "General Query Packets", §E.3 "Stop Reply Packets").

One gdb thread per vCPU: thread id = vCPU index + 1 (ids 0 and -1 mean "any" and
"all"). `Stub.handle` answers a packet while the machine is parked; a packet that
lets the guest run returns a `Resume` instead of a reply, and the server sends the
stop reply (`Stub.stop_reply`) when the machine reports its next `DebugEvent`.
Malformed arguments get `E01`, an address that does not translate `E14`, unknown
packets the empty reply.
"""

from __future__ import annotations

import binascii
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyvmm.errors import GuestMemoryError, VmmError
from pyvmm.gdb import registers
from pyvmm.gdb.breakpoints import Breakpoints, HostSupport, UnsupportedError
from pyvmm.gdb.debugregs import Access, BreakpointError, hit_slots
from pyvmm.gdb.packets import MAX_PACKET, PacketError
from pyvmm.gdb.paging import AddressSpace, TranslationError
from pyvmm.gdb.registers import CpuState
from pyvmm.gdb.target import DebugEvent, DebugTarget, StopReason
from pyvmm.kvm import KvmError, Vcpu
from pyvmm.kvm.x86 import kvm_fpu, kvm_regs, kvm_sregs

log = logging.getLogger(__name__)

SIGINT = 2
SIGTRAP = 5
_ERROR_ARGUMENT = b"E01"
_ERROR_IO = b"E05"  # EIO
_ERROR_FAULT = b"E14"  # EFAULT, as gdbserver answers for memory it cannot reach
_MAX_MEMORY = (MAX_PACKET - 8) // 2  # hex doubles the bytes of an 'm' reply
_FEATURES = "PacketSize={:x};qXfer:features:read+;vContSupported+;QStartNoAckMode+;hwbreak+"


class Action(enum.Enum):
    DETACH = "detach"
    KILL = "kill"


@dataclass(frozen=True)
class Resume:
    """Run the guest: all vCPUs, or only `step_vcpu` for one instruction."""

    step_vcpu: int | None


@dataclass(frozen=True)
class Reply:
    payload: bytes
    no_ack: bool = False  # QStartNoAckMode: acknowledgments end after this reply
    then: Action | None = None


def _hex_int(text: bytes) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise PacketError(f"not a hex number: {text[:20]!r}") from None


def _fields(text: bytes, separator: bytes, count: int) -> list[bytes]:
    parts = text.split(separator, count - 1)
    if len(parts) != count:
        raise PacketError(f"expected {count} fields in {text[:40]!r}")
    return parts


def _read_state(vcpu: Vcpu) -> CpuState:
    return CpuState(vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu())


def _copy(state: CpuState) -> CpuState:
    """Copies to change, so that only what changed is written back."""
    return CpuState(
        kvm_regs.from_buffer_copy(state.regs),
        kvm_sregs.from_buffer_copy(state.sregs),
        kvm_fpu.from_buffer_copy(state.fpu),
    )


class Stub:
    """The debugger's view of a parked machine."""

    def __init__(self, target: DebugTarget, host: HostSupport) -> None:
        self.target = target
        self.breakpoints = Breakpoints(host)
        self.g_vcpu = 0  # Hg: the thread registers and memory are read from
        self.c_vcpu = 0  # Hc: the thread s and c act on
        # before any stop is seen (the machine was parked already: --gdb-wait), gdb is
        # told of a SIGTRAP stop on vCPU 0, as for a fresh attach
        self.last_stop = DebugEvent(0, StopReason.DEBUG_EXIT)
        self._client_hwbreak = False  # the stop reasons gdb said it understands (qSupported)
        self._client_swbreak = False

    # --- dispatch --------------------------------------------------------------------

    def handle(self, packet: bytes) -> Reply | Resume:
        try:
            return self._dispatch(packet)
        except UnsupportedError as exc:
            log.debug("gdb: %s", exc)
            return Reply(b"")
        except (TranslationError, GuestMemoryError) as exc:
            log.debug("gdb: %s", exc)
            return Reply(_ERROR_FAULT)
        except (PacketError, BreakpointError, ValueError) as exc:
            log.debug("gdb: refused %r: %s", packet[:40], exc)
            return Reply(_ERROR_ARGUMENT)
        except KvmError as exc:  # e.g. KVM_SET_SREGS refusing a value gdb wrote
            log.warning("gdb: %r failed: %s", packet[:40], exc)
            return Reply(_ERROR_IO)
        except VmmError as exc:  # the machine could not do it (it stopped meanwhile...)
            log.warning("gdb: %r failed: %s", packet[:40], exc)
            return Reply(_ERROR_ARGUMENT)

    def _dispatch(self, packet: bytes) -> Reply | Resume:
        if not packet:
            return Reply(b"")
        command, rest = packet[:1], packet[1:]
        if packet.startswith(b"q") or packet.startswith(b"Q"):
            return self._query(packet)
        if packet.startswith(b"vCont"):
            return self._vcont(packet)
        simple: dict[bytes, Callable[[], Reply | Resume]] = {
            b"?": lambda: Reply(self.stop_reply(self.last_stop)),
            b"g": lambda: Reply(binascii.hexlify(registers.g_packet(self._state()))),
            b"G": lambda: self._write_all(rest),
            b"p": lambda: self._read_register(rest),
            b"P": lambda: self._write_register(rest),
            b"m": lambda: self._read_memory(rest),
            b"M": lambda: self._write_memory(rest, binary=False),
            b"X": lambda: self._write_memory(rest, binary=True),
            b"Z": lambda: self._breakpoint(rest, insert=True),
            b"z": lambda: self._breakpoint(rest, insert=False),
            b"H": lambda: self._set_thread(rest),
            b"T": lambda: Reply(b"OK" if self._vcpu_of(rest) >= 0 else _ERROR_ARGUMENT),
            b"c": lambda: self._resume(rest, step=False),
            b"s": lambda: self._resume(rest, step=True),
            b"D": lambda: Reply(b"OK", then=Action.DETACH),
            b"k": lambda: Reply(b"", then=Action.KILL),
        }
        handler = simple.get(command)
        return handler() if handler is not None else Reply(b"")

    def _query(self, packet: bytes) -> Reply:
        if packet.startswith(b"qSupported"):
            self._client_hwbreak = b"hwbreak+" in packet
            self._client_swbreak = b"swbreak+" in packet and self.breakpoints.host.software_breakpoints
            features = _FEATURES.format(MAX_PACKET) + (";swbreak+" if self._client_swbreak else "")
            return Reply(features.encode())
        if packet == b"QStartNoAckMode":
            return Reply(b"OK", no_ack=True)
        if packet.startswith(b"qXfer:features:read:"):
            return Reply(self._target_xml(packet[len(b"qXfer:features:read:") :]))
        answers = {
            b"qAttached": b"1",
            b"qC": b"QC%x" % (self.g_vcpu + 1),
            b"qfThreadInfo": b"m" + b",".join(b"%x" % (i + 1) for i in range(self.target.vcpu_count)),
            b"qsThreadInfo": b"l",
        }
        return Reply(answers.get(packet, b""))

    # --- threads ---------------------------------------------------------------------

    def _vcpu_of(self, thread: bytes) -> int:
        """The vCPU of a gdb thread id; -1 for "all", the current one for "any"."""
        if thread == b"-1":
            return -1
        number = _hex_int(thread)
        if number == 0:
            return self.g_vcpu
        if not 1 <= number <= self.target.vcpu_count:
            raise PacketError(f"no thread {number}")
        return number - 1

    def _set_thread(self, rest: bytes) -> Reply:
        which, thread = rest[:1], rest[1:]
        vcpu = self._vcpu_of(thread)
        if which == b"g":
            self.g_vcpu = max(vcpu, 0)
        elif which == b"c":
            self.c_vcpu = max(vcpu, 0)
        else:
            raise PacketError(f"H{which!r}")
        return Reply(b"OK")

    # --- registers -------------------------------------------------------------------

    def _state(self) -> CpuState:
        return self.target.run_on_vcpu(self.g_vcpu, _read_state)

    def _store(self, before: CpuState, after: CpuState) -> None:
        """Write back only the structures that changed."""

        def write(vcpu: Vcpu) -> None:
            if bytes(after.regs) != bytes(before.regs):
                vcpu.set_regs(after.regs)
            if bytes(after.sregs) != bytes(before.sregs):
                vcpu.set_sregs(after.sregs)
            if bytes(after.fpu) != bytes(before.fpu):
                vcpu.set_fpu(after.fpu)

        self.target.run_on_vcpu(self.g_vcpu, write)

    def _write_all(self, rest: bytes) -> Reply:
        data = self._unhex(rest)
        before = self._state()
        after = _copy(before)
        registers.apply_g_packet(after, data)
        self._store(before, after)
        return Reply(b"OK")

    def _read_register(self, rest: bytes) -> Reply:
        number = _hex_int(rest)
        if number >= len(registers.REGISTERS):
            return Reply(_ERROR_ARGUMENT)
        value = registers.read_values(self._state())[number]
        return Reply(binascii.hexlify(registers.encode(number, value)))

    def _write_register(self, rest: bytes) -> Reply:
        number_text, value_text = _fields(rest, b"=", 2)
        number = _hex_int(number_text)
        if number >= len(registers.REGISTERS):
            return Reply(_ERROR_ARGUMENT)
        value = registers.decode(number, self._unhex(value_text))
        before = self._state()
        after = _copy(before)
        registers.write_value(after, number, value)
        self._store(before, after)
        return Reply(b"OK")

    @staticmethod
    def _unhex(text: bytes) -> bytes:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            raise PacketError("bad hex data") from None

    # --- memory ----------------------------------------------------------------------

    def _space(self) -> AddressSpace:
        sregs = self.target.run_on_vcpu(self.g_vcpu, lambda v: v.get_sregs())
        return AddressSpace.of(sregs, self.target.memory)

    def _range(self, text: bytes) -> tuple[int, int]:
        address_text, length_text = _fields(text, b",", 2)
        return _hex_int(address_text), _hex_int(length_text)

    def _read_memory(self, rest: bytes) -> Reply:
        address, length = self._range(rest)
        if length > _MAX_MEMORY:
            length = _MAX_MEMORY  # a short read is allowed (§E.2 'm'); gdb asks again
        return Reply(binascii.hexlify(self._space().read(address, length)))

    def _write_memory(self, rest: bytes, *, binary: bool) -> Reply:
        header, data = _fields(rest, b":", 2)
        address, length = self._range(header)
        data = data if binary else self._unhex(data)
        if len(data) != length:
            raise PacketError(f"{length} bytes announced, {len(data)} sent")
        if data:
            self._space().write(address, data)
        return Reply(b"OK")

    # --- breakpoints -----------------------------------------------------------------

    def _breakpoint(self, rest: bytes, *, insert: bool) -> Reply:
        ztype_text, address_text, kind_text = _fields(rest.split(b";", 1)[0], b",", 3)
        ztype, address, kind = _hex_int(ztype_text), _hex_int(address_text), _hex_int(kind_text)
        space = self._space()
        if insert:
            self.breakpoints.insert(ztype, address, kind, space)
        elif not self.breakpoints.remove(ztype, address, kind, space):
            return Reply(_ERROR_ARGUMENT)
        return Reply(b"OK")

    # --- running ---------------------------------------------------------------------

    def _resume(self, rest: bytes, *, step: bool) -> Resume:
        vcpu = self.c_vcpu
        if rest:
            address = _hex_int(rest)
            state = self.target.run_on_vcpu(vcpu, lambda v: v.get_regs())
            state.rip = address
            self.target.run_on_vcpu(vcpu, lambda v: v.set_regs(state))
        return self.resume(vcpu if step else None)

    def _vcont(self, packet: bytes) -> Reply | Resume:
        if packet == b"vCont?":
            return Reply(b"vCont;c;C;s;S;t")
        step: int | None = None
        for action in packet.split(b";")[1:]:
            verb, _, thread = action.partition(b":")
            if verb[:1] not in (b"c", b"C", b"s", b"S", b"t"):
                raise PacketError(f"vCont action {verb[:10]!r}")
            if verb[:1] in (b"C", b"S"):
                _hex_int(verb[1:])  # a signal to deliver: checked, not delivered (no signals in a VM)
            if verb[:1] in (b"s", b"S") and step is None:
                target = self._vcpu_of(thread) if thread else self.c_vcpu
                step = self.c_vcpu if target < 0 else target
        if packet.startswith(b"vCont;t"):
            return Reply(b"OK")  # all-stop: the machine is parked already
        return self.resume(step)

    def resume(self, step_vcpu: int | None) -> Resume:
        """Arm every vCPU's guest debugging for the run that follows."""
        for index in range(self.target.vcpu_count):
            control, debugreg = self.breakpoints.guest_debug(step=index == step_vcpu)
            self.target.set_guest_debug(index, control, debugreg)
        return Resume(step_vcpu)

    def release(self) -> None:
        """gdb leaves: breakpoints out of memory and registers, the guest runs on free."""
        try:
            space = self._space() if self.breakpoints.software else None
            self.breakpoints.clear(space)
            self.resume(None)
        except (VmmError, KvmError) as exc:
            log.warning("gdb: breakpoints not all removed: %s", exc)

    def stop_reply(self, event: DebugEvent) -> bytes:
        """The T (or W) packet for `event` (§E.3); the stopped vCPU becomes current."""
        self.last_stop = event
        if event.reason is StopReason.ENDED:
            return b"W%02x" % (event.exit_status & 0xFF)
        self.g_vcpu = self.c_vcpu = event.vcpu
        signal = SIGINT if event.reason is StopReason.REQUESTED else SIGTRAP
        reply = b"T%02xthread:%x;" % (signal, event.vcpu + 1)
        if event.reason is StopReason.DEBUG_EXIT:
            watch = self.breakpoints.watch_hit(hit_slots(event.dr6))
            if watch is not None:
                kind = b"watch" if watch.access is Access.WRITE else b"awatch"
                reply += b"%s:%x;" % (kind, watch.address)
            elif event.exception == 3:
                reply += b"swbreak:;" if self._client_swbreak else b""
            elif hit_slots(event.dr6) and self._client_hwbreak:
                reply += b"hwbreak:;"
        return reply

    def _target_xml(self, rest: bytes) -> bytes:
        annex, offsets = _fields(rest, b":", 2)
        if annex != b"target.xml":
            return _ERROR_ARGUMENT
        offset, length = self._range(offsets)
        document = registers.target_xml().encode()
        chunk = document[offset : offset + min(length, MAX_PACKET // 2)]
        return (b"l" if offset + len(chunk) >= len(document) else b"m") + chunk


__all__ = ["Action", "Reply", "Resume", "Stub"]
