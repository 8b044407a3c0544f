"""The asyncio client: the core's requests over pooled keep-alive connections.

Same API as the blocking client, with awaitables and async iterators::

    async with AsyncClient("http://127.0.0.1:8000", key, secret) as client:
        table = client.table("users")
        await table.put({"id": "u1"})
        async for item in table.query({"id": "u1"}): ...

Each connection carries one request at a time; concurrent tasks get their own connections,
at most ``limits.CLIENT_CONNECTIONS_MAX`` of them per client (further requests wait for
one to come free). A client belongs to the event loop it is first used on.

Faults handled: as the blocking client (sync.py): pooled connections the server closed while
idle, connection failures and timeouts, and everything core.py handles.
"""
from __future__ import annotations

import asyncio
import time

import orjson

from dynstore import limits
from dynstore.client import core, errors


class _Connection(asyncio.Protocol):
    """One connection: ``exchange`` writes a request and resolves with its response."""

    def __init__(self):
        self.reader = core.ResponseReader()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        try:
            response = self.reader.feed(data)
        except ConnectionError as error:
            self._fail(error)
            self.transport.close()
            return
        if response is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)

    def connection_lost(self, exc):
        self.closed = True
        self._fail(exc if exc is not None else ConnectionError("the server closed the connection"))

    def _fail(self, error: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    async def exchange(self, request: bytes, timeout_s: float) -> core.Response:
        if self.closed:
            raise ConnectionError("the server closed the connection")
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._fail, TimeoutError(f"no response within {timeout_s} s"))
        try:
            self.transport.write(request)
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class AsyncClient(core.ClientCalls):
    """An asyncio DynamoDB client; options as core.ClientCalls, plus ``connections_max``."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1", *,
                 connections_max: int = limits.CLIENT_CONNECTIONS_MAX, **options):
        super().__init__(endpoint, access_key, secret_key, region, **options)
        self._slots = asyncio.Semaphore(connections_max)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections; the client opens new ones if used again."""
        while self._idle:
            self._idle.pop().close()

    async def call(self, operation: str, payload: dict) -> dict:
        """Send one operation (DynamoDB JSON in and out), retrying what is transient."""
        body = orjson.dumps(payload)
        attempt = 0
        while True:
            try:
                return core.outcome(await self._exchange(operation, body))
            except errors.TRANSIENT as error:
                if not self.retry.retryable(error, attempt):
                    raise
                await asyncio.sleep(self.retry.delay_s(attempt))
                attempt += 1

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        server_hostname = self.endpoint.host if self._ssl is not None else None
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.endpoint.host, self.endpoint.port, ssl=self._ssl,
                                   server_hostname=server_hostname),
            self.timeout_s)
        return conn

    async def _exchange(self, operation: str, body: bytes) -> core.Response:
        request = self._builder.build(operation, body, time.time())
        async with self._slots:
            while True:
                try:
                    conn, pooled = self._idle.pop(), True
                except IndexError:
                    conn, pooled = await self._connect(), False
                try:
                    response = await conn.exchange(request, self.timeout_s)
                except BaseException as error:
                    conn.close()
                    # As in sync.Client: a pooled connection closed while idle never saw the request.
                    if pooled and isinstance(error, ConnectionError) and not conn.reader.started:
                        continue
                    raise
                if response.keep_alive and not conn.closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                return response

    # The shell side of core.Table and core.ClientCalls.

    async def _run(self, operation: str, payload: dict, parse):
        return parse(await self.call(operation, payload))

    async def _iterate(self, steps: core.Steps):
        while (step := steps.next()) is not None:
            operation, payload, delay_s = step
            if delay_s:
                await asyncio.sleep(delay_s)
            for value in steps.feed(await self.call(operation, payload)):
                yield value

    async def _drain(self, steps: core.Steps):
        async for _ in self._iterate(steps):
            pass
        return steps.result
