"""DynamoDB's HTTP front end: HTTP/1.1 on uvloop + httptools, SigV4, model validation, dispatch.

Wire format, as DynamoDB speaks it::

    POST / HTTP/1.1
    X-Amz-Target: DynamoDB_20120810.<Operation>
    Content-Type: application/x-amz-json-1.0          (1.1 is accepted too)
    Content-Encoding: gzip | deflate                  (optional)
    Authorization: AWS4-HMAC-SHA256 ...               (or a presigned query string)

    {"TableName": ...}                                 (a JSON object)

    HTTP/1.1 200 OK                                    (or the error's status)
    Content-Type: <the request's JSON content type>
    x-amzn-RequestId: <52 characters, A-Z 0-9>
    x-amz-crc32: <zlib crc32 of the body, decimal>

    {...}  or  {"__type": "<namespace>#<Error>", "message": "..."}

``GET /`` answers ``healthy: <the Host it was sent to> `` as DynamoDB does
(``dynamodb.<region>.amazonaws.com`` when there is none), and
``GET /metrics`` the node's Prometheus metrics (dynstore/metrics.py: DynamoDB clients only
POST, so the path is free, and a scrape is answered on the loop that owns the storage), and
``GET /status`` the node's status document when the server is given one (dynstore/status.py). Any
other path or method, or a body that is not JSON by its content type, gets DynamoDB's 404
``<UnknownOperationException/>``.

CORS, for code in a web browser, as DynamoDB has it: an answer to a request with an
``Origin`` header allows any origin (``Access-Control-Allow-Origin: *``) and lets the script
read the answer's own headers; an ``OPTIONS`` request with one (a browser's preflight) is
answered 200 with the methods and headers it asked for allowed, for ``CORS_MAX_AGE_S``.

Order of checks (DynamoDB's): method and content type, target operation, signature,
body decoding and JSON, the model's types and constraints, then the operation.

Operations plug in as a table ``{name: async fn(state, request) -> dict}``: the server hands
each a request already checked against botocore's service model (``model.validate``) and
encodes what it returns. A ``DynamoDBError`` raised by an operation becomes its error
response; any other exception becomes a logged 500 ``InternalServerError`` and the
connection keeps serving.

Faults survived: slow or half-open clients (header, body, idle and send timeouts, checked by
one sweeper per server), oversized headers and bodies (400 and 413, then the connection
closes because the rest of its byte stream is not read), decompression bombs (the limit
applies to the decoded body), pipelined floods (reading pauses while requests are queued),
too many connections (503 and close), garbled HTTP (400 and close).
"""
from __future__ import annotations

import asyncio
import collections
import gc
import ipaddress
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from email.utils import formatdate

import httptools
import orjson
import uvloop

from dynstore import limits
from dynstore.api import model
from dynstore.api.credentials import Credentials
from dynstore.api.errors import (
    BadRequestException,
    DynamoDBError,
    InternalServerError,
    RequestEntityTooLargeException,
    SerializationException,
    ServiceUnavailable,
    UnknownOperationException,
)
from dynstore.api.sigv4 import Verifier
from dynstore.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dynstore.metrics import Metrics

log = logging.getLogger(__name__)

TARGET_PREFIX = "DynamoDB_20120810"
JSON_CONTENT_TYPES = {"application/x-amz-json-1.0", "application/x-amz-json-1.1", "application/json"}

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Request Entity Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}
_UNKNOWN_OPERATION_404 = b"<UnknownOperationException/>\n"
_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")  # a Host header fit to echo in the health answer
_CORS = b"Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: x-amzn-RequestId, x-amz-crc32, Date\r\n"
CORS_MAX_AGE_S = 86400  # how long a browser may reuse a preflight's answer
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Connection phases: what the server is waiting for from the client.
_IDLE, _HEADERS, _BODY = 0, 1, 2


