"""The generator's HTTP/1.1 keep-alive connections to one DynamoDB endpoint, pooled.

Requests are framed, signed (SigV4, at send time) and their responses framed by
dynstore.client's sans-I/O core (``RequestBuilder``, ``ResponseReader``); this module only
moves bytes on asyncio transports. One connection carries one request at a time (no
pipelining: DynamoDB clients do not pipeline, and a pipelined generator would measure
head-of-line blocking of its own making).

The pool opens connections on demand up to its maximum; past it, a request waits in FIFO
order for a connection to come free. That wait is part of the latency the generator reports
(it is measured from the scheduled send), so a pool too small shows as latency, never hides.

Faults handled: the server closing a connection (after a response without keep-alive, or
at any time: the request in flight fails with ConnectionError and the pool replaces the
connection for whoever waits), garbled HTTP (ConnectionError, connection dropped).
"""
from __future__ import annotations

import asyncio
import collections
import socket
import time
from typing import Awaitable

from dynstore.client.core import Endpoint, RequestBuilder, Response, ResponseReader


class Connection(asyncio.Protocol):
    __slots__ = ("_transport", "_reader", "_waiter", "alive")

    def __init__(self):
        self._transport: asyncio.Transport | None = None
        self._reader = ResponseReader()
        self._waiter: asyncio.Future | None = None
        self.alive = True

    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes, waiter: asyncio.Future) -> None:
        """Send ``request``; ``waiter`` gets the Response with the instant its last byte came
        in, or a ConnectionError."""
        self._waiter = waiter
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        received = time.monotonic()
        try:
            response = self._reader.feed(data)
        except ConnectionError as error:
            self._fail(error)
            return
        if response is None:
            return
        if not response.keep_alive:
            self.alive = False
            self._transport.close()
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._fail(ConnectionError("the server sent a response to no request"))
        elif not waiter.done():
            waiter.set_result((response, received))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the server closed the connection{f': {exc}' if exc else ''}"))

    def _fail(self, error: ConnectionError) -> None:
        self.alive = False
        if self._transport is not None:
            self._transport.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.alive = False
        self._transport.close()


class Pool:
    """Connections to one endpoint, at most ``size_max`` open; ``call`` sends one operation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, key_id: str, secret: str, region: str,
                 size_max: int):
        self._loop = loop
        self.endpoint = Endpoint.parse(url)
        if self.endpoint.scheme != "http":
            raise ValueError(f"the generator speaks plain HTTP only (TLS would measure the generator): {url}")
        self._builder = RequestBuilder(self.endpoint, key_id, secret, region)
        self.size_max = size_max
        self._idle: list[Connection] = []
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._open = 0  # connections open or being opened

    async def open(self, count: int) -> None:
        """Open ``count`` connections ahead of the run, so that it does not measure handshakes."""
        conns = await asyncio.gather(*(self._connect() for _ in range(min(count, self.size_max))))
        self._idle.extend(conns)

    async def _connect(self) -> Connection:
        self._open += 1
        try:
            _, conn = await self._loop.create_connection(Connection, self.endpoint.host, self.endpoint.port)
        except BaseException:
            self._open -= 1
            raise
        return conn

    def build(self, operation: str, body: bytes) -> bytes:
        """One request, framed and signed now, to be sent by ``call`` (within the signature's
        validity, minutes)."""
        return self._builder.build(operation, body, time.time())

    def call(self, request: bytes) -> Awaitable[tuple[Response, float, float]]:
        """Send ``request``: at once when a connection is idle (before this returns), else on
        the next connection to open or come free. Awaiting the result gives the response, the
        ``time.monotonic()`` instant the request was sent and the one its last byte came in."""
        conn = self._take_idle()
        if conn is None:
            return self._call_later(request)
        return self._exchange(conn, request)

    async def _call_later(self, request: bytes) -> tuple[Response, float, float]:
        if self._open < self.size_max:
            conn = await self._connect()
        else:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            conn = await waiter
        return await self._exchange(conn, request)

    def _exchange(self, conn: Connection, request: bytes) -> Awaitable[tuple[Response, float, float]]:
        done = self._loop.create_future()
        sent = time.monotonic()
        conn.exchange(request, done)
        return self._answer(conn, done, sent)

    async def _answer(self, conn: Connection, done: asyncio.Future, sent: float) -> tuple[Response, float, float]:
        try:
            response, received = await done
        finally:
            self._release(conn)
        return response, sent, received

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                return conn
            self._open -= 1  # the server closed it while it sat idle
        return None

    def _release(self, conn: Connection) -> None:
        if not conn.alive:
            self._open -= 1
            if self._waiters:
                self._loop.create_task(self._replace())
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _replace(self) -> None:
        try:
            conn = await self._connect()
        except OSError as error:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
            return
        self._release(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
