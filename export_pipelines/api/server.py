"""How the API is served: uvicorn's httptools parser with a limit on each request's head (431), a body
size limit in front of the app (413), and with several workers a listening socket per worker
(docs/security.md).

uvicorn's httptools protocol alone has no header size limit and joins header chunks over and over,
so one client sending a huge header line could stall every other client of the process;
`HeaderLimitedHttpToolsProtocol` stops feeding the parser at `max_header_bytes` and answers 431.

`BodyLimit` counts the body while it streams in and answers 413 the moment the limit is passed (or at
once, from `Content-Length`), so nothing beyond the limit is ever buffered."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException
from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from export_pipelines.api.errors import error_body

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 128 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def head_too_large_response() -> bytes:
    """The whole 431 answer (then the connection is closed): JSON, like every other refusal."""
    body = json.dumps(
        error_body("headers_too_large", "the request line and headers are over the server's limit")
    ).encode()
    head = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools (C) protocol with a limit on each request's line and headers: 431 once the
    head passes `max_head_bytes`, before the parser has seen more than that.

    The limit is what makes this parser safe: without it, a client sending one endless header line
    made httptools and uvicorn join its chunks over and over (quadratic), stalling every client of
    the process. A head that begins inside the piece that ended the previous request is counted
    from the next piece, so any head is refused before the parser holds twice the limit. h11 (pure
    Python) has the limit built in and costs ~15 % more CPU per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's setting for h11's limit; uvicorn_options sets it for this protocol too.
        self.max_head_bytes: int = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self.in_head = True
        self.head_bytes = 0

    def data_received(self, data: bytes) -> None:
        # Fed in pieces no longer than the room the open head has left (or than the limit, between
        # heads), so the parser never holds more than the limit of an unfinished head.
        while data:
            step = max(1, self.max_head_bytes - self.head_bytes) if self.in_head else self.max_head_bytes
            piece, data = data[:step], data[step:]
            if self.in_head:
                self.head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
            if self.in_head and self.head_bytes >= self.max_head_bytes:
                self.transport.write(head_too_large_response())
                self.transport.close()
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head, self.head_bytes = True, 0


def uvicorn_options(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, Any]:
    """The uvicorn settings every way of serving the API uses (`export-pipelines serve`, the tests,
    the bench)."""
    return {"http": HeaderLimitedHttpToolsProtocol, "h11_max_incomplete_event_size": max_header_bytes}


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside a handler; the app's HTTP error handler answers it (413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over {max_bytes} bytes")


class BodyLimit:
    """Pure ASGI: answers 413 to a body over `max_bytes`, before more than that is read: at once
    from `Content-Length`, else from inside the handler the moment the streamed body passes it."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Stop reading here: the rest of the body is never taken from the socket.
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body("body_too_large", f"the request body is over {self.max_bytes} bytes", "body")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port with SO_REUSEPORT: several of them, one per worker
    process, share the port, and the kernel spreads new connections evenly over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class ReusePortWorker(Process):
    """A uvicorn worker that listens on a socket of its own (SO_REUSEPORT on the shared port), not
    on the one socket uvicorn's parent would hand every worker.

    With one shared socket, every worker's event loop is woken for each new connection and the
    first awake takes all that are waiting: 50 keep-alive clients connecting at once all landed on
    one of two workers, which did all the work while the other idled. With a socket per worker the
    kernel assigns each connection to a worker by its address, so the load divides."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover - in the worker
        super().target([reuse_port_socket(self.config.host, self.config.port)])


def run_workers(config: Config) -> None:
    """uvicorn's multi-process supervisor (health checks, restarts, signals) with a listening socket
    per worker. The port is checked here first, so a port in use is one clear error, not N."""
    reuse_port_socket(config.host, config.port).close()
    # The supervisor makes its workers with its module's `Process`; give it the per-socket kind.
    multiprocess.Process = ReusePortWorker  # type: ignore[misc]
    Multiprocess(config, sockets=[]).run()
