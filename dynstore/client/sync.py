"""The blocking client: the core's requests over plain sockets kept open between requests.

Connections are pooled per client: a request takes an idle one (or opens one), sends, reads
the whole response, and gives it back unless the server asked to close it. One connection
carries one request at a time, so threads sharing a client each get their own connection.

Faults handled: a pooled connection the server closed while it sat idle (the request on it
fails before any byte of a response arrives, so the server never read it: it goes out again
on a new connection without counting as an attempt), connection failures and timeouts
(retried like server errors), and everything core.py handles.
"""
from __future__ import annotations

import socket
import time

import orjson

from dynstore import limits
from dynstore.client import core, errors


class _Connection:
    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = core.ResponseReader()

    def exchange(self, request: bytes) -> core.Response:
        self.sock.sendall(request)
        recv = self.sock.recv
        feed = self.reader.feed
        while True:
            data = recv(limits.CLIENT_RECV_BYTES)
            if not data:
                raise ConnectionError("the server closed the connection")
            response = feed(data)
            if response is not None:
                return response

    def close(self) -> None:
        self.sock.close()


class Client(core.ClientCalls):
    """A blocking DynamoDB client: ``Client("http://127.0.0.1:8000", key, secret, "us-east-1")``.

    ``client.table(name)`` gives the item API (core.Table); ``client.call(operation, payload)``
    any operation in DynamoDB JSON. Safe to share between threads. Options: core.ClientCalls.
    """

    _address: tuple | None = None  # (family, sockaddr) of the server's address that answered last

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> _Connection:
        # The first connection resolves the name and tries each address; later ones go straight
        # to the address that answered (a server that closes every connection would otherwise
        # cost a name lookup per request) until connecting there fails.
        address = self._address
        if address is None:
            sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=self.timeout_s)
            self._address = (sock.family, sock.getpeername())
        else:
            sock = socket.socket(address[0], socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(address[1])
            except BaseException:
                sock.close()
                self._address = None
                raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.endpoint.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def close(self) -> None:
        """Close the pooled connections; the client opens new ones if used again."""
        while self._idle:
            self._idle.pop().close()

    def call(self, operation: str, payload: dict) -> dict:
        """Send one operation (DynamoDB JSON in and out), retrying what is transient."""
        body = orjson.dumps(payload)
        attempt = 0
        while True:
            try:
                return core.outcome(self._exchange(operation, body))
            except errors.TRANSIENT as error:
                if not self.retry.retryable(error, attempt):
                    raise
                time.sleep(self.retry.delay_s(attempt))
                attempt += 1

    def _exchange(self, operation: str, body: bytes) -> core.Response:
        request = self._builder.build(operation, body, time.time())
        while True:
            try:
                conn, pooled = self._idle.pop(), True
            except IndexError:
                conn, pooled = self._connect(), False
            try:
                response = conn.exchange(request)
            except BaseException as error:
                conn.close()
                # A pooled connection that the server closed while it sat idle fails before any
                # byte of a response: the request was not read, so it goes out on another one.
                if pooled and isinstance(error, ConnectionError) and not conn.reader.started:
                    continue
                raise
            if response.keep_alive:
                self._idle.append(conn)
            else:
                conn.close()
            return response

    # The shell side of core.Table and core.ClientCalls.

    def _run(self, operation: str, payload: dict, parse):
        return parse(self.call(operation, payload))

    def _iterate(self, steps: core.Steps):
        while (step := steps.next()) is not None:
            operation, payload, delay_s = step
            if delay_s:
                time.sleep(delay_s)
            yield from steps.feed(self.call(operation, payload))

    def _drain(self, steps: core.Steps):
        for _ in self._iterate(steps):
            pass
        return steps.result
