#!/bin/bash
# Runs every test guest under QEMU TCG (software emulation, no KVM) and
# checks what it prints and how it ends, independently of pyvmm.
# Usage: tests/guests/qemu-check.sh [OUTDIR]     (default <repo>/build/guests)
#
# Differences from pyvmm, all expected:
#  - QEMU does not power off on SLP_TYP=5, so for hello the check is the
#    output plus QEMU's trace of the 16-bit write of 0x3400 to port 0x604.
#  - QEMU's -kernel cannot start an ELF64 in long mode: long64 is started
#    through qemu/long64-shim.c, which sets up the pyvmm entry state.
#  - Flat binaries are wrapped into a boot sector image (SeaBIOS loads it
#    at 0x7C00 and jumps to 0000:7C00).
# QEMU exits with (v << 1) | 1 for a debug-exit write of v, like pyvmm.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-"$REPO/build/guests"}

"$HERE/build.sh" "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
make --no-print-directory -s -C "$HERE" OUT="$OUT" qemu-shim || exit 1

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "qemu-check.sh: qemu-system-x86 is not installed" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 || exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# qemu NAME SECONDS ARGS... : runs QEMU, serial output to $TMP/NAME.out,
# exit status in $status.
qemu() {
    local name=$1 secs=$2
    shift 2
    timeout "$secs" qemu-system-x86_64 -nodefaults -display none -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -serial "file:$TMP/$name.out" "$@" </dev/null >"$TMP/$name.qemu" 2>&1
    status=$?
}

# expect NAME STATUS LINE... : the exit status and the exact output lines.
expect() {
    local name=$1 want_status=$2
    shift 2
    local want
    want=$(printf '%s\n' "$@")
    if [ "$status" != "$want_status" ]; then
        bad "$name" "exit status $status, want $want_status"
    elif [ "$(cat "$TMP/$name.out")" != "$want" ]; then
        bad "$name" "output differs:"
        diff <(echo "$want") "$TMP/$name.out" | sed 's/^/    /'
    else
        ok "$name"
    fi
}

# has NAME REGEX... : every extended regex matches a whole output line.
has() {
    local name=$1 re
    shift
    for re in "$@"; do
        if ! grep -Eqx -- "$re" "$TMP/$name.out"; then
            bad "$name" "no line matching /$re/"
            sed 's/^/    /' "$TMP/$name.out"
            return 1
        fi
    done
    return 0
}

bootsector() { # BIN IMG
    python3 - "$1" "$2" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
assert len(data) <= 510, "too big for a boot sector"
open(sys.argv[2], "wb").write(data + bytes(510 - len(data)) + b"\x55\xaa")
EOF
}

# hello: greeting, "bye", then the power-off write.
qemu hello 5 -kernel "$OUT/hello.elf" \
    -trace "memory_region_ops_write,file=$TMP/hello.trace"
if [ "$(cat "$TMP/hello.out")" != "$(printf 'Hello from the pyvmm demo guest!\nbye')" ]; then
    bad hello "output: $(cat "$TMP/hello.out")"
elif ! grep -q "addr 0x604 value 0x3400 size 2" "$TMP/hello.trace"; then
    bad hello "no 16-bit write of 0x3400 to port 0x604"
else
    ok hello
fi

# mbinfo with a command line and two modules; exit=3 -> status 7.
printf 'Hello module data 0123456789' >"$TMP/mod0.bin"
printf '\001\002\003' >"$TMP/mod1.bin"
qemu mbinfo 30 -m 128 -kernel "$OUT/mbinfo.elf" -append "exit=3 foo=bar" \
    -initrd "$TMP/mod0.bin arg1,$TMP/mod1.bin"
if [ "$status" != 7 ]; then
    bad mbinfo "exit status $status, want 7"
elif has mbinfo 'magic=0x2badb002' 'mbi=0x[0-9a-f]+' 'flags=0x[0-9a-f]+' \
    'mem_lower=639' 'mem_upper=[0-9]+' "cmdline=$OUT/mbinfo.elf exit=3 foo=bar" \
    'mmap base=0x100000 len=0x[0-9a-f]+ type=1' 'mods_count=2' \
    "mod0 start=0x[0-9a-f]+000 end=0x[0-9a-f]+ string=$TMP/mod0.bin arg1 head=48656c6c6f206d6f64756c6520646174" \
    "mod1 start=0x[0-9a-f]+000 end=0x[0-9a-f]+ string=$TMP/mod1.bin head=010203" \
    'kernel_start=0x100000' 'mbi_overlaps_kernel=0' 'exit_code=3'; then
    if [ "$(tail -n 1 "$TMP/mbinfo.out")" = end ]; then ok mbinfo; else bad mbinfo "last line is not end"; fi
