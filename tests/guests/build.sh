#!/bin/sh
# Builds the pyvmm test guests into OUTDIR (default: <repo>/build/guests):
#   hello.elf mbinfo.elf smp.elf memwalk.elf triple.elf echo.elf pcitest.elf
#   hostile.elf long64.elf
#   realmode.bin pioloop.bin mmioloop.bin
# Usage: tests/guests/build.sh [OUTDIR]
# Idempotent (make only rebuilds what changed). Installs gcc, binutils and
# make from Debian's packages if any of them is missing.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-"$REPO/build/guests"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

missing=""
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
command -v make >/dev/null 2>&1 || missing="$missing make"
for tool in ld ar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing="$missing binutils"
        break
    fi
done

if [ -n "$missing" ]; then
    echo "build.sh: installing:$missing" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "build.sh: need root to apt-get install$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
fi

jobs=$(nproc 2>/dev/null || echo 1)
exec make --no-print-directory -s -C "$HERE" OUT="$OUT" -j"$jobs"
