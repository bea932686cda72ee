"""What the guest boots: loaders that put an image into guest memory and say how
the bootstrap CPU must start (`EntryPoint`). They never touch vCPUs: the arch code
turns an `EntryPoint` into register state."""

from pyvmm.boot.entry import BootImages, CpuMode, EntryPoint, KernelDecompress
from pyvmm.boot.loader import load

__all__ = ["BootImages", "CpuMode", "EntryPoint", "KernelDecompress", "load"]
