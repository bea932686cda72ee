"""The error the ACPI table code raises."""

from pyvmm.errors import ConfigError


class AcpiError(ConfigError):
    """ACPI tables cannot be built as asked: a malformed AML name, string or value, or
    more vCPUs than the table area holds."""
