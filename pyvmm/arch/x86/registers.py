"""Control-register, EFER and RFLAGS bits, named once for the entry setup and the
emulator (Intel SDM Vol. 3A
§2.5 control registers, §2.2.1 IA32_EFER, Vol. 1 §3.4.3 EFLAGS).

They are `IntEnum`s, not `IntFlag`s: the emulator tests them several times per
instruction, and `IntFlag` arithmetic goes through the enum machinery on every `&`
and `|` (about a microsecond each), where an `IntEnum` member is a plain int to them."""

from __future__ import annotations

import enum


class Cr0(enum.IntEnum):
    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16
    AM = 1 << 18
    PG = 1 << 31


class Cr4(enum.IntEnum):
    VME = 1 << 0
    PSE = 1 << 4
    PAE = 1 << 5
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    LA57 = 1 << 12
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    PKS = 1 << 24


class Efer(enum.IntEnum):
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11


class Rflags(enum.IntEnum):
    CF = 1 << 0
    FIXED = 1 << 1
    PF = 1 << 2
    AF = 1 << 4
    ZF = 1 << 6
    SF = 1 << 7
    TF = 1 << 8
    IF = 1 << 9
    DF = 1 << 10
    OF = 1 << 11
    IOPL = 3 << 12
    NT = 1 << 14
    RF = 1 << 16
    VM = 1 << 17
    AC = 1 << 18


# The six status flags (SDM Vol. 1 §3.4.3.1).
STATUS_FLAGS = Rflags.CF | Rflags.PF | Rflags.AF | Rflags.ZF | Rflags.SF | Rflags.OF

XCR0_X87 = 1 << 0
XCR0_SSE = 1 << 1
XCR0_AVX = 1 << 2
XCR0_AVX512 = 0xE0  # opmask, ZMM_Hi256, Hi16_ZMM (SDM Vol. 1 §13.1)
