#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first), then the linters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check pyvmm tests benchmarks
.venv/bin/mypy
