"""The fragment verifier, on fake .config files, and the fragment we keep."""

from __future__ import annotations

from pyvmm.images import kconfig, kernel

FRAGMENT = """\
# a comment
CONFIG_SMP=y
CONFIG_VIRTIO_BLK=y
CONFIG_NR_CPUS=64
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_VT is not set
CONFIG_SOUND=n
"""

GOOD_CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_SMP=y
CONFIG_VIRTIO_BLK=y
CONFIG_NR_CPUS=64
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_VT is not set
"""

# What the issue asks the default kernel to have (kernel.config must promise each).
REQUIRED = [
    "64BIT", "SMP", "PRINTK", "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "RD_GZIP",
    "BINFMT_ELF", "BINFMT_SCRIPT", "PROC_FS", "SYSFS", "DEVTMPFS", "DEVTMPFS_MOUNT", "TMPFS", "ACPI",
    "PCI", "PCI_MSI", "PVH", "HYPERVISOR_GUEST", "PARAVIRT", "KVM_GUEST", "VIRTIO", "VIRTIO_PCI",
    "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_NET", "NET", "INET",
    "HW_RANDOM", "HW_RANDOM_VIRTIO", "VIRTIO_CONSOLE", "EXT4_FS", "BLOCK", "MULTIUSER", "FUTEX",
    "EPOLL", "SHMEM", "POSIX_TIMERS", "RTC_CLASS", "RTC_DRV_CMOS", "UNIX", "FILE_LOCKING",
    "PRINTK_TIME", "EARLY_PRINTK",
]


def test_a_config_that_honours_the_fragment_passes() -> None:
    assert kconfig.verify(FRAGMENT, GOOD_CONFIG) == []


def test_every_kind_of_mismatch_is_reported_in_fragment_order() -> None:
    config = """\
CONFIG_SMP=y
# CONFIG_VIRTIO_BLK is not set
CONFIG_NR_CPUS=8
CONFIG_CMDLINE=""
CONFIG_VT=y
CONFIG_SOUND=m
"""
    mismatches = kconfig.verify(FRAGMENT, config)
    assert [str(m) for m in mismatches] == [
        "CONFIG_VIRTIO_BLK (wanted y, got n)",
        "CONFIG_NR_CPUS (wanted 64, got 8)",
        'CONFIG_CMDLINE (wanted "console=ttyS0", got "")',
        "CONFIG_VT (wanted n, got y)",
        "CONFIG_SOUND (wanted n, got m)",
    ]


def test_an_option_missing_from_config_counts_as_n() -> None:
    assert [m.option for m in kconfig.verify("CONFIG_PVH=y\n# CONFIG_X is not set\n", "")] == ["CONFIG_PVH"]


def test_later_lines_win_as_in_kconfig() -> None:
    assert kconfig.parse_config("CONFIG_A=y\n# CONFIG_A is not set\n") == {"CONFIG_A": "n"}


def test_lines_that_are_not_options_are_found() -> None:
    text = "CONFIG_A=y\n# plain comment\n\nCONFIG_B y\n# CONFIG_C is unset\nVIRTIO=y\n"
    assert kconfig.bad_fragment_lines(text) == ["CONFIG_B y", "# CONFIG_C is unset", "VIRTIO=y"]


def test_our_fragment_is_well_formed_and_asks_for_what_the_guest_needs() -> None:
    text = kernel.fragment().decode()
    assert kconfig.bad_fragment_lines(text) == []
    options = kconfig.parse_config(text)
    missing = [name for name in REQUIRED if options.get(f"CONFIG_{name}") != "y"]
    assert missing == []
    assert options["CONFIG_RANDOMIZE_BASE"] == "n", "vmlinux symbols must match the running kernel"
