"""The benchmark scripts (benchmarks/*.py) as modules for their tests, loaded by path:
putting benchmarks/ on sys.path would hide the test packages of the same names
(benchmarks/boot.py against tests/boot/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    """benchmarks/NAME.py, once, as module NAME (the scripts import each other by
    name, and dataclasses look their module up in sys.modules)."""
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")) == BENCHMARKS / f"{name}.py":
        return loaded
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
