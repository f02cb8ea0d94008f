"""A fault-injecting HTTP/1.1 reverse proxy in front of the local S3 server (tests only).

    with S3FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        rule = proxy.add_fault(op("UploadPart", part_number=2), error(503, "SlowDown", "Reduce your rate"))
        client = make_s3_client(endpoint_url=proxy.endpoint_url)
        ...                                   # real boto3 traffic; part 2's first try gets a 503
        assert rule.fired == 1
        assert [e.status for e in proxy.entries("UploadPart")] == [200, 503, 200]

Why raw sockets and not http.server/http.client: the proxy must pass on exactly the bytes boto3
sent (the Host header, which SigV4 signs and SeaweedFS checks; header case and order; Content-Length
or chunked framing) and must be able to RST a connection, which needs the socket itself. Bodies are
forwarded byte for byte, framing included; responses are streamed back as the server framed them.

Client connections are kept alive as long as the server's responses allow it, so faults land on
pooled connections the way they would in production. Each forwarded request uses a fresh upstream
connection (simple, and a reset on one side never leaks into the other).

Only path-style addressing is understood when naming S3 operations (make_s3_client uses it).
"""

from __future__ import annotations

import contextlib
import http
import io
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

__all__ = [
    "Action",
    "Complete200Error",
    "Delay",
    "Error",
    "Hang",
    "LogEntry",
    "Matcher",
    "Request",
    "ResetAfter",
    "ResetBefore",
    "Rule",
    "S3FaultProxy",
    "SlowBody",
    "all_of",
    "complete_200_error",
    "delay",
    "error",
    "hang",
    "method",
    "op",
    "query_has",
    "reset_after",
    "reset_before",
    "s3_operation",
    "slow_body",
]

_MAX_LINE = 64 * 1024
_MAX_HEADERS = 200
_IO_CHUNK = 64 * 1024


class _ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.1 as we understand it, or hung up mid-message."""


class _Stopping(Exception):
    """The proxy is shutting down; drop the connection."""


# --- requests and S3 operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One client request, as read off the wire (what matchers see)."""

    method: str
    target: str  # request-target as sent: /bucket/key?query
    path: str  # percent-decoded path
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]  # as sent, in order
    body: bytes  # as framed on the wire (chunked framing kept)
    bucket: str | None
    key: str | None
    operation: str
    part_number: int | None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


def s3_operation(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> str:
    """Name the S3 operation of a path-style request (`headers` keys lower-case)."""
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    if not bucket:
        return "ListBuckets"
    if not key:
        bucket_ops = {
            ("GET", "uploads"): "ListMultipartUploads",
            ("GET", "location"): "GetBucketLocation",
            ("GET", "versioning"): "GetBucketVersioning",
            ("POST", "delete"): "DeleteObjects",
        }
        for (m, param), name in bucket_ops.items():
            if method == m and param in query:
                return name
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
            method, f"{method} bucket"
        )
    if "uploadId" in query:
        if method == "PUT" and "partNumber" in query:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        return {
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }.get(method, f"{method} upload")
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "PUT":
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, f"{method} object"
    )


Matcher = Callable[[Request], bool]


def op(*operations: str, part_number: int | None = None) -> Matcher:
    """Match S3 operations by name (see `s3_operation`), optionally one part number."""
    names = frozenset(operations)
    return lambda r: r.operation in names and (part_number is None or r.part_number == part_number)


def method(*methods: str) -> Matcher:
    """Match by HTTP method."""
    wanted = frozenset(m.upper() for m in methods)
    return lambda r: r.method in wanted


def query_has(*params: str) -> Matcher:
    """Match requests whose query string has all these parameters."""
    return lambda r: all(p in r.query for p in params)


def all_of(*matchers: Matcher) -> Matcher:
    return lambda r: all(m(r) for m in matchers)


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """Answer with an S3 XML error; the server never sees the request."""

    status: int
    code: str
    message: str

    def describe(self) -> str:
        return f"error {self.status} {self.code}"


@dataclass(frozen=True)
class ResetBefore:
    """Reset (RST) the client connection; the server never sees the request."""

    def describe(self) -> str:
        return "reset_before"


@dataclass(frozen=True)
class ResetAfter:
    """Forward, let the server apply it and answer, then reset the client: the ambiguous case."""

    def describe(self) -> str:
        return "reset_after"


@dataclass(frozen=True)
class Delay:
    """Wait, then forward (a slow server: the request is applied late, maybe after the client gave up).
    The wait ends early once the client has closed its connection (it gave up): the request is
    then forwarded at once, still late, so a long delay costs a test only the client's timeout."""

    seconds: float

    def describe(self) -> str:
        return f"delay {self.seconds}s"


