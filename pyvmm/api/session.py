"""One QMP client: greeting, capabilities negotiation, then commands in order and
events (docs/interop/qmp-spec.rst, "Capabilities Negotiation"). Everything it reads
is untrusted: a bad message gets an error response and the session goes on; only a
client that cannot resync, or that stops reading its output, is dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pyvmm.api import commands, protocol
from pyvmm.api.arguments import ArrayOf, Field, Struct, check_struct
from pyvmm.api.arguments import Enum as EnumKind
from pyvmm.api.framing import Frame, JsonSplitter, OverrunError
from pyvmm.api.protocol import ErrorClass, QmpError, Request

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
# a client whose unread output passes this is gone (it would hold our memory)
MAX_BACKLOG_BYTES = 4 << 20
# QMP's capabilities; pyvmm offers none (no out-of-band execution)
_CAPABILITIES = Struct((Field("enable", ArrayOf(EnumKind(("oob",))), True),))

Execute = Callable[[commands.Command, Request], Awaitable[object]]


class Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        execute: Execute,
        max_message: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.execute = execute
        self.splitter = JsonSplitter(max_bytes=max_message)
        self.command_mode = False
        self.closed = False

    def send(self, message: dict[str, object] | bytes) -> None:
        """Queue one message; drop the client when it reads too slowly."""
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(message if isinstance(message, bytes) else protocol.encode(message))
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            log.warning("QMP client does not read its output: dropped")
            self.abort()

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()

    async def run(self) -> None:
        self.send(protocol.greeting())
        try:
            while not self.closed:
                data = await self.reader.read(READ_BYTES)
                if not data:
                    break
                for item in self.splitter.feed(data):
                    if isinstance(item, Frame):
                        await self._message(item.data)
                    else:
                        self.send(protocol.failure(QmpError(item.desc)))
                    await self.writer.drain()
        except OverrunError as error:
            log.warning("QMP client dropped: %s", error)
        except (ConnectionError, OSError):
            pass  # the client went away; what it started runs to its end
        finally:
            self.closed = True
            self.writer.close()

    async def _message(self, data: bytes) -> None:
        try:
            request = protocol.check_request(protocol.decode(data))
        except protocol.RequestError as error:
            self.send(protocol.failure(error, error.id))
            return
        except QmpError as error:
            self.send(protocol.failure(error))
            return
        try:
            result = await self._dispatch(request)
        except QmpError as error:
            self.send(protocol.failure(error, request.id))
            return
        self.send(protocol.success(result, request.id))

    async def _dispatch(self, request: Request) -> object:
        if request.command == "qmp_capabilities":
            return self._negotiate(request)
        if not self.command_mode:
            raise QmpError(
                "Expecting capabilities negotiation with 'qmp_capabilities'", ErrorClass.COMMAND_NOT_FOUND
            )
        command = commands.find(request.command)
        return await self.execute(command, request)

    def _negotiate(self, request: Request) -> object:
        if self.command_mode:
            raise QmpError(
                "Capabilities negotiation is already complete, command ignored", ErrorClass.COMMAND_NOT_FOUND
            )
        enable = check_struct(_CAPABILITIES, request.arguments).get("enable", [])
        if isinstance(enable, list) and enable:
            raise QmpError(f"Capability '{enable[0]}' not available")
        self.command_mode = True
        return {}
