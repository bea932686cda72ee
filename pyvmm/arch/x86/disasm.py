"""Disassembly for reports (what instruction stopped the guest), with iced-x86."""

from __future__ import annotations

from iced_x86 import Decoder, DecoderOptions, Formatter, FormatterSyntax

_formatter = Formatter(FormatterSyntax.INTEL)


def disassemble(code: bytes, address: int, bitness: int) -> str:
    """The first instruction of `code` in Intel syntax, or a note that it is invalid."""
    decoder = Decoder(bitness, code, DecoderOptions.NONE, ip=address)
    instruction = decoder.decode()
    if instruction.is_invalid:
        return "not a valid instruction"
    return str(_formatter.format(instruction))