@dataclass(frozen=True)
class SlowBody:
    """Forward, then send the response body to the client at about `bytes_per_sec`."""

    bytes_per_sec: int

    def describe(self) -> str:
        return f"slow_body {self.bytes_per_sec}B/s"


@dataclass(frozen=True)
class Complete200Error:
    """HTTP 200 whose body is an S3 <Error> (what S3 may do for CompleteMultipartUpload/CopyObject).

    `applied=True` forwards first, so the server really completed the upload; `applied=False`
    does not forward, so the upload is still open.
    """

    applied: bool = True
    code: str = "InternalError"
    message: str = "We encountered an internal error. Please try again."

    def describe(self) -> str:
        return f"complete_200_error applied={self.applied}"


@dataclass
class Hang:
    """Hold the request, never forwarding it, until `release()` (or the proxy closes); then
    reset the connection. A process killed meanwhile leaves nothing behind on the server."""

    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()

    def describe(self) -> str:
        return "hang"


Action = Error | ResetBefore | ResetAfter | Delay | SlowBody | Complete200Error | Hang


def hang() -> Hang:
    return Hang()


def error(status: int = 500, code: str = "InternalError", message: str = "Injected by S3FaultProxy") -> Error:
    return Error(status, code, message)


def reset_before() -> ResetBefore:
    return ResetBefore()


def reset_after() -> ResetAfter:
    return ResetAfter()


def delay(seconds: float) -> Delay:
    return Delay(seconds)


def slow_body(bytes_per_sec: int) -> SlowBody:
    if bytes_per_sec <= 0:
        raise ValueError("bytes_per_sec must be positive")
    return SlowBody(bytes_per_sec)


def complete_200_error(applied: bool = True) -> Complete200Error:
    return Complete200Error(applied=applied)


@dataclass
class Rule:
    """A fault: the first `times` matching requests get `action` (times=None: every one)."""

    match: Matcher
    action: Action
    times: int | None = 1
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass
class LogEntry:
    """What the proxy saw and did for one request. Updated in place until `done`."""

    seq: int
    method: str
    target: str
    operation: str
    part_number: int | None
    fault: str | None  # Action.describe() of the rule that fired, None = passed through
    forwarded: bool = False  # the server received the request
    upstream_status: int | None = None  # what the server answered (None: not forwarded)
    status: int | None = None  # what the client was sent (None: reset, or no answer)
    error: str | None = None  # proxy-side trouble (client gone, upstream unreachable, ...)
    done: bool = False


# --- wire helpers --------------------------------------------------------------------------------


def _read_head(reader: io.BufferedReader) -> tuple[bytes, str, list[tuple[str, str]]] | None:
    """Read a start line and headers. Returns (raw bytes, start line, headers), None on clean EOF."""
    lines: list[bytes] = []
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if not line:
            if not lines:
                return None
            raise _ProtocolError("connection closed inside a message head")
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise _ProtocolError("header line too long or truncated")
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerated: a stray CRLF between messages
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
        if len(lines) > _MAX_HEADERS:
            raise _ProtocolError("too many headers")
    start = lines[0].decode("latin-1").rstrip("\r\n")
    headers = []
    for raw in lines[1:-1]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {raw!r}")
        headers.append((name.strip(), value.strip()))
    return b"".join(lines), start, headers


