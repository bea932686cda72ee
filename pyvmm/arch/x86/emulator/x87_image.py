"""The x87 and SSE part of the legacy region shared by FXSAVE/FXRSTOR and the XSAVE
family (Intel SDM Vol. 1 §10.5.1 and §13.5.1-13.5.2), converted between KVM's copy
(always the 64-bit format: FPU IP and DP as 64-bit offsets, as the host saves it) and
the guest's format (the 32-bit format, without REX.W, has FCS/FDS selectors).

FCS and FDS: KVM's copy has no room for them. The 32-bit format is written with
FCS = FDS = 0, as processors that deprecate those fields do (CPUID.(EAX=07H,ECX=0):
EBX[13]); on a restore they are dropped.
"""

from __future__ import annotations

import struct

from pyvmm.arch.x86.emulator.xsave_area import (
    FCS,
    FDP,
    FDS,
    FIP,
    FTW,
    MXCSR,
    SSE,
    X87,
    X87_FCW_INIT,
    XMM0,
    in_use,
    u32,
    u64,
)

X87_RANGES = ((0, 24), (32, 160))  # bytes 23:0 and 159:32 (SDM Vol. 1 §13.4.1)
MXCSR_RANGE = (24, 32)  # MXCSR and MXCSR_MASK


def x87_bytes(kvm_area: bytes | bytearray, *, rex_w: bool) -> bytes:
    """Bytes 0..159 of the legacy region holding the x87 state (bytes 24..31 are left
    as in KVM's copy: MXCSR is not x87 state)."""
    image = bytearray(kvm_area[0:160])
    if not in_use(kvm_area) >> X87 & 1:
        image[0:24] = bytes(24)
        image[32:160] = bytes(128)
        struct.pack_into("<H", image, 0, X87_FCW_INIT)
    if not rex_w:
        fip, fdp = u64(image, FIP) & 0xFFFF_FFFF, u64(image, FDP) & 0xFFFF_FFFF
        struct.pack_into("<IHH", image, FIP, fip, 0, 0)
        struct.pack_into("<IHH", image, FDP, fdp, 0, 0)
    return bytes(image)


def load_x87(kvm_area: bytearray, image: bytes | bytearray, *, rex_w: bool) -> None:
    """Put the x87 bytes of a guest image (bytes 0..23 and 32..159) into KVM's copy."""
    kvm_area[0:24] = image[0:24]
    kvm_area[32:160] = image[32:160]
    kvm_area[FTW + 1] = 0  # reserved byte next to the abridged tag word
    if not rex_w:
        struct.pack_into("<Q", kvm_area, FIP, u32(image, FIP))
        struct.pack_into("<Q", kvm_area, FDP, u32(image, FDP))
    _ = (FCS, FDS)  # offsets of the selectors a 32-bit image carries; dropped


def xmm_bytes(kvm_area: bytes | bytearray, count: int) -> bytes:
    """XMM0..XMM(count-1) as stored at bytes 160.. of the legacy region."""
    if not in_use(kvm_area) >> SSE & 1:
        return bytes(16 * count)
    return bytes(kvm_area[XMM0 : XMM0 + 16 * count])


def mxcsr(kvm_area: bytes | bytearray) -> int:
    return u32(kvm_area, MXCSR)
