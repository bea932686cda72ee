"""The instruction to emulate: its bytes (from KVM's exit, or fetched from guest
memory at CS.base + RIP through the page tables, as an instruction fetch) decoded
with iced-x86 for the vCPU's current code size."""

from __future__ import annotations

from iced_x86 import Decoder, DecoderError, Instruction

from pyvmm.arch.x86.emulator.cpu_state import CpuState
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import gp, ud
from pyvmm.arch.x86.emulator.mmu import Mmu
from pyvmm.arch.x86.emulator.pagewalk import PAGE_SIZE, AccessKind
from pyvmm.arch.x86.emulator.segmentation import code_linear_address

MAX_INSTRUCTION_LENGTH = 15  # SDM Vol. 2A §2.3.11


def decode(code: bytes, bitness: int, ip: int) -> tuple[Instruction, int]:
    """The first instruction of `code` and iced's decoder error (NONE when valid)."""
    decoder = Decoder(bitness, code, ip=ip)
    instruction = decoder.decode()
    return instruction, int(decoder.last_error)


def instruction_pointer(state: CpuState) -> int:
    return state.rip if state.bitness == 64 else state.rip & 0xFFFF_FFFF


def fetch_bytes(state: CpuState, mmu: Mmu, size: int, skip: int = 0) -> bytes:
    """`size` instruction bytes from CS.base + RIP + `skip`, read as instruction fetches."""
    linear = code_linear_address(state) + skip
    span = mmu.span(linear, size, AccessKind.FETCH)
    if not span.in_ram:
        raise NotCovered("instruction fetch from outside guest RAM")
    return span.read()


def fetch_and_decode(state: CpuState, mmu: Mmu, given: bytes | None) -> tuple[bytes, Instruction]:
    """Decode `given` (KVM's copy of the instruction bytes) or, when absent or too
    short, fetch from guest memory: first up to the end of the page, then, only if the
    instruction goes on, from the next page (which may fault there, as the processor
    would). An undecodable instruction is #UD; one longer than 15 bytes is #GP(0)."""
    bitness = state.bitness
    ip = instruction_pointer(state)
    if given:
        instruction, error = decode(given, bitness, ip)
        if error != DecoderError.NO_MORE_BYTES:
            if error != DecoderError.NONE:
                raise ud()
            return bytes(given[: instruction.len]), instruction
    first = min(MAX_INSTRUCTION_LENGTH, PAGE_SIZE - (code_linear_address(state) & (PAGE_SIZE - 1)))
    code = fetch_bytes(state, mmu, first)
    instruction, error = decode(code, bitness, ip)
    if error == DecoderError.NO_MORE_BYTES and first < MAX_INSTRUCTION_LENGTH:
        code += fetch_bytes(state, mmu, MAX_INSTRUCTION_LENGTH - first, first)
        instruction, error = decode(code, bitness, ip)
    if error == DecoderError.NO_MORE_BYTES:
        raise gp(0)
    if error != DecoderError.NONE:
        raise ud()
    return code[: instruction.len], instruction
