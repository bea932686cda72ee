#!/bin/sh
# Builds the benchmarks' guest programs as static executables (the benchmark guest's
# userland is busybox alone, no libc):
#     sh benchmarks/guest_tools/build.sh [OUTDIR]     (default: build/benchmarks)
# benchmarks/virtio_blk.py runs it when a program is missing or older than its source.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/benchmarks}
mkdir -p "$out"
for source in "$here"/*.c; do
    name=$(basename "$source" .c)
    ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -Werror -static -s -o "$out/$name" "$source"
done
