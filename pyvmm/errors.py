"""The one exception hierarchy of pyvmm.

Every error a user can cause (bad flags, a broken image, a missing /dev/kvm) or a
guest can cause (an address outside RAM, a malformed request) is a `VmmError`; the
CLI turns any of them into a single line on stderr. Errors from the KVM binding are
`pyvmm.kvm.KvmError`, kept separate because the binding imports nothing of ours.
"""


class VmmError(Exception):
    """Base of every error pyvmm raises on purpose."""


class ConfigError(VmmError):
    """The user asked for something impossible (bad size, too many vCPUs...)."""


class ImageError(VmmError):
    """A kernel, initrd or other boot image is missing, unreadable or malformed."""


class GuestMemoryError(VmmError):
    """A guest physical address range is not (entirely) backed by RAM."""

    def __init__(self, gpa: int, length: int, reason: str = "outside guest RAM") -> None:
        super().__init__(f"guest physical range {gpa:#x}+{length:#x} {reason}")
        self.gpa = gpa
        self.length = length


class GuestError(VmmError):
    """The guest did something that stops it (e.g. an emulation failure)."""


class StateError(VmmError):
    """A saved device state cannot be restored: a field has the wrong type, is out of
    range or disagrees with another (saved state is untrusted input), or the device
    cannot save or restore its state at all."""


class LifecycleError(VmmError):
    """A lifecycle request the machine's state does not allow (pausing a stopped VM,
    resuming one that runs), or one that did not complete in time."""