@dataclass(frozen=True)
class ServerLimits:
    """The per-client bounds of one server (defaults from dynstore.limits; tests shrink them)."""

    body_bytes_max: int = limits.HTTP_BODY_BYTES_MAX
    header_bytes_max: int = limits.HTTP_HEADER_BYTES_MAX
    headers_max: int = limits.HTTP_HEADERS_MAX
    connections_max: int = limits.HTTP_CONNECTIONS_MAX
    pipelined_requests_max: int = limits.HTTP_PIPELINED_REQUESTS_MAX
    idle_timeout_s: float = limits.HTTP_IDLE_TIMEOUT_S
    header_timeout_s: float = limits.HTTP_HEADER_TIMEOUT_S
    body_timeout_s: float = limits.HTTP_BODY_TIMEOUT_S
    send_timeout_s: float = limits.HTTP_SEND_TIMEOUT_S


class Request:
    """One parsed HTTP request."""

    __slots__ = ("method", "url", "headers", "body", "keep_alive", "error")

    def __init__(self):
        self.method = b""
        self.url = b""
        self.headers: dict[str, str] = {}  # lower-case name -> value; repeated headers joined with ","
        self.body: list[bytes] | bytes = []  # chunks while reading, bytes once complete
        self.keep_alive = True
        self.error: DynamoDBError | None = None  # answered without dispatch (413, 503), then close


