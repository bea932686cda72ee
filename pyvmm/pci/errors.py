"""The error pyvmm's PCI layer raises: a device or platform set up impossibly (a BAR
size that is not a power of two, a slot taken twice, capabilities that do not fit).
Guest accesses never raise: they get the defined behaviour each module documents."""

from pyvmm.errors import ConfigError


class PciError(ConfigError):
    """A PCI device, BAR, capability or bus was configured in a way PCI cannot express."""
