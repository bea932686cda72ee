"""CPU models: which of KVM's supported CPUID features a guest is offered.

- `host`: everything KVM_GET_SUPPORTED_CPUID reports (QEMU's `-cpu host`).
- `baseline`: the x86-64 baseline (x86-64-v1: SSE2 and below) as far as vector
  instructions go: SSE3 and later, AVX, AVX2, AVX-512, the crypto and carry-less
  multiply extensions, CMPXCHG16B and POPCNT are hidden, and so is XSAVE (FXSAVE
  remains). Like Firecracker's CPU templates and QEMU's named models, it narrows
  what the guest sees; user code never needs more than the baseline.

`default_model()` picks `host` unless this KVM cannot execute a vector instruction
in guest kernel mode (`host_probe.kernel_vectors_run`): there, every vector
instruction a guest kernel runs (its SIMD crypto and checksums, XSAVE at each
context switch) would exit to pyvmm's emulator, and `baseline` keeps the kernel on
its scalar code. Bits: Intel SDM Vol. 2A, CPUID, Tables 3-10, 3-11 and leaf 07H.
"""

from __future__ import annotations

import enum

from pyvmm.arch.x86.host_probe import kernel_vectors_run
from pyvmm.kvm.x86 import kvm_cpuid_entry2

LEAF_FEATURES, LEAF_STRUCTURED, LEAF_XSAVE = 0x1, 0x7, 0xD


class CpuModel(enum.Enum):
    HOST = "host"
    BASELINE = "baseline"


def _bits(*positions: int) -> int:
    mask = 0
    for position in positions:
        mask |= 1 << position
    return mask


# (leaf, sub-leaf, register) -> the feature bits `baseline` clears.
_BASELINE_HIDDEN: dict[tuple[int, int, str], int] = {
    # SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES XSAVE OSXSAVE AVX F16C
    (LEAF_FEATURES, 0, "ecx"): _bits(0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29),
    # AVX2, AVX512F DQ IFMA CD BW VL, SHA
    (LEAF_STRUCTURED, 0, "ebx"): _bits(5, 16, 17, 21, 28, 29, 30, 31),
    # AVX512_VBMI, AVX512_VBMI2, GFNI, VAES, VPCLMULQDQ, AVX512_VNNI, BITALG, VPOPCNTDQ
    (LEAF_STRUCTURED, 0, "ecx"): _bits(1, 6, 8, 9, 10, 11, 12, 14),
    # AVX512_4VNNIW, AVX512_4FMAPS, AVX512_VP2INTERSECT, AVX512_FP16
    (LEAF_STRUCTURED, 0, "edx"): _bits(2, 3, 8, 23),
    # AVX-VNNI, AVX512_BF16
    (LEAF_STRUCTURED, 1, "eax"): _bits(4, 5),
}


def apply(model: CpuModel, table: list[kvm_cpuid_entry2]) -> list[kvm_cpuid_entry2]:
    """`table` as `model` offers it (entries are changed in place; XSAVE's leaf 0DH
    goes away with XSAVE)."""
    if model is CpuModel.HOST:
        return table
    kept = []
    for entry in table:
        if entry.function == LEAF_XSAVE:
            continue
        for register in ("eax", "ebx", "ecx", "edx"):
            hidden = _BASELINE_HIDDEN.get((entry.function, entry.index, register), 0)
            setattr(entry, register, getattr(entry, register) & ~hidden)
        kept.append(entry)
    return kept


def default_model() -> CpuModel:
    """`host`, or `baseline` where this KVM cannot run vector instructions in guest
    kernel mode."""
    return CpuModel.HOST if kernel_vectors_run() else CpuModel.BASELINE
