"""`pyvmm` on the command line. Every error becomes one line on stderr and a non-zero
exit status; the guest's own end becomes the exit status (see `pyvmm.outcome`)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, TypeVar

from pyvmm import __version__
from pyvmm.api.address import QmpAddress, parse_address
from pyvmm.cli.console import STDIN, PipedInput, TerminalConsole, stdin_is_open, write_all
from pyvmm.cli.signals import stop_on_signals
from pyvmm.config import (
    DEFAULT_MEMORY,
    MAX_CPUS,
    MachineConfig,
    check_cpus,
    check_memory,
    check_path,
    check_timeout,
)
from pyvmm.device_config import CONSOLES, TEST_DEVICES, TRANSPORTS, DiskConfig, NetConfig
from pyvmm.errors import ConfigError, VmmError
from pyvmm.images import DEFAULT, STOCK
from pyvmm.images.cli import add_images_command
from pyvmm.kvm import KvmError
from pyvmm.machine import Machine, RunResult
from pyvmm.machine.console_stream import ConsoleStream
from pyvmm.outcome import ExitKind, GuestExit

if TYPE_CHECKING:
    from pyvmm.api.machine_control import MachineControl
    from pyvmm.api.qmp import QmpServer
    from pyvmm.gdb.machine_target import MachineTarget
    from pyvmm.gdb.server import GdbServer
    from pyvmm.snapshot.progress import SnapshotProgress

STATUS_USAGE = 2
STATUS_FAILURE = 1
LINUX_CMDLINE = "console=ttyS0"  # pyvmm's own guest: its console is COM1
ROOTS = ("disk", "initramfs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "pyvmm: error:" like every other error; the help hint names the subcommand.
        self.exit(STATUS_USAGE, f"pyvmm: error: {message} (see {self.prog} --help)\n")


# Argument types: the text is read here, the value is checked by MachineConfig's own
# check for the field (pyvmm.config), so both refuse the same values in the same words.
_T = TypeVar("_T")
_V = TypeVar("_V")


def _checked(check: Callable[[_V], _T], value: _V) -> _T:
    try:
        return check(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _disk(text: str) -> DiskConfig:
    return _checked(DiskConfig.parse, text)


def _net(text: str) -> NetConfig:
    return _checked(NetConfig.parse, text)


def _cpus(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    return _checked(check_cpus, number)


def _memory(text: str) -> int:
    return _checked(check_memory, text)


def _file(text: str) -> str:
    _checked(check_path, text)
    return text


def _incoming(text: str) -> str:
    """`file:PATH`, the one migration URI pyvmm takes (QEMU's `-incoming file:PATH`)."""
    scheme, _, path = text.partition(":")
    if scheme != "file" or not path:
        raise argparse.ArgumentTypeError(f"expected file:PATH, got {text!r}")
    return path


def _qmp_address(text: str) -> QmpAddress:
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gdb_address(text: str) -> str:
    """Checked now, parsed where the server starts (the stub loads only with --gdb)."""
    from pyvmm.gdb.server import parse_gdb_address

    try:
        parse_gdb_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _name(text: str) -> str:
    if not text or len(text) > 256 or not text.isprintable():
        raise argparse.ArgumentTypeError("a name is 1 to 256 printable characters")
    return text


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    _checked(check_timeout, seconds)
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyvmm", description="A virtual machine monitor for Linux KVM.")
    parser.add_argument("--version", action="version", version=f"pyvmm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the VMM does")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="boot a guest with its serial console on this terminal",
        description="Boot a guest. Without --kernel: pyvmm's own Linux guest (`pyvmm images`),"
        " built once and cached, to a shell on this terminal.",
    )
    run.add_argument(
        "--kernel",
        type=_file,
        help="Linux bzImage or vmlinux, Multiboot kernel, 64-bit ELF, or flat real-mode binary",
    )
    run.add_argument(
        "--kernel-format",
        choices=("auto", "flat"),
        default="auto",
        help="auto (default): detect the kernel's format; flat: boot the file as a raw real-mode binary",
    )
    run.add_argument("--initrd", type=_file, help="initial ramdisk (Linux initrd, or Multiboot module 0)")
    run.add_argument(
        "--cmdline",
        help=f"kernel command line (default: {LINUX_CMDLINE!r} for pyvmm's guest, with 'root=/dev/vda rw'"
        " from its root disk, which is added to a command line without root=; else empty)",
    )
    run.add_argument(
        "--guest",
        choices=(DEFAULT, STOCK),
        default=DEFAULT,
        help="which of pyvmm's guests to boot without --kernel: the kernel built from Debian's"
        " linux-source (default) or Debian's stock cloud kernel",
    )
    run.add_argument(
        "--root",
        choices=ROOTS,
        help="what pyvmm's own guest boots from: disk (its ext4 root disk as /dev/vda, a writable"
        " copy kept between runs; default for --guest default) or initramfs (default for --guest stock)",
    )
    run.add_argument("--cpus", type=_cpus, default=1, help=f"number of vCPUs, 1 to {MAX_CPUS} (default 1)")
    run.add_argument(
        "--memory",
        type=_memory,
        default=f"{DEFAULT_MEMORY >> 20}M",
        help="guest RAM, e.g. 256M or 1G (default 256M)",
    )
    run.add_argument(
        "--kernel-decompress",
        choices=("host", "guest"),
        default="host",
        help="who unpacks a bzImage: pyvmm on the host (default, fast) or the kernel itself",
    )
    run.add_argument(
        "--on-reboot",
        choices=("exit", "restart"),
        default="exit",
        help="when the guest reboots: end pyvmm with status 64 (default), or boot it again in a fresh VM",
    )
    run.add_argument(
        "--timeout", type=_seconds, help="stop the guest after this many seconds (at most 10 years)"
    )
    devices = run.add_argument_group("devices (virtio, on PCI unless --transport mmio)")
    devices.add_argument(
        "--disk",
        action="append",
        type=_disk,
        default=[],
        metavar="PATH[,readonly=on][,serial=ID]",
        help="a raw disk image as virtio-blk (/dev/vda, /dev/vdb, ... in order); repeatable",
    )
    devices.add_argument(
        "--net",
        action="append",
        type=_net,
        default=[],
        metavar="tap[=NAME][,mac=MAC]",
        help="virtio-net on TAP device NAME (without NAME, as root: one pyvmm creates and removes)",
    )
    devices.add_argument("--rng", action="store_true", help="virtio-rng fed from the host's urandom")
    devices.add_argument(
        "--console",
        choices=CONSOLES,
        default="serial",
        help="the guest's interactive console: serial (COM1, default) or virtio (hvc0)",
    )
    devices.add_argument(
        "--transport", choices=TRANSPORTS, default="pci", help="virtio transport: pci (default) or mmio"
    )
    devices.add_argument(
        "--device",
        action="append",
        choices=TEST_DEVICES,
        default=[],
        help="one of QEMU's test devices, for test suites written against QEMU; repeatable",
    )
    run.add_argument("--stats", action="store_true", help="print exit statistics when the guest ends")
    run.add_argument(
        "--incoming",
        type=_incoming,
        metavar="file:PATH",
        help="resume the guest from the snapshot at PATH instead of booting it (QEMU's -incoming); "
        "give the same machine options (memory, CPUs, disks, network) as when it was saved",
    )
    control = run.add_argument_group("control (QEMU's options of the same names)")
    control.add_argument(
        "--qmp",
        action="append",
        type=_qmp_address,
        default=[],
        metavar="unix:PATH|tcp:HOST:PORT",
        help="serve QMP there (server=on,wait=off implied: the guest does not wait for a client); repeatable",
    )
    control.add_argument("--name", type=_name, help="the VM's name (QMP's query-name)")
    control.add_argument(
        "-S",
        "--paused",
        action="store_true",
        help="do not start the guest's CPUs until a client says so (QMP cont, or gdb's continue)",
    )
    control.add_argument(
        "--gdb",
        type=_gdb_address,
        metavar="tcp:[HOST]:PORT",
        help="serve the gdb remote protocol there (tcp::1234 binds 127.0.0.1; name a host to open it wider)",
    )
    control.add_argument(
        "-s", dest="gdb", action="store_const", const="tcp::1234", help="the same as --gdb tcp::1234"
    )
    control.add_argument(
        "--gdb-wait",
        action="store_true",
        help="stop before the guest's first instruction until gdb continues it",
    )
    run.set_defaults(handler=_run)
    add_images_command(commands)
    return parser


