"""How the API is served: uvicorn with the h11 parser and a header size limit, and a body size limit
in front of the app (docs/security.md).

uvicorn's default parser (httptools) has no header size limit and joins header chunks over and over,
so one client sending a huge header line can stall every other client of the process. h11 refuses a
request line plus headers longer than `max_header_bytes` as soon as that many bytes are buffered;
`HeaderLimitedH11Protocol` answers that refusal with 431 instead of uvicorn's generic 400.

`BodyLimit` counts the body while it streams in and answers 413 the moment the limit is passed (or at
once, from `Content-Length`), so nothing beyond the limit is ever buffered."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
from fastapi import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 128 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HeaderLimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering 431 (not 400) when the request head is over the limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._error_status = 400
        next_event = self.conn.next_event

        def remember_status() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._error_status = exc.error_status_hint
                raise

        self.conn.next_event = remember_status  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        if self._error_status != 431:
            super().send_400_response(msg)
            return
        body = json.dumps(
            {
                "error": {
                    "code": "headers_too_large",
                    "message": "the request line and headers are over the server's limit",
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        self.transport.write(
            self.conn.send(
                h11.Response(status_code=431, headers=headers, reason=b"Request Header Fields Too Large")
            )
        )
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def uvicorn_options(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, Any]:
    """The uvicorn settings every way of serving the API uses (`export-pipelines serve`, the tests,
    the bench)."""
    return {"http": HeaderLimitedH11Protocol, "h11_max_incomplete_event_size": max_header_bytes}


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
            {
                "error": {
                    "code": "body_too_large",
                    "message": f"the request body is over {self.max_bytes} bytes",
                    "field": "body",
                }
            }
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
