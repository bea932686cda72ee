"""The layer tree (docs/architecture.md), checked wherever an import stands: at the
top, inside a function, or only for type checking.

The bottom: KVM binding → guest memory → boot → arch. Each imports only from the
layers below it (and `pyvmm.errors`, the one exception hierarchy; the KVM binding not
even that). The one exception: boot reads the guest physical layout
(`pyvmm.arch.x86.layout`, a table that imports nothing).

The middle: devices, virtio, PCI, interrupts and the I/O thread never import the
machine, the platform or a front end (the CLI).

Saved state: `pyvmm.snapshot` (field checks, the tag registry, the codec) is neutral:
it imports nothing of pyvmm but `pyvmm.errors` (the snapshot file's modules also guest
memory), so every layer from arch up may register its states with it, and `devices`
needs neither PCI's nor virtio's states (issue 17)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyvmm"

# (layer, where it lives, the pyvmm modules it may import besides its own)
LAYERS = [
    ("KVM binding", "kvm", ()),
    ("guest memory", "memory.py", ("pyvmm.kvm", "pyvmm.errors")),
    # arch.x86.layout, the table of guest physical addresses, is a leaf (checked below)
    # that the loaders read for where the boot protocols put things.
    ("boot", "boot", ("pyvmm.kvm", "pyvmm.memory", "pyvmm.errors", "pyvmm.arch.x86.layout")),
    # arch's saved vCPU and VM states use the neutral saved-state package (checked below).
    ("arch", "arch", ("pyvmm.kvm", "pyvmm.memory", "pyvmm.boot", "pyvmm.errors", "pyvmm.snapshot")),
]

# Packages below the machine and the platform, and what they must never import.
BELOW_THE_MACHINE = ["devices", "virtio", "pci", "irq", "io"]
ABOVE = ("pyvmm.machine", "pyvmm.platform", "pyvmm.cli")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, package: str) -> list[tuple[int, str]]:
    """The pyvmm modules `source` (a file of `package`) imports, with their line
    numbers; relative imports resolved against `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                name = ".".join([*base, name] if name else base)
            if name == "pyvmm":  # `from pyvmm import machine` imports pyvmm.machine
                found += [(node.lineno, f"pyvmm.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, name))
    return sorted((line, name) for line, name in found if name == "pyvmm" or name.startswith("pyvmm."))


def _file_imports(path: Path) -> list[tuple[int, str]]:
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports(path.read_text(), package)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(("layer", "where", "allowed"), LAYERS, ids=[layer for layer, _, _ in LAYERS])
def test_a_layer_imports_nothing_above_it(layer: str, where: str, allowed: tuple[str, ...]) -> None:
    root = PACKAGE / where
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    own = "pyvmm." + where.removesuffix(".py")
    assert files
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in files
        for line, name in _file_imports(path)
        if not any(_within(name, prefix) for prefix in (own, *allowed))
    ]
    assert upward == [], f"{layer} imports from above it"


def _forbidden_imports(
    where: str,
    forbidden: tuple[str, ...],
    allowed: tuple[str, ...] = (),
    exceptions: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Each import in package `where` of a module within `forbidden` and not within
    `allowed` (nor within what `exceptions` allows the file of that name)."""
    files = sorted((PACKAGE / where).rglob("*.py"))
    assert files
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in files
        for line, name in _file_imports(path)
        if any(_within(name, prefix) for prefix in forbidden)
        and not any(_within(name, prefix) for prefix in (*allowed, *(exceptions or {}).get(path.name, ())))
    ]


@pytest.mark.parametrize("where", BELOW_THE_MACHINE)
def test_a_lower_layer_never_imports_the_machine_the_platform_or_a_front_end(where: str) -> None:
    upward = _forbidden_imports(where, ABOVE)
    assert upward == [], f"pyvmm/{where} imports the machine, the platform or a front end"


# A package, the pyvmm packages it must not import, what it may import of them, and
# the files that may import more.
APART: list[tuple[str, tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]] = [
    # The saved-state half (checks, registry, codec) imports nothing of pyvmm but the
    # errors; the snapshot file's half reads and maps guest memory, the layer below arch.
    (
        "snapshot",
        ("pyvmm",),
        ("pyvmm.snapshot", "pyvmm.errors"),
        {"file.py": ("pyvmm.memory",), "memory_image.py": ("pyvmm.memory",)},
    ),
    # QEMU's pci-testdev is a PCI function: its model builds on pyvmm.pci's PciFunction
    # (its state names no PCI class: the function checks its own part).
    ("devices", ("pyvmm.pci", "pyvmm.virtio"), (), {"pci_testdev.py": ("pyvmm.pci",)}),
]


@pytest.mark.parametrize(("where", "forbidden", "allowed", "exceptions"), APART, ids=[a[0] for a in APART])
def test_a_package_keeps_apart_from_what_it_must_not_know(
    where: str, forbidden: tuple[str, ...], allowed: tuple[str, ...], exceptions: dict[str, tuple[str, ...]]
) -> None:
    found = _forbidden_imports(where, forbidden, allowed, exceptions)
    assert found == [], f"pyvmm/{where} imports what it must not"


def test_the_layout_table_is_a_leaf() -> None:
    assert _file_imports(PACKAGE / "arch" / "x86" / "layout.py") == []


def test_the_check_sees_an_import_anywhere_in_a_file() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import pyvmm.machine\n"
        "def f():\n"
        "    from pyvmm.devices.power import RESET_PORT\n"
        "from ..layout import MMIO_HOLE_START\n"
        "from . import sdt\n"
    )
    assert _imports(source, "pyvmm.arch.x86.acpi") == [
        (3, "pyvmm.machine"),
        (5, "pyvmm.devices.power"),
        (6, "pyvmm.arch.x86.layout"),
        (7, "pyvmm.arch.x86.acpi"),
    ]


def test_the_check_sees_a_module_imported_from_the_package() -> None:
    source = "from pyvmm import machine\nfrom .. import platform, cli\n"
    assert _imports(source, "pyvmm.devices") == [
        (1, "pyvmm.machine"),
        (2, "pyvmm.cli"),
        (2, "pyvmm.platform"),
    ]