def _stdout(data: bytes) -> None:
    if sys.stdout is None:  # started with stdout closed: fd 1 is some other file now
        raise OSError(errno.EBADF, "closed when pyvmm started")
    write_all(sys.stdout.fileno(), data)


def _guest(args: argparse.Namespace) -> tuple[str, str | None, str, tuple[DiskConfig, ...]]:
    """Kernel, initrd, command line and the disks before the user's: the user's own
    kernel (no disks), or pyvmm's own guest's, booted from its initramfs or from a
    writable copy of its root disk as /dev/vda (pyvmm.images.guest_disk)."""
    if args.kernel is not None:
        if args.root is not None:
            raise ConfigError("--root chooses what pyvmm's own guest boots from: it needs no --kernel")
        return args.kernel, args.initrd, args.cmdline or "", ()
    root = _root(args)
    from pyvmm.images.commands import build_with_progress, root_disk_with_progress  # loaded only when used

    images = build_with_progress(args.guest)
    kernel = str(images.path("bzImage"))
    if root == "initramfs":
        initrd = args.initrd or str(images.path("initramfs"))
        cmdline = args.cmdline if args.cmdline is not None else LINUX_CMDLINE
        return kernel, initrd, cmdline, ()
    disk = root_disk_with_progress(images)
    return kernel, None, _disk_root_cmdline(args.cmdline), (DiskConfig(str(disk)),)


