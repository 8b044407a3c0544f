"""What the front end costs per request: HTTP parsing, SigV4, JSON, model validation, dispatch
and encoding, for GetItem and PutItem requests with 1 KB items.

* ``test_inprocess_*``: request bytes fed straight to the connection protocol on a uvloop loop,
  the answer collected from its transport; the operation answers at once, so the figure is the
  front end alone. Each round serves ``BATCH`` requests; ``per_request_us`` is in extra_info.
* ``test_parts_*``: the pieces on their own (signature check, validation).
* ``test_loopback_*``: a real server thread and a client on a raw socket, one request at a
  time (round trip, client included).

Run: pytest bench/bench_server.py --benchmark-only -p no:cacheprovider
"""
import asyncio
import socket
import time

import orjson
import pytest
import uvloop

from dynstore.api import model
from dynstore.api.credentials import Credentials
from dynstore.api.server import HttpConnection, Server, ServerThread
from dynstore.api.sigv4 import sign

KEY_ID, SECRET = "AKIDBENCH00000000001", "bench/secret/0000000000000000000000000"
CREDENTIALS = Credentials({KEY_ID: SECRET})
BATCH = 200

ITEM_1KB = {f"attr{i}": {"S": "x" * 90} for i in range(9)} | {"pk": {"S": "user#000123"}, "n": {"N": "12345.678"}}
GET_REQUEST = {"TableName": "bench", "Key": {"pk": {"S": "user#000123"}}, "ConsistentRead": False}
PUT_REQUEST = {"TableName": "bench", "Item": ITEM_1KB, "ConditionExpression": "attribute_not_exists(pk)"}


async def get_item(state, request):
    return {"Item": ITEM_1KB}


async def put_item(state, request):
    return {}


OPERATIONS = {"GetItem": get_item, "PutItem": put_item}


def wire(port: int, operation: str, request: dict) -> bytes:
    body = orjson.dumps(request)
    headers = {"host": f"127.0.0.1:{port}", "content-type": "application/x-amz-json-1.0",
               "x-amz-target": f"DynamoDB_20120810.{operation}"}
    headers.update(sign("POST", "/", "", headers, body, KEY_ID, SECRET, "us-east-1", now=time.time()))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class Collector:
    """The transport end the protocol writes its answers to."""

    def __init__(self, loop):
        self.loop = loop
        self.answered: asyncio.Future | None = None

    def write(self, data: bytes):
        assert data.startswith(b"HTTP/1.1 200 OK"), data[:300]
        self.answered.set_result(None)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self):
        return False

    def close(self):
        raise AssertionError("the benchmark connection must stay open")


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def inprocess(benchmark, loop, operation, request):
    server = Server(OPERATIONS, None, CREDENTIALS)
    data = wire(8000, operation, request)
    transport = Collector(loop)

    async def connect():
        conn = HttpConnection(server)
        conn.connection_made(transport)
        return conn

    conn = loop.run_until_complete(connect())

    async def batch():
        for _ in range(BATCH):
            transport.answered = loop.create_future()
            conn.data_received(data)
            await transport.answered

    benchmark(lambda: loop.run_until_complete(batch()))
    benchmark.extra_info["per_request_us"] = round(benchmark.stats.stats.median / BATCH * 1e6, 2)
    benchmark.extra_info["request_bytes"] = len(data)


def test_inprocess_get_item(benchmark, loop):
    inprocess(benchmark, loop, "GetItem", GET_REQUEST)


def test_inprocess_put_item(benchmark, loop):
    inprocess(benchmark, loop, "PutItem", PUT_REQUEST)


def test_parts_sigv4_verify(benchmark):
    server = Server(OPERATIONS, None, CREDENTIALS)
    body = orjson.dumps(PUT_REQUEST)
    headers = {"host": "127.0.0.1:8000", "content-type": "application/x-amz-json-1.0",
               "x-amz-target": "DynamoDB_20120810.PutItem"}
    headers.update({k.lower(): v for k, v in sign("POST", "/", "", headers, body, KEY_ID, SECRET, "us-east-1",
                                                   now=time.time()).items()})
    benchmark(server.verifier.verify, "POST", "/", "", headers, body, peer_is_loopback=True, now=time.time())


@pytest.mark.parametrize("operation, request_", [("GetItem", GET_REQUEST), ("PutItem", PUT_REQUEST)])
def test_parts_validate(benchmark, operation, request_):
    body = orjson.dumps(request_)
    benchmark(lambda: model.validate(operation, orjson.loads(body)))


@pytest.fixture(scope="module")
def server_thread():
    thread = ServerThread(Server(OPERATIONS, None, CREDENTIALS)).start()
    yield thread
    thread.stop()


def loopback(benchmark, server_thread, operation, request):
    data = wire(server_thread.server.port, operation, request)
    sock = socket.create_connection(("127.0.0.1", server_thread.server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def round_trip():
        sock.sendall(data)
        received = sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)

    benchmark(round_trip)
    sock.close()


def test_loopback_get_item(benchmark, server_thread):
    loopback(benchmark, server_thread, "GetItem", GET_REQUEST)


def test_loopback_put_item(benchmark, server_thread):
    loopback(benchmark, server_thread, "PutItem", PUT_REQUEST)
