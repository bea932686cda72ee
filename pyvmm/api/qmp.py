"""The QMP server: an asyncio loop on its own thread serving QEMU's Machine Protocol
(docs/interop/qmp-spec.rst) on a unix or TCP socket, over one `MachineController`.

    server = QmpServer(machine, parse_address("unix:/tmp/vm.qmp"))
    server.start()      # listening when it returns; never waits for a client
    ...
    server.close()

Threads: the loop only reads, parses and writes. Commands that touch the machine run
on daemon worker threads (`commands.Runs`, `workers.DaemonExecutor`): queries on two,
lifecycle changes on one, so a slow pause never stalls another client and two
lifecycle changes never overlap; `quit`, answered first, on its own (a stuck pause
does not hold it); a migration on its own thread. The machine's events arrive on any thread and are
handed to the loop without blocking (`call_soon_threadsafe`). Nothing here ever runs
on, or waits for, a vCPU thread. A client that disconnects mid-command leaves the
command to finish; its reply goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
import threading
from concurrent.futures import Future

from pyvmm.api import protocol
from pyvmm.api.address import QmpAddress, TcpAddress, UnixAddress, parse_address
from pyvmm.api.arguments import check_struct
from pyvmm.api.commands import Command, Context, Runs
from pyvmm.api.controller import MachineController
from pyvmm.api.framing import MAX_MESSAGE_BYTES
from pyvmm.api.protocol import QmpError, Request
from pyvmm.api.session import Session
from pyvmm.api.workers import DaemonExecutor
from pyvmm.errors import ConfigError, VmmError

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
START_SECONDS = 5.0
CLOSE_SECONDS = 2.0
QUERY_WORKERS = 2


def _listen(address: QmpAddress) -> socket.socket:
    """The listening socket, bound now so that a bad address fails `start()`."""
    if isinstance(address, UnixAddress):
        with contextlib.suppress(FileNotFoundError):
            # a stale socket from an earlier run is replaced, as QEMU does; a file is not
            if not stat.S_ISSOCK(os.lstat(address.path).st_mode):
                raise ConfigError(f"--qmp {address}: {address.path} exists and is not a socket")
            os.unlink(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address.path
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target = (address.host, address.port)
    try:
        sock.bind(target)
        sock.listen(MAX_CLIENTS)
    except OSError as error:
        sock.close()
        raise ConfigError(f"--qmp {address}: cannot listen: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class QmpServer:
    def __init__(
        self,
        controller: MachineController,
        address: QmpAddress | str,
        *,
        max_message: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.controller = controller
        self.requested = parse_address(address) if isinstance(address, str) else address
        self.max_message = max_message
        self.context = Context(controller, self._broadcast_threadsafe)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queries = DaemonExecutor(QUERY_WORKERS, "qmp-query")
        self._lifecycle = DaemonExecutor(1, "qmp-lifecycle")
        # what is answered first (quit) runs on its own: a stuck pause must not hold it
        self._urgent = DaemonExecutor(1, "qmp-urgent")
        self._ready = threading.Event()
        self._closed = False

    @property
    def address(self) -> QmpAddress:
        """Where it listens (a TCP port 0 resolved to the port bound)."""
        if isinstance(self.requested, TcpAddress) and self._sock is not None:
            return TcpAddress(self.requested.host, self._sock.getsockname()[1])
        return self.requested

    @property
    def clients(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        """Listen and serve on a new thread; `ConfigError` when the address cannot be
        bound, `VmmError` when the loop does not come up."""
        if self._thread is not None:
            raise VmmError("the QMP server is started already")
        self._sock = _listen(self.requested)
        self._thread = threading.Thread(target=self._serve, name="qmp", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_SECONDS) or self._server is None:
            self.close()
            raise VmmError(f"the QMP server on {self.requested} did not start")
        self.controller.add_listener(self._on_event)
        log.info("QMP listening on %s", self.address)
        if isinstance(self.requested, TcpAddress) and not _is_loopback(self.requested.host):
            log.warning("QMP on %s: whoever reaches that address controls the VM", self.address)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(lambda _, context: log.error("QMP: %s", context.get("message")))
        try:
            loop.run_until_complete(self._open())
            self._ready.set()
            loop.run_forever()
        except Exception:  # never out of the thread: the VM goes on without QMP
            log.exception("the QMP server failed")
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        assert self._sock is not None
        if self._sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._accept, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._accept, sock=self._sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._sessions) >= MAX_CLIENTS or self._closed:
            log.warning("QMP: a client refused (%d clients already)", len(self._sessions))
            writer.transport.abort()
            return
        session = Session(reader, writer, self._execute, self.max_message)
        self._sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except Exception:  # a bug in a handler: this client goes, the others stay
            log.exception("QMP session failed")
            session.abort()
        finally:
            self._sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    # --- commands -------------------------------------------------------------------------

    async def _execute(self, command: Command, request: Request) -> object:
        """Check the arguments, then run the handler where it belongs."""
        arguments = (
            request.arguments
            if command.arguments is None
            else check_struct(command.arguments, request.arguments)
        )
        if command.runs is Runs.LOOP:
            return self._call(command, arguments)
        executor = self._lifecycle if command.runs is Runs.LIFECYCLE else self._queries
        try:
            if command.reply_first:
                future = self._urgent.submit(self._call, command, arguments)
                future.add_done_callback(self._log_failure)
                return {}
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, self._call, command, arguments)
        except RuntimeError:  # the workers are shut down: close() has begun
            raise QmpError("the QMP server is closing") from None

    def _call(self, command: Command, arguments: dict[str, object]) -> object:
        """On a worker: a machine's `VmmError` becomes the client's GenericError."""
        try:
            return command.handler(self.context, arguments)
        except QmpError:
            raise
        except VmmError as error:
            raise QmpError(str(error)) from None
        except Exception as error:  # a bug: tell the client, keep serving
            log.exception("QMP command failed")
            raise QmpError(f"internal error: {type(error).__name__}: {error}") from None

    @staticmethod
    def _log_failure(future: Future[object]) -> None:
        error = future.exception()
        if error is not None:
            log.warning("QMP: a command answered before it ran failed: %s", error)

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, event: str, data: dict[str, object]) -> None:
        """The machine's listener: any thread, never blocks, never raises."""
        try:
            line = protocol.encode(protocol.event(str(event), dict(data)))
        except (TypeError, ValueError):
            log.error("QMP: event %r has data that is not JSON: dropped", event)
            return
        self._post(line)

    def _broadcast_threadsafe(self, event: str, data: dict[str, object]) -> None:
        self._on_event(event, data)

    def _post(self, line: bytes) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._broadcast, line)

    def _broadcast(self, line: bytes) -> None:
        for session in list(self._sessions):
            if session.command_mode:  # no events during negotiation (qmp-spec.rst)
                session.send(line)

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, let pending output go (for at most `CLOSE_SECONDS`), drop the
        clients, remove the unix socket. Idempotent; commands still running on a worker
        are left to finish (their replies go nowhere)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.controller.remove_listener(self._on_event)
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                done = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                with contextlib.suppress(Exception):
                    done.result(CLOSE_SECONDS + 1)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_SECONDS)
        elif self._sock is not None:
            self._sock.close()
        for executor in (self._queries, self._lifecycle, self._urgent):
            executor.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.requested, UnixAddress) and self._sock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.requested.path)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.closed = True
            session.writer.close()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_SECONDS)
            for task in pending:
                task.cancel()