def _root(args: argparse.Namespace) -> str:
    """What pyvmm's own guest boots from: --root, or its guest's default."""
    if args.root is None:  # an --initrd of one's own is a root of one's own
        return "disk" if args.guest == DEFAULT and args.initrd is None else "initramfs"
    if args.root == "disk" and args.guest == STOCK:
        raise ConfigError(
            "the stock guest has no root disk (its virtio drivers are modules its"
            " initramfs loads): use --root initramfs"
        )
    if args.root == "disk" and args.initrd is not None:
        raise ConfigError("--initrd and --root disk: the guest boots from one or the other")
    return str(args.root)


def _disk_root_cmdline(cmdline: str | None) -> str:
    """The command line of a disk root: `root=/dev/vda rw` goes before the user's own
    words unless they name a root (as Firecracker adds it for its root drive), so a
    --cmdline written for the initramfs still boots; a later `ro` wins over `rw`."""
    from pyvmm.images.rootfs import ROOT_CMDLINE

    if cmdline is None:
        return f"{LINUX_CMDLINE} {ROOT_CMDLINE}"
    if any(word.startswith("root=") for word in cmdline.split()):
        return cmdline
    return f"{ROOT_CMDLINE} {cmdline}".rstrip()


@dataclass(frozen=True)
class ControlOptions:
    """The control front ends `pyvmm run` serves."""

    qmp: tuple[QmpAddress, ...] = ()
    name: str | None = None
    paused: bool = False  # -S: the vCPUs wait for QMP's cont
    gdb: str | None = None  # where the gdb stub listens
    gdb_wait: bool = False  # the first instruction waits for gdb


