#!/usr/bin/env bash
# Install everything pyvmm and its tests need, idempotently:
#   Debian packages (compiler for the test guests), a virtualenv in .venv with
#   pyvmm and its pinned dependencies, and the test guests in build/guests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
for tool in gcc ld make objcopy; do
    command -v "$tool" >/dev/null 2>&1 || need_apt+=(gcc binutils make)
done
[ -f /usr/include/linux/kvm.h ] || need_apt+=(linux-libc-dev)
command -v iasl >/dev/null 2>&1 || need_apt+=(acpica-tools)  # ACPI table tests
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)  # initramfs tests
[ -x /bin/busybox ] || need_apt+=(busybox-static)  # the guest userland
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)  # network namespaces and TAPs in the net tests
command -v gdb >/dev/null 2>&1 || need_apt+=(gdb)  # the gdb stub's tests drive the real gdb
PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4 debugfs e2fsck >/dev/null 2>&1 ||
    need_apt+=(e2fsprogs)  # the guest's root disk (pyvmm images build) and its tests
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp=.venv/.pyvmm-installed-2  # -2: the editable install is a plain path (below)
if [ ! -x .venv/bin/python ]; then
    say "creating the virtualenv .venv"
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing pyvmm and its dependencies into .venv"
    # editable_mode=compat puts the checkout on sys.path through a .pth line; the
    # default mode installs an import hook that costs every `pyvmm` start ~12 ms.
    .venv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]' \
        --config-settings editable_mode=compat
    touch "$stamp"
fi

say "building the test guests (build/guests)"
bash tests/guests/build.sh build/guests
