"""The platform: the PC as a table of rows (`pc.py`), one allocator for ports, MMIO
windows, PCI slots and the irqchip pins' GSIs (`resources.py`), the `DeviceManager`
owning buses, allocator and devices (`device_manager.py`), PCI bus 0 behind its host
bridge (`pci.py`), the virtio devices a configuration asks for and where they go
(`virtio.py`, and `virtio_pci.py` for virtio-pci's doorbells), and QEMU's test
devices (`test_devices.py`). MSI-X routing is the interrupts' (`pyvmm.irq.msix_routing`).
"""
