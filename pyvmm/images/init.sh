#!/bin/sh
# /init of pyvmm's guest: PID 1, run by busybox sh, from the initramfs or from the
# root disk (there as /sbin/init too). Built into both by `pyvmm images build`
# (pyvmm/images/initramfs.py, rootfs.py).
#
#  1. mounts /proc, /sys, /dev (devtmpfs; on a disk root the kernel has mounted it
#     already, CONFIG_DEVTMPFS_MOUNT), /dev/pts and /tmp (tmpfs);
#  2. loads the kernel modules listed in /etc/pyvmm/modules, in that order
#     (only the stock Debian kernel has any: its virtio drivers are modules);
#  3. starts busybox acpid, so the ACPI power button (pyvmm's Generic Event
#     Device, QMP system_powerdown) powers the guest off cleanly, as the power
#     button does on a distribution; then prints "pyvmm-init: ready";
#  4. with pyvmm.run=COMMAND on the kernel command line (COMMAND percent-encoded,
#     e.g. pyvmm.run=uname%20-r): runs it with `sh -c`, prints
#     "pyvmm-run: exit=STATUS" and powers off;
#     otherwise: an interactive shell with job control on the console (its
#     controlling terminal found by cttyhack), started again when it exits;
#  5. before the power-off (or reboot) the root file system is remounted read-only,
#     so a disk root is left clean, with nothing for its journal to replay.
#
# busybox's poweroff / reboot / halt (without -f) only signal PID 1 (SIGUSR2,
# SIGTERM, SIGUSR1); the traps below turn that into the real thing.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
export PS1='\w # '
MODULE_LIST=/etc/pyvmm/modules

say() {
    echo "pyvmm-init: $*"
}

mount_fs() {  # type mount-point [options]
    mount -t "$1" ${3:+-o "$3"} "$1" "$2" || say "cannot mount $1 on $2"
}

is_mounted() {  # mount-point; needs /proc (Debian's busybox has no mountpoint applet)
    while read -r _ dir _; do
        [ "$dir" = "$1" ] && return 0
    done </proc/mounts
    return 1
}

# Percent-decoding: every %XX becomes \xXX for printf %b; existing backslashes
# are doubled first so that they stay literal.
percent_decode() {
    printf '%b' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/%\([0-9A-Fa-f][0-9A-Fa-f]\)/\\x\1/g')"
}

# A disk root must be clean when the machine goes: the processes are gone by now
# (or still writing, then the remount is refused and sync is all there is).
# On an initramfs root the remount changes nothing and may fail: no message.
settle_root() {
    sync
    mount -o remount,ro / 2>/dev/null
}

end_guest() {  # poweroff | reboot | halt
    trap '' USR1 USR2 TERM
    say "$1"
    kill -TERM -1 2>/dev/null
    settle_root
    "$1" -f
    # Still here: the kernel could not do it. PID 1 must not exit (panic).
    while :; do sleep 3600; done
}

trap 'end_guest poweroff' USR2
trap 'end_guest reboot' TERM
trap 'end_guest halt' USR1

mount_fs proc /proc
mount_fs sysfs /sys
is_mounted /dev || mount_fs devtmpfs /dev mode=0755
mkdir -p /dev/pts /dev/shm
mount_fs devpts /dev/pts
mount_fs tmpfs /tmp mode=1777

if [ -f "$MODULE_LIST" ]; then
    while read -r module; do
        [ -n "$module" ] || continue
        insmod "$module" || say "insmod $module failed"
    done < "$MODULE_LIST"
fi

hostname pyvmm

# The power button: the kernel's ACPI button driver reports KEY_POWER on an input
# device; busybox acpid maps that to the handler path compiled into it,
# /etc/acpi/PWRF/00000080 (relative to its -c directory), and runs it. The
# handler's `poweroff` signals this init (USR2): the clean power-off below.
# Kernels without the button or evdev (the stock guest) have no /dev/input/event*.
start_acpid() {
    [ -e /dev/input/event0 ] || return 0
    mkdir -p /etc/acpi/PWRF
    handler=/etc/acpi/PWRF/00000080
    printf '#!/bin/sh\n# the ACPI power button (pyvmm-init)\nexec poweroff\n' >"$handler"
    chmod 755 "$handler"
    # It daemonizes itself; its log (and the handler's output) goes to the console.
    acpid -c /etc/acpi -l /dev/console || say "cannot start acpid"
}

start_acpid

run=
set -f  # the command line is split into words, never glob-expanded
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyvmm.run=*) run=${word#pyvmm.run=} ;;
    esac
done
set +f

say "Linux $(uname -r), $(nproc) CPU(s)"
say "ready"

if [ -n "$run" ]; then
    command=$(percent_decode "$run")
    sh -c "$command"
    echo "pyvmm-run: exit=$?"
    settle_root
    poweroff -f
    while :; do sleep 3600; done
fi

while :; do
    setsid cttyhack sh -l </dev/console >/dev/console 2>&1 &
    shell=$!
    # `wait` returns early when a trapped signal arrives, so poweroff works
    # while the shell is running; loop until the shell has really gone.
    while kill -0 "$shell" 2>/dev/null; do
        wait "$shell"
    done
    say "shell exited; starting a new one"
done