def is_loopback(peername) -> bool:
    if not peername or isinstance(peername, str):
        return False
    try:
        address = ipaddress.ip_address(peername[0].partition("%")[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def freeze_long_lived() -> None:
    """Take what a serving process has loaded by now out of the garbage collector's walk.

    Called by each process that serves, once it listens: its modules, classes, functions and
    open replicas (nine tenths of what the collector tracks in a serving node) live as long as
    the process, and a full collection would otherwise walk them all, some 15,000 objects, and
    stall the loop for 5-25 ms here."""
    gc.collect()
    gc.freeze()


def _header_value(text: str) -> bytes:
    """``text`` fit to echo in a header line: printable ASCII only, so nothing can end the line."""
    return "".join(c for c in text if " " <= c <= "~").encode()


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding removed, at most ``limit`` bytes of it.

    DynamoDB takes gzip: one member or several one after the other, as gzip(1) writes them;
    deflate (zlib-wrapped or raw) and identity are taken too. An encoding it does not know, or
    a body that is not what its encoding says, DynamoDB answers with InternalServerError (500,
    which SDKs retry), and so does dynstore."""
    if not encoding:
        return body
    name = encoding.strip().lower()
    if name == "identity":
        return body
    if name in ("gzip", "x-gzip"):
        out, rest = b"", body
        while True:
            member, rest = _inflate(rest, 31, limit - len(out), name)
            out += member
            if not rest:
                return out
    elif name == "deflate":
        for bits in (15, -15):  # zlib-wrapped as the RFC says, or raw deflate as some clients send
            try:
                out, rest = _inflate(body, bits, limit, name)
            except InternalServerError:
                continue
            if not rest:
                return out
    else:
        raise InternalServerError(f"Unsupported Content-Encoding: {encoding}")
    raise _undecodable(name)


def _undecodable(name: str) -> InternalServerError:
    return InternalServerError(f"Request body is not valid {name} data")


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> tuple[bytes, bytes]:
    """One whole compressed stream from the start of ``data``, and the bytes after it."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise _undecodable(name) from None
    if len(out) > limit:
        raise RequestEntityTooLargeException()
    if not inflater.eof:
        raise _undecodable(name)
    return out, inflater.unused_data


class Server:
    """A DynamoDB endpoint over ``operations`` (``{name: async fn(state, request) -> dict}``).

    ``metrics`` is the node's (``State.metrics``); without one the server counts its requests
    in a registry of its own. ``status`` builds the document ``GET /status`` answers.
    """

    def __init__(self, operations: dict, state, credentials: Credentials, *, region: str = "us-east-1",
                 server_limits: ServerLimits = ServerLimits(), clock=time.time, metrics: Metrics | None = None,
                 status=None):
        unknown = set(operations) - model.OPERATION_NAMES
        if unknown:
            raise ValueError(f"not DynamoDB operations: {sorted(unknown)}")
        self.operations = dict(operations)
        self.state = state
        self.credentials = credentials
        self.region = region
        self.limits = server_limits
        self.clock = clock
        self.verifier = Verifier(credentials)
        self.connections: set[HttpConnection] = set()
        self.metrics = metrics if metrics is not None else Metrics()
        self.status = status  # () -> dict, or None: no /status
        self.metrics.connections.set_function(self.connections.__len__)
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self._closing = False
        self._health = f"healthy: dynamodb.{region}.amazonaws.com ".encode()
        # Request ids: a random per-process prefix and a counter, 52 characters of [A-Z0-9]
        # like DynamoDB's, unique without a random draw per request.
        self._id_prefix = os.urandom(18).hex().upper()
        self._id_counter = 0
        self._date_second = -1
        self._date = b""

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_port=reuse_port or None, backlog=1024)
        self._sweeper = loop.create_task(self._sweep())

    @property
    def port(self) -> int:
        return self._listener.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their current response."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.close_when_idle()

    async def wait_closed(self, grace_s: float = limits.HTTP_SHUTDOWN_GRACE_S) -> None:
        """Wait up to ``grace_s`` for running requests to answer, then drop what is left."""
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _sweep(self) -> None:
        """Close connections whose client has kept the server waiting past a timeout."""
        lim = self.limits
        interval = min(max(min(lim.header_timeout_s, lim.idle_timeout_s, lim.body_timeout_s,
                               lim.send_timeout_s) / 4, 0.05), 1.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)

    # --- one request -----------------------------------------------------------------------

    def request_id(self) -> bytes:
        self._id_counter += 1
        return b"%s%016X" % (self._id_prefix.encode(), self._id_counter)

    def http_date(self) -> bytes:
        now = int(self.clock())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    def response(self, status: int, body: bytes, content_type: bytes, keep_alive: bool, extra: bytes = b"") -> bytes:
        """The whole answer; ``extra``, header lines to add (``cors``)."""
        return b"HTTP/1.1 %d %s\r\nServer: dynstore\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" \
               b"Connection: %s\r\nx-amzn-RequestId: %s\r\nx-amz-crc32: %d\r\n%s\r\n%s" % (
                   status, _REASONS.get(status, b"Error"), self.http_date(), content_type, len(body),
                   b"keep-alive" if keep_alive else b"close", self.request_id(), zlib.crc32(body), extra, body)

    @staticmethod
    def cors(req: "Request") -> bytes:
        """The CORS header lines of the answer to ``req``: none unless it came with an Origin."""
        headers = req.headers
        if "origin" not in headers:
            return b""
        if req.method != b"OPTIONS":
            return _CORS
        return _CORS + b"Access-Control-Max-Age: %d\r\nAccess-Control-Allow-Methods: %s\r\n" \
            b"Access-Control-Allow-Headers: %s\r\n" % (
                CORS_MAX_AGE_S, _header_value(headers.get("access-control-request-method", "")),
                _header_value(headers.get("access-control-request-headers", "")))

    def error_response(self, error: DynamoDBError, content_type: bytes, keep_alive: bool) -> bytes:
        return self.response(error.status, orjson.dumps(error.body()), content_type, keep_alive)

    async def answer(self, req: Request, peer_is_loopback: bool) -> tuple[int, bytes, bytes]:
        """The status, body and content type of the answer to ``req``."""
        if req.method != b"POST":
            if req.method == b"GET":
                path = req.url.partition(b"?")[0]
                if path == b"/":
                    host = req.headers.get("host", "")
                    return 200, f"healthy: {host} ".encode() if _HOST.fullmatch(host) else self._health, b"text/plain"
                if path == b"/metrics":
                    return 200, self.metrics.exposition(), METRICS_CONTENT_TYPE
                if path == b"/status" and self.status is not None:
                    return 200, orjson.dumps(self.status()), b"application/json"
            elif req.method == b"OPTIONS" and "origin" in req.headers:
                return 200, b"", b"text/plain"  # a CORS preflight: its answer is its headers (cors)
            self.metrics.count_error("", UnknownOperationException.__name__)
            return 404, _UNKNOWN_OPERATION_404, b"text/plain"
        headers = req.headers
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type not in JSON_CONTENT_TYPES:
            self.metrics.count_error("", UnknownOperationException.__name__)
            return 404, _UNKNOWN_OPERATION_404, b"text/plain"
        started = time.perf_counter()
        reply_type = content_type.encode()
        operation = ""
        handler = None
        table = ""  # the metrics' table label: set once the request succeeded (see dynstore/metrics.py)
        error_name = ""
        try:
            prefix, _, operation = headers.get("x-amz-target", "").partition(".")
            handler = self.operations.get(operation)
            if prefix != TARGET_PREFIX or handler is None:
                raise UnknownOperationException()
            path, _, query = req.url.decode("latin-1").partition("?")
            self.verifier.verify("POST", path, query, headers, req.body, peer_is_loopback=peer_is_loopback,
                                 now=self.clock())
            raw = decode_body(req.body, headers.get("content-encoding"), self.limits.body_bytes_max)
            if not raw:
                raise SerializationException()
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise SerializationException() from None
            request = model.validate(operation, data)
            result = await handler(self.state, request)
            status, body = 200, b"" if operation in model.EMPTY_REPLY_OPERATIONS else orjson.dumps(result)
            table = request.get("TableName", "")
        except DynamoDBError as error:
            status, body, error_name = error.status, orjson.dumps(error.body()), error.name
        except Exception:
            # A bug, not the client's fault: log it (the traceback holds no request secrets,
            # only code locations and the exception) and keep the connection serving.
            log.exception("internal error in %s", operation or "request")
            error = InternalServerError()
            status, body, error_name = error.status, orjson.dumps(error.body()), error.name
        self.metrics.count_request(table, operation if handler is not None else "", error_name,
                                   time.perf_counter() - started)
        return status, body, reply_type


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, enforces the limits."""

    __slots__ = ("server", "limits", "loop", "transport", "parser", "loopback", "phase", "deadline", "request",
                 "header_bytes", "unparsed_bytes", "body_bytes", "queue", "task", "write_ready", "write_blocked_at",
                 "reading_paused", "closing", "over_limit")

    def __init__(self, server: Server):
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loopback = False
        self.phase = _IDLE
        self.deadline = 0.0
        self.request: Request | None = None
        self.header_bytes = 0  # request line and headers parsed so far
        self.unparsed_bytes = 0  # bytes received while a header section is still incomplete
        self.body_bytes = 0  # body bytes of the request being read (chunked bodies have no length up front)
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task | None = None
        self.write_ready: asyncio.Future | None = None  # set while the transport's buffer is full
        self.write_blocked_at = 0.0
        self.reading_paused = False
        self.closing = False
        self.over_limit = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.loopback = is_loopback(transport.get_extra_info("peername"))
        self.deadline = self.loop.time() + self.limits.idle_timeout_s
        server = self.server
        if server._closing or len(server.connections) >= server.limits.connections_max:
            # Answer at once and close: reading the request first would let a flood of
            # connections hold a parser and a timeout each.
            transport.write(server.error_response(ServiceUnavailable(), b"application/x-amz-json-1.0", False))
            server.metrics.count_error("", ServiceUnavailable.__name__)
            transport.close()
            self.over_limit = True
            return
        server.connections.add(self)

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        self.closing = True
        # A running operation is not cancelled: it finishes (a write stays whole) and its
        # answer is dropped.
        if self.write_ready is not None and not self.write_ready.done():
            self.write_ready.set_result(None)

    def pause_writing(self):
        self.write_ready = self.loop.create_future()
        self.write_blocked_at = self.loop.time()

    def resume_writing(self):
        if self.write_ready is not None:
            self.write_ready.set_result(None)
            self.write_ready = None

    def data_received(self, data: bytes):
        if self.closing or self.over_limit:
            return
        began = self.phase
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, DynamoDBError):
                self.fail(e.__context__)
                return
            raise
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.fail(BadRequestException())
            return
        if self.phase == _HEADERS and began == _HEADERS:
            # httptools holds an incomplete header line in memory: bound it.
            self.unparsed_bytes += len(data)
            if self.unparsed_bytes > self.limits.header_bytes_max:
                self.fail(self._header_section_too_large())

    def eof_received(self):
        # A half-closed client may still read the answers to requests it already sent.
        if not self.queue and self.task is None:
            self.transport.close()
        else:
            self.closing = True
        return True

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self):
        self.request = Request()
        self.phase = _HEADERS
        self.deadline = self.loop.time() + self.limits.header_timeout_s
        self.header_bytes = 0
        self.unparsed_bytes = 0
        self.body_bytes = 0

    def on_url(self, url: bytes):
        self.request.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.header_bytes_max:
            raise self._header_section_too_large()

    def on_header(self, name: bytes, value: bytes):
        self.header_bytes += len(name) + len(value) + 4
        headers = self.request.headers
        if self.header_bytes > self.limits.header_bytes_max:
            raise self._header_section_too_large()
        if len(headers) >= self.limits.headers_max:
            raise BadRequestException(f"Request has more than {self.limits.headers_max} header fields")
        key = name.decode("latin-1").lower()
        previous = headers.get(key)
        headers[key] = value.decode("latin-1") if previous is None else f"{previous},{value.decode('latin-1')}"

    def _header_section_too_large(self) -> BadRequestException:
        return BadRequestException(f"Request header section larger than {self.limits.header_bytes_max} bytes")

    def on_headers_complete(self):
        req = self.request
        req.method = self.parser.get_method()
        req.keep_alive = self.parser.should_keep_alive()
        self.phase = _BODY
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        length = req.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.body_bytes_max):
            if length.isdigit():
                raise RequestEntityTooLargeException()
            raise BadRequestException(f"Invalid Content-Length: {length}")
        if req.headers.get("expect", "").lower() == "100-continue":
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes):
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.body_bytes_max:
            raise RequestEntityTooLargeException()
        self.request.body.append(body)

    def on_message_complete(self):
        req = self.request
        self.request = None
        chunks = req.body
        req.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.phase = _IDLE
        self.deadline = self.loop.time() + self.limits.idle_timeout_s
        self.enqueue(req)

    # --- answering ----------------------------------------------------------------------------

    def enqueue(self, req: Request):
        self.queue.append(req)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif len(self.queue) >= self.limits.pipelined_requests_max and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def fail(self, error: DynamoDBError):
        """Answer ``error`` after the requests already queued, then close: the byte stream is lost."""
        req = Request()
        req.error = error
        req.keep_alive = False
        self.closing = True
        self.request = None
        self.enqueue(req)

    async def _serve(self):
        server = self.server
        transport = self.transport
        try:
            while self.queue:
                req = self.queue.popleft()
                if req.error is not None:
                    response = server.error_response(req.error, b"application/x-amz-json-1.0", False)
                    server.metrics.count_error("", req.error.name)
                    keep_alive = False
                else:
                    status, body, content_type = await server.answer(req, self.loopback)
                    keep_alive = req.keep_alive and not self.closing
                    response = server.response(status, body, content_type, keep_alive, server.cors(req))
                if transport.is_closing():
                    return
                transport.write(response)
                if not keep_alive:
                    transport.close()
                    return
                if self.write_ready is not None:
                    await self.write_ready
                if self.reading_paused and len(self.queue) < server.limits.pipelined_requests_max // 2:
                    self.reading_paused = False
                    transport.resume_reading()
        finally:
            self.task = None
        if self.phase == _IDLE:
            self.deadline = self.loop.time() + server.limits.idle_timeout_s
            if self.closing:
                transport.close()

    def close_when_idle(self):
        self.closing = True
        if self.task is None and self.phase == _IDLE:
            self.transport.close()

    def check_deadline(self, now: float):
        if self.write_ready is not None:
            if now - self.write_blocked_at > self.limits.send_timeout_s:
                self.abort()
        elif self.task is None and now > self.deadline:
            # The client kept us waiting (for a request, its headers or its body): close.
            self.abort()

    def abort(self):
        self.closing = True
        self.server.connections.discard(self)
        self.transport.abort()


class ServerThread:
    """A ``Server`` on its own uvloop event loop in a daemon thread, for synchronous callers
    (embedding dynstore in a program that is not asyncio, tests, benchmarks)."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
        self.server = server
        self.host = host
        self._port = port
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dynstore-server", daemon=True)

    def start(self) -> "ServerThread":
        self._thread.start()
        self.call(self.server.start(self.host, self._port))
        return self

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.server.port}"

    def call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def shut():
            self.server.close()
            await self.server.wait_closed()

        self.call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