class _Run:
    """One `pyvmm run`: boots the guest, boots it again after a reboot when asked,
    within one deadline for the whole run, and stops it on SIGTERM or SIGHUP. `show`
    prints the console's own messages among the guest's output."""

    def __init__(
        self,
        config: MachineConfig,
        restart: bool,
        show: Callable[[bytes], None],
        incoming: str | None = None,
        control: ControlOptions | None = None,
    ) -> None:
        self.config = config
        self.restart = restart
        self.show = show
        self.incoming = incoming  # the first run resumes this snapshot; a reboot boots
        self.options = control or ControlOptions()
        # The control front ends outlive each machine: a reboot keeps the QMP socket.
        self.control: MachineControl | None = None
        self.servers: list[QmpServer] = []
        self.debug: MachineTarget | None = None
        self.gdb: GdbServer | None = None
        self.booted = False
        self.deadline = None if config.timeout is None else time.monotonic() + config.timeout
        self.machine: Machine | None = None
        self.signal: str | None = None

    def stop_for_signal(self, name: str) -> None:
        self.signal = name
        if self.machine is not None:
            self.machine.stop(self._signal_exit())

    def _signal_exit(self) -> GuestExit:
        return GuestExit(ExitKind.STOPPED, f"terminated by {self.signal}")

    def run(self) -> RunResult:
        with stop_on_signals(self.stop_for_signal):
            try:
                result = self._boot()
                while result.exit.kind is ExitKind.REBOOT and self.restart and not self._over():
                    _say("the guest rebooted; starting it again")
                    result = self._boot()
                if result.exit.kind is ExitKind.REBOOT:
                    if self.control is not None:
                        self.control.emit("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
                    if self.debug is not None:
                        self.debug.end(result.status)
            finally:
                if self.gdb is not None:
                    self.gdb.close()
                for server in self.servers:
                    server.close()
                if self.control is not None:
                    self.control.close()
        kind = result.exit.kind
        stopped = kind is ExitKind.STOPPED or (kind is ExitKind.REBOOT and self.restart)
        if stopped and self.signal is None and self._over():  # the whole run's timeout
            result = dataclasses.replace(
                result, exit=GuestExit(ExitKind.STOPPED, f"timed out after {self.config.timeout} s")
            )
        return result

    def _over(self) -> bool:
        """A signal came, or the whole run's timeout has passed."""
        return self.signal is not None or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _boot(self) -> RunResult:
        """One run of a fresh VM, its console on stdin: a terminal (raw, with the escape
        key), or a pipe or file whose bytes are typed as they come (pyvmm.cli.console)."""
        config = self.config
        if self.deadline is not None:  # what is left of the whole run's timeout
            config = dataclasses.replace(config, timeout=max(self.deadline - time.monotonic(), 1e-3))
        machine = self.machine = Machine(config)
        if self.incoming is not None:
            incoming, self.incoming = self.incoming, None
            machine.build(incoming=incoming)
        elif self.options.gdb is not None:
            machine.build()  # the debugger attaches to the vCPUs before they run
        self._control(machine)
        if self.signal is not None:  # a signal came while the machine was being made
            machine.stop(self._signal_exit())
        # -S and --gdb-wait hold the first boot only, as QEMU's.
        paused = not self.booted and (self.options.paused or self.options.gdb_wait)
        self.booted = True
        if not stdin_is_open():  # started with stdin closed: no input at all
            return machine.run(paused=paused)
        if not os.isatty(STDIN):
            with PipedInput(machine.send_input, machine.input_room):
                return machine.run(paused=paused)

        def quit_from_console() -> None:
            machine.stop(GuestExit(ExitKind.STOPPED, "quit from the console (C-a x)"))

        with TerminalConsole(machine.send_input, quit_from_console, STDIN, self.show):
            return machine.run(paused=paused)

    def _control(self, machine: Machine) -> None:
        """The control front ends, on the first machine; later ones are attached."""
        self._debugger(machine)
        if self.control is not None:
            self.control.attach(machine)
            return
        if not self.options.qmp:
            return
        from pyvmm.api.machine_control import MachineControl  # asyncio and all: only for QMP
        from pyvmm.api.qmp import QmpServer

        shown = _terminal_progress if sys.stderr.isatty() else None
        self.control = MachineControl(machine, self.options.name, shown)
        for address in self.options.qmp:
            server = QmpServer(self.control, address)
            server.start()
            self.servers.append(server)

    def _debugger(self, machine: Machine) -> None:
        """The gdb stub, on the first machine; a reboot's machine keeps the debugger."""
        if self.debug is not None:
            self.debug.attach(machine)
            return
        if self.options.gdb is None:
            return
        from pyvmm.gdb.machine_target import MachineTarget  # the stub loads only with --gdb
        from pyvmm.gdb.server import GdbServer, parse_gdb_address

        self.debug = MachineTarget(machine)
        self.gdb = GdbServer(self.debug, parse_gdb_address(self.options.gdb))
        self.gdb.start()
        if self.options.gdb_wait:
            _say(f"gdb: waiting for a debugger on {self.gdb.address.host}:{self.gdb.address.port}")


def _terminal_progress() -> SnapshotProgress:
    """A snapshot's progress drawn on stderr, a terminal (`pyvmm/snapshot/progress.py`)."""
    from pyvmm.images.progress import Progress
    from pyvmm.snapshot.progress import SnapshotProgress

    return SnapshotProgress(Progress(sys.stderr, live=True, prefix="pyvmm"))


def _say(line: str) -> None:
    """A line on stderr; with the terminal gone (SIGHUP, EIO) there is no one to tell."""
    try:
        print(f"pyvmm: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass


def _dropped(output: ConsoleStream) -> str:
    """The line that says how much of the guest's output never reached stdout, and why."""
    if output.error is not None:
        why = f"stdout failed ({getattr(output.error, 'strerror', None) or output.error})"
    elif output.abandoned:
        why = "stdout took no more of it at the end"
    else:
        why = "stdout did not keep up"
    return f"{output.dropped} bytes of the guest's console output were dropped: {why}"


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    # Guest output never waits for stdout (a pipe nobody reads would stop the vCPU or
    # the I/O thread, and the timeout with them): it is buffered, and dropped past 1 MiB.
    with ConsoleStream(_stdout, name="pyvmm-stdout") as output:
        config = dataclasses.replace(config, console=output.write)
        restart = args.on_reboot == "restart"
        control = ControlOptions(tuple(args.qmp), args.name, args.paused, args.gdb, args.gdb_wait)
        result = _Run(
            config, restart=restart, show=output.write, incoming=args.incoming, control=control
        ).run()
    if output.dropped:
        _say(_dropped(output))
    if args.stats:
        _say(result.stats.table())
    if result.exit.kind is not ExitKind.POWEROFF:
        # Debug-exit too: its status can equal one of pyvmm's own (README, "Exit status").
        _say(f"guest ended: {result.exit.describe()}")
    return result.status


def _config(args: argparse.Namespace) -> MachineConfig:
    """The machine `pyvmm run ARGS` asks for (its console is set by `_run`)."""
    kernel, initrd, cmdline, guest_disks = _guest(args)
    return MachineConfig(
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        cpus=args.cpus,
        memory=args.memory,
        timeout=args.timeout,
        kernel_decompress=args.kernel_decompress,
        kernel_format=args.kernel_format,
        disks=(*guest_disks, *args.disk),  # the guest's root disk first: /dev/vda
        nets=tuple(args.net),
        rng=args.rng,
        console_device=args.console,
        transport=args.transport,
        test_devices=tuple(args.device),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="pyvmm: %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (VmmError, KvmError) as exc:
        print(f"pyvmm: error: {exc}", file=sys.stderr)
        return STATUS_FAILURE
    except KeyboardInterrupt:
        print("pyvmm: interrupted", file=sys.stderr)
        return STATUS_FAILURE
    except BrokenPipeError:  # `pyvmm images list | head`: the reader has gone
        sys.stderr.close()
        return STATUS_FAILURE


if __name__ == "__main__":
    sys.exit(main())