def _lower(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        lk = k.lower()
        out[lk] = f"{out[lk]}, {v}" if lk in out else v
    return out


def _iter_exact(reader: io.BufferedReader, n: int) -> Iterator[bytes]:
    while n > 0:
        piece = reader.read(min(n, _IO_CHUNK))
        if not piece:
            raise _ProtocolError("connection closed inside a message body")
        n -= len(piece)
        yield piece


def _iter_chunked_raw(reader: io.BufferedReader) -> Iterator[bytes]:
    """A chunked body, yielded as raw wire bytes (sizes, extensions and trailers included)."""
    while True:
        line = reader.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise _ProtocolError("bad chunk-size line")
        yield line
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _ProtocolError(f"bad chunk size {line!r}") from exc
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = reader.readline(_MAX_LINE + 1)
                if not trailer.endswith(b"\n"):
                    raise _ProtocolError("bad chunked trailer")
                yield trailer
                if trailer in (b"\r\n", b"\n"):
                    return
        yield from _iter_exact(reader, size + 2)  # data and its CRLF


def _iter_eof(reader: io.BufferedReader) -> Iterator[bytes]:
    while piece := reader.read1(_IO_CHUNK):
        yield piece


def _body(
    reader: io.BufferedReader, headers: dict[str, str], *, response_to: str | None, status: int = 0
) -> tuple[Iterator[bytes], bool]:
    """(iterator over the raw body, whether the body ends only when the connection closes)."""
    if response_to is not None and (response_to == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return iter(()), False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _iter_chunked_raw(reader), False
    if "content-length" in headers:
        try:
            n = int(headers["content-length"].split(",")[0])
        except ValueError as exc:
            raise _ProtocolError("bad Content-Length") from exc
        return _iter_exact(reader, n), False
    if response_to is None:
        return iter(()), False  # a request without framing has no body
    return _iter_eof(reader), True


def _reset(sock: socket.socket, reader: io.BufferedReader) -> None:
    """Close with SO_LINGER 0 so the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        reader.close()  # makefile() holds a reference: close it first
    sock.close()


def _error_xml(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


def _response(status: int, body: bytes, request_id: str, *, head_only: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Server: S3FaultProxy\r\n\r\n"
    ).encode()
    return head if head_only else head + body


# --- the proxy -----------------------------------------------------------------------------------


class S3FaultProxy:
    """Threaded HTTP/1.1 reverse proxy on 127.0.0.1 (a free port) that injects faults by rule."""

    def __init__(self, upstream_url: str, *, upstream_timeout: float = 120.0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// upstream URL, got {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._rules: list[Rule] = []
        self._log: list[LogEntry] = []
        self._inflight = 0
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._conn_seq = 0
        self._endpoint_url: str | None = None

    # lifecycle

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("the proxy has not been started")
        return self._endpoint_url

    def start(self) -> S3FaultProxy:
        if self._listener is not None:
            raise RuntimeError("already started")
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        listener.settimeout(0.1)  # accept() polls so close() never waits on a blocked accept
        self._listener = listener
        self._endpoint_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="s3-fault-proxy-accept")
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, cut every open connection (both sides) and join every thread."""
        if self._listener is None or self._stopping.is_set():
            return
        self._stopping.set()
        assert self._acceptor is not None
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            socks, threads = list(self._sockets), list(self._threads)
        for s in socks:  # wakes threads blocked in recv() on idle keep-alive or upstream sockets
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=10)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"S3FaultProxy threads did not stop: {alive}")

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # rules and log

    def add_fault(self, match: Matcher | str, action: Action, times: int | None = 1) -> Rule:
        """Apply `action` to the next `times` requests that `match` (a Matcher or an operation name)."""
        if isinstance(match, str):
            match = op(match)
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for every matching request)")
        rule = Rule(match, action, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def entries(self, *operations: str) -> list[LogEntry]:
        """Log entries of these operations (all when none given), in arrival order."""
        return [e for e in self.log if not operations or e.operation in operations]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being handled (e.g. a delayed one that the client gave up on)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout):
                raise TimeoutError(f"{self._inflight} request(s) still in flight after {timeout}s")

    def _delay(self, seconds: float, sock: socket.socket) -> bool:
        """Wait `seconds`, or until the client closes the connection; True if the proxy closes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.wait(min(0.05, left)):
                return True
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return False  # the client gave up (its read timeout) and closed
                except OSError:
                    return False
        return False

    def _take_action(self, req: Request) -> Action | None:
        with self._lock:
            for rule in self._rules:
                if not rule.exhausted and rule.match(req):
                    rule.fired += 1
                    return rule.action
        return None

    def _begin(self, req: Request, action: Action | None) -> LogEntry:
        with self._lock:
            entry = LogEntry(
                seq=len(self._log),
                method=req.method,
                target=req.target,
                operation=req.operation,
                part_number=req.part_number,
                fault=action.describe() if action else None,
            )
            self._log.append(entry)
            self._inflight += 1
            return entry

    def _finish(self, entry: LogEntry) -> None:
        with self._lock:
            entry.done = True
            self._inflight -= 1
            self._idle.notify_all()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    # connections

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(True)
            with self._lock:
                self._conn_seq += 1
                t = threading.Thread(
                    target=self._serve_connection, args=(conn,), name=f"s3-fault-proxy-conn-{self._conn_seq}"
                )
                self._threads.add(t)
                self._sockets.add(conn)
            t.start()

    def _serve_connection(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        try:
            keep_alive = True
            while keep_alive and not self._stopping.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                raw_head, start, headers = head
                try:
                    req_method, target, version = start.split(" ", 2)
                except ValueError as exc:
                    raise _ProtocolError(f"bad request line {start!r}") from exc
                lower = _lower(headers)
                if lower.get("expect", "").lower() == "100-continue":
                    # We decide after reading the whole request, so always let the body come.
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body_iter, _ = _body(reader, lower, response_to=None)
                body = b"".join(body_iter)
                req = self._request(req_method, target, headers, lower, body)
                action = self._take_action(req)
                entry = self._begin(req, action)
                try:
                    keep_alive = self._handle(sock, reader, req, raw_head, action, entry)
                    keep_alive = keep_alive and version == "HTTP/1.1"
                    keep_alive = keep_alive and lower.get("connection", "").lower() != "close"
                except (OSError, _ProtocolError, _Stopping) as exc:
                    entry.error = f"{type(exc).__name__}: {exc}"
                    return
                finally:
                    self._finish(entry)
        except (OSError, _ProtocolError):
            return  # the client hung up or spoke nonsense: just drop the connection
        finally:
            with contextlib.suppress(OSError):  # both are no-ops after a reset
                reader.close()
            sock.close()
            self._track(sock, add=False)
            with self._lock:
                self._threads.discard(threading.current_thread())

    @staticmethod
    def _request(
        req_method: str, target: str, headers: list[tuple[str, str]], lower: dict[str, str], body: bytes
    ) -> Request:
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        parts = path.lstrip("/").split("/", 1)
        part_number = query.get("partNumber", [""])[0]
        return Request(
            method=req_method,
            target=target,
            path=path,
            query=query,
            headers=tuple(headers),
            body=body,
            bucket=parts[0] or None,
            key=parts[1] if len(parts) > 1 and parts[1] else None,
            operation=s3_operation(req_method, path, query, lower),
            part_number=int(part_number) if part_number.isdigit() else None,
        )

    def _handle(
        self,
        sock: socket.socket,
        reader: io.BufferedReader,
        req: Request,
        raw_head: bytes,
        action: Action | None,
        entry: LogEntry,
    ) -> bool:
        """Answer one request; returns whether the client connection can carry another one."""
        request_id = f"faultproxy-{uuid.uuid4().hex[:16]}"
        head_only = req.method == "HEAD"
        if isinstance(action, Error):
            sock.sendall(
                _response(
                    action.status,
                    _error_xml(action.code, action.message, req.path, request_id),
                    request_id,
                    head_only=head_only,
                )
            )
            entry.status = action.status
            return True
        if isinstance(action, ResetBefore):
            _reset(sock, reader)
            return False
        if isinstance(action, Hang):
            while not action.released.wait(0.1):
                if self._stopping.is_set():
                    raise _Stopping("proxy closed during a hang")
            _reset(sock, reader)
            return False
        if isinstance(action, Complete200Error) and not action.applied:
            sock.sendall(self._complete_200_error(action, req, request_id))
            entry.status = 200
            return True
        if isinstance(action, Delay) and self._delay(action.seconds, sock):
            raise _Stopping("proxy closed during a delay")

        with self._upstream() as up:
            up_reader = up.makefile("rb")
            try:
                up.sendall(raw_head + req.body)
                entry.forwarded = True
                while True:  # skip interim 1xx answers (100 Continue to the Expect we passed on)
                    head = _read_head(up_reader)
                    if head is None:
                        raise _ProtocolError("upstream closed without answering")
                    up_head, up_start, up_headers = head
                    status = int(up_start.split(" ", 2)[1])
                    if status >= 200:
                        break
                entry.upstream_status = status
                up_lower = _lower(up_headers)
                body_iter, until_eof = _body(up_reader, up_lower, response_to=req.method, status=status)

                if isinstance(action, ResetAfter | Complete200Error):
                    for _ in body_iter:  # the server's whole answer is read, then thrown away
                        pass
                    if isinstance(action, ResetAfter):
                        _reset(sock, reader)
                        return False
                    sock.sendall(self._complete_200_error(action, req, request_id))
                    entry.status = 200
                    return True

                sock.sendall(up_head)
                rate = action.bytes_per_sec if isinstance(action, SlowBody) else None
                for piece in body_iter:
                    self._send(sock, piece, rate)
                entry.status = status
                return not until_eof and up_lower.get("connection", "").lower() != "close"
            finally:
                up_reader.close()

    @contextlib.contextmanager
    def _upstream(self) -> Iterator[socket.socket]:
        up = socket.create_connection(self.upstream, timeout=self.upstream_timeout)
        self._track(up, add=True)
        try:
            if self._stopping.is_set():  # close() took its snapshot of sockets before we were added
                raise _Stopping("proxy closed")
            yield up
        finally:
            self._track(up, add=False)
            up.close()

    def _send(self, sock: socket.socket, data: bytes, rate: int | None) -> None:
        if rate is None:
            sock.sendall(data)
            return
        step = max(1, rate // 20)  # ~20 sends a second
        for i in range(0, len(data), step):
            sock.sendall(data[i : i + step])
            if self._stopping.wait(step / rate):
                raise _Stopping("proxy closed during a slow body")

    @staticmethod
    def _complete_200_error(action: Complete200Error, req: Request, request_id: str) -> bytes:
        # Like S3: the XML declaration, whitespace sent while "working", then the <Error> element.
        xml = _error_xml(action.code, action.message, req.path, request_id)
        decl, _, rest = xml.partition(b"\n")
        return _response(200, decl + b"\n" + b" " * 16 + b"\n" + rest, request_id, head_only=False)
