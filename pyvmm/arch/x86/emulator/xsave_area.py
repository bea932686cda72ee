"""The XSAVE area: its legacy region, header and extended region (Intel SDM Vol. 1
§13.4), where each state component lives in the standard and compacted formats, and
the vector registers as they sit in KVM's copy of the vCPU's area (standard format,
KVM_GET_XSAVE / KVM_GET_XSAVE2).

Offsets and sizes of the extended components come from CPUID leaf 0DH (§13.2): they
differ between processors (e.g. opmask state is at 0x440 on Intel, 0x340 on AMD).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.kvm.x86 import kvm_cpuid_entry2

# Legacy region (SDM Vol. 1 Table 13-1) and header (§13.4.2).
FCW = 0
FSW = 2
FTW = 4
FOP = 6
FIP = 8
FCS = 12
FDP = 16
FDS = 20
MXCSR = 24
MXCSR_MASK = 28
ST0 = 32
XMM0 = 160
LEGACY_SIZE = 512
XSTATE_BV = 512
XCOMP_BV = 520
HEADER_SIZE = 64
EXTENDED = LEGACY_SIZE + HEADER_SIZE
XCOMP_BV_COMPACTED = 1 << 63

X87 = 0
SSE = 1
AVX = 2
OPMASK = 5
ZMM_HI256 = 6
HI16_ZMM = 7

X87_FCW_INIT = 0x037F
MXCSR_INIT = 0x1F80
MXCSR_MASK_DEFAULT = 0xFFBF  # SDM Vol. 1 §11.6.6 when the saved MXCSR_MASK is 0

CPUID_XSAVE_LEAF = 0xD

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Component:
    """State component `index` >= 2: CPUID.(EAX=0DH,ECX=index)."""

    index: int
    size: int
    offset: int  # in the standard format
    align64: bool  # ECX[1]: 64-byte aligned in the compacted format


@dataclass(frozen=True)
class XsaveLayout:
    """Where the extended state components are, for this CPU."""

    components: dict[int, Component] = field(default_factory=dict)

    @classmethod
    def from_cpuid(cls, entries: Iterable[kvm_cpuid_entry2]) -> XsaveLayout:
        components = {}
        for entry in entries:
            if entry.function == CPUID_XSAVE_LEAF and entry.index >= 2 and entry.eax:
                components[entry.index] = Component(entry.index, entry.eax, entry.ebx, bool(entry.ecx & 2))
        return cls(components)

    @classmethod
    def typical(cls) -> XsaveLayout:
        """x87, SSE and AVX at the offsets every processor with AVX uses (tests)."""
        return cls({AVX: Component(AVX, 256, 576, False)})

    @property
    def supported(self) -> int:
        """The state-component bitmap this layout can hold (x87 and SSE always)."""
        mask = (1 << X87) | (1 << SSE)
        for index in self.components:
            mask |= 1 << index
        return mask

    def component(self, index: int) -> Component:
        """Component `index`; one KVM did not describe (XCR0 enables state that CPUID
        leaf 0DH does not place) cannot be emulated, it is no reason to crash."""
        try:
            return self.components[index]
        except KeyError:
            raise NotCovered(f"XSAVE state component {index} missing from KVM's XSAVE layout") from None

    def standard_size(self, bitmap: int) -> int:
        """Bytes an XSAVE area needs in the standard format for components `bitmap`."""
        end = EXTENDED
        for index, component in self.components.items():
            if bitmap >> index & 1:
                end = max(end, component.offset + component.size)
        return end

    def compacted_offsets(self, bitmap: int) -> dict[int, int]:
        """§13.4.3: components of `bitmap` (>= 2) in index order from byte 576, each
        64-byte aligned when CPUID says so."""
        offsets = {}
        location = EXTENDED
        for index in sorted(self.components):
            if not bitmap >> index & 1:
                continue
            component = self.components[index]
            if component.align64:
                location = (location + 63) & ~63
            offsets[index] = location
            location += component.size
        return offsets

    def compacted_size(self, bitmap: int) -> int:
        offsets = self.compacted_offsets(bitmap)
        if not offsets:
            return EXTENDED
        last = max(offsets)
        return offsets[last] + self.components[last].size


def u16(area: bytes | bytearray, offset: int) -> int:
    return int(_U16.unpack_from(area, offset)[0])


def u32(area: bytes | bytearray, offset: int) -> int:
    return int(_U32.unpack_from(area, offset)[0])


def u64(area: bytes | bytearray, offset: int) -> int:
    return int(_U64.unpack_from(area, offset)[0])


def put_u32(area: bytearray, offset: int, value: int) -> None:
    _U32.pack_into(area, offset, value & 0xFFFF_FFFF)


def put_u64(area: bytearray, offset: int, value: int) -> None:
    _U64.pack_into(area, offset, value & 0xFFFF_FFFF_FFFF_FFFF)


def in_use(area: bytes | bytearray) -> int:
    """XSTATE_BV of KVM's copy: bit i clear means component i is in its initial
    configuration (KVM's buffer then holds the initial values); this stands for the
    processor's XINUSE (§13.6)."""
    return u64(area, XSTATE_BV)


def mark_in_use(area: bytearray, bitmap: int) -> None:
    put_u64(area, XSTATE_BV, in_use(area) | bitmap)


def mxcsr_mask(area: bytes | bytearray) -> int:
    """The MXCSR bits software may set (SDM Vol. 1 §11.6.6)."""
    return u32(area, MXCSR_MASK) or MXCSR_MASK_DEFAULT


def xmm(area: bytes | bytearray, number: int) -> bytes:
    if not in_use(area) >> SSE & 1:
        return bytes(16)
    return bytes(area[XMM0 + 16 * number : XMM0 + 16 * number + 16])


def set_xmm(area: bytearray, number: int, value: bytes) -> None:
    _materialize(area, SSE)
    area[XMM0 + 16 * number : XMM0 + 16 * number + 16] = value
    mark_in_use(area, 1 << SSE)


def ymm_high(area: bytes | bytearray, layout: XsaveLayout, number: int) -> bytes:
    component = layout.components.get(AVX)
    if component is None or not in_use(area) >> AVX & 1:
        return bytes(16)
    start = component.offset + 16 * number
    return bytes(area[start : start + 16])


def set_ymm_high(area: bytearray, layout: XsaveLayout, number: int, value: bytes) -> None:
    component = layout.component(AVX)
    _materialize(area, AVX, layout)
    start = component.offset + 16 * number
    area[start : start + 16] = value
    mark_in_use(area, 1 << AVX)


def clear_above_128(area: bytearray, layout: XsaveLayout, number: int) -> None:
    """A VEX.128 write zeroes bits 255:128 and, with AVX-512, 511:256 of the register
    (SDM Vol. 1 §14.1.2, Vol. 2A §2.3.10)."""
    if AVX in layout.components and in_use(area) >> AVX & 1:
        set_ymm_high(area, layout, number, bytes(16))
    clear_above_256(area, layout, number)


def clear_above_256(area: bytearray, layout: XsaveLayout, number: int) -> None:
    component = layout.components.get(ZMM_HI256)
    if component is not None and number < 16 and in_use(area) >> ZMM_HI256 & 1:
        start = component.offset + 32 * number
        area[start : start + 32] = bytes(32)


def _materialize(area: bytearray, index: int, layout: XsaveLayout | None = None) -> None:
    """Before a component not in use gets a value: make its bytes its initial values
    (KVM normally already has them there; this makes sure)."""
    if in_use(area) >> index & 1:
        return
    if index == SSE:
        area[XMM0 : XMM0 + 256] = bytes(256)
    elif layout is not None and index in layout.components:
        component = layout.components[index]
        area[component.offset : component.offset + component.size] = bytes(component.size)
