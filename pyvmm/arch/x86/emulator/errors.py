"""Errors of the instruction emulator that stop the guest (as opposed to faults that
the emulator delivers to the guest, `faults.InjectFault`)."""

from __future__ import annotations

from pyvmm.errors import GuestError


class EmulatorError(GuestError):
    """The emulator cannot go on with this instruction; the guest must stop."""


class UnsupportedInstruction(EmulatorError):  # noqa: N818 - the name the exit loop expects
    """An instruction (or an operand, or a CPU mode) the emulator does not cover.

    The message names everything needed to add it: the bytes in hex, the Intel-syntax
    disassembly, RIP, the CPU mode and why it was refused.
    """

    def __init__(self, code: bytes, disassembly: str, rip: int, mode: str, reason: str) -> None:
        self.code = code
        self.disassembly = disassembly
        self.rip = rip
        self.mode = mode
        self.reason = reason
        super().__init__(
            f"cannot emulate {disassembly or 'an instruction'} "
            f"(bytes {code.hex(' ') or 'none'}) at RIP {rip:#x} in {mode}: {reason}"
        )


class NotCovered(Exception):  # noqa: N818 - a signal inside the emulator, not an error
    """Raised inside the emulator where something is not covered; `Emulator` turns it
    into `UnsupportedInstruction` with the instruction's bytes, disassembly and RIP."""