fi
qemu mbinfo-default 30 -kernel "$OUT/mbinfo.elf"
if [ "$status" = 1 ] && has mbinfo-default 'mods_count=0' 'exit_code=0' 'end'; then
    ok mbinfo-default
else
    bad mbinfo-default "exit status $status, want 1"
fi

# smp: every CPU reports, then debug exit 0 -> status 1.
for n in 1 2 4; do
    qemu "smp$n" 120 -smp "$n" -kernel "$OUT/smp.elf"
    if [ "$status" != 1 ]; then
        bad "smp$n" "exit status $status, want 1"; sed 's/^/    /' "$TMP/smp$n.out"; continue
    fi
    lines=$(grep -cE '^cpu [0-9]+ online apic_id=[0-9]+$' "$TMP/smp$n.out")
    first=$(head -n 1 "$TMP/smp$n.out")
    last=$(tail -n 1 "$TMP/smp$n.out")
    if [ "$lines" = "$n" ] && [[ $first =~ ^cpu\ 0\ online\ apic_id= ]] &&
        [ "$last" = "all $n cpus online" ]; then
        ok "smp$n"
    else
        bad "smp$n" "unexpected output"; sed 's/^/    /' "$TMP/smp$n.out"
    fi
done

# memwalk over 64 MiB: ok -> status 1.
qemu memwalk 120 -m 64 -kernel "$OUT/memwalk.elf"
if [ "$status" = 1 ] && has memwalk \
    'memwalk pages=[0-9]+ bytes=[0-9]+ top=0x3fe0000' 'memwalk ok'; then
    ok memwalk
else
    bad memwalk "exit status $status, want 1"
fi

# triple: QEMU with -no-reboot stops (status 0) on the triple fault.
qemu triple 30 -kernel "$OUT/triple.elf" -d cpu_reset,int -D "$TMP/triple.log"
if [ "$status" = 0 ] && [ "$(cat "$TMP/triple.out")" = "about to triple fault" ] &&
    grep -q "Triple fault" "$TMP/triple.log"; then
    ok triple
else
    bad triple "exit status $status, output: $(cat "$TMP/triple.out")"
fi

# long64 through the shim: exit=5 -> status 11.
qemu long64 30 -m 128 -kernel "$OUT/qemu/long64-shim.elf" \
    -initrd "$OUT/long64.elf" -append "exit=5 hello there"
if [ "$status" = 11 ] && has long64 'hello from long mode' 'cs=0x10' \
    'efer=0x[0-9a-f]*5[0-9a-f]{2}' 'cr0=0x8[0-9a-f]{7} cr4=0x[0-9a-f]+' \
    'cmdline=exit=5 hello there' 'e820 addr=0x0 size=0x9fc00 type=1' \
    'e820 addr=0x100000 size=0x[0-9a-f]+ type=1' 'exit_code=5'; then
    ok long64
else
    bad long64 "exit status $status, want 11"
fi

# realmode: status (0x2a << 1) | 1 = 85.
bootsector "$OUT/realmode.bin" "$TMP/realmode.img"
qemu realmode 30 -drive "format=raw,file=$TMP/realmode.img,if=ide"
expect realmode 85 "hello from real mode"

# pioloop: keeps writing port 0xf0.
bootsector "$OUT/pioloop.bin" "$TMP/pioloop.img"
qemu pioloop 4 -drive "format=raw,file=$TMP/pioloop.img,if=ide" \
    -trace "memory_region_ops_write,file=$TMP/pioloop.trace"
writes=$(grep -c "addr 0xf0 value" "$TMP/pioloop.trace")
if [ "$status" = 124 ] && [ "$writes" -gt 10000 ]; then
    ok "pioloop ($writes writes to port 0xf0 in 4 s)"
else
    bad pioloop "status $status, $writes writes to port 0xf0"
fi

# mmioloop: after a while the CPU is in protected mode, in the store loop
# with EBX = 0xd0000000.
bootsector "$OUT/mmioloop.bin" "$TMP/mmioloop.img"
(sleep 3; echo "info registers"; sleep 1; echo quit) |
    timeout 20 qemu-system-x86_64 -nodefaults -display none -no-reboot \
        -drive "format=raw,file=$TMP/mmioloop.img,if=ide" -monitor stdio \
        >"$TMP/mmioloop.regs" 2>&1
if grep -q "EBX=d0000000" "$TMP/mmioloop.regs" &&
    grep -Eq "^CR0=[0-9a-f]*[13579bdf] " "$TMP/mmioloop.regs" &&
    grep -q "^CS =0008 00000000 ffffffff" "$TMP/mmioloop.regs"; then
    ok mmioloop
else
    bad mmioloop "unexpected CPU state"; grep -E "^(EAX|EIP|CS|CR0)" "$TMP/mmioloop.regs" | sed 's/^/    /'
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
