"""dynstore.client against a real DynamoDB endpoint in its own process, over real sockets.

The endpoint (fixture ``peer``) is a ``dynstore up`` process when dynstore's server starts
and answers, else ``moto_server``; DYNSTORE_CLIENT_PEER=dynstore|moto forces one. Faults a
healthy server does not produce on demand (throttling, 5xx, damaged bodies, connections
closed while idle, unprocessed batch items) come from ``ScriptedPeer``: a socket server that
checks each request's signature with dynstore's verifier and answers from a script.
"""
from __future__ import annotations

import asyncio
import decimal
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from decimal import Decimal

import orjson
import pytest

from dynstore.api import sigv4
from dynstore.api.credentials import Credentials
from dynstore.client import AsyncClient, Client, RetryPolicy, marshal
from dynstore.client.errors import (
    ChecksumMismatchError,
    ConditionalCheckFailedException,
    DynamoDBError,
    InternalServerError,
    InvalidSignatureException,
    ResourceInUseException,
    ResourceNotFoundException,
    ServiceUnavailable,
    ThrottlingException,
    UnknownServiceError,
    UnprocessedError,
    ValidationException,
    from_response,
)

KEY_ID = "AKIDDYNSTORECLIENT01"
SECRET = "dynstore/client/test/secret/0000000000"
REGION = "us-east-1"
STARTUP_S = 30.0


# --- the peer: a real server in its own process -------------------------------------------


class Peer:
    def __init__(self, name: str, url: str, proc: subprocess.Popen):
        self.name, self.url, self.proc = name, url, proc
        self.drain = None
        if proc.stdout is not None:  # keep the server's output pipe from filling up
            self.drain = threading.Thread(target=proc.stdout.read, daemon=True)
            self.drain.start()

    def client(self, **options) -> Client:
        return Client(self.url, KEY_ID, SECRET, REGION, **options)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.drain is not None:
            self.drain.join()
            self.proc.stdout.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dynstore(data_dir) -> Peer | None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", DYNSTORE_ACCESS_KEY_ID=KEY_ID, DYNSTORE_SECRET_ACCESS_KEY=SECRET)
    proc = subprocess.Popen([sys.executable, "-c", "from dynstore.cli import main; main()", "up", "--port", "0",
                             "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    for line in proc.stdout:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found:
            peer = Peer("dynstore", found.group(1), proc)
            try:
                with peer.client(retry=RetryPolicy(attempts_max=1)) as probe:
                    list(probe.list_tables())
                return peer
            except Exception:
                peer.stop()
                return None
    proc.wait()
    proc.stdout.close()
    return None


def _start_moto() -> Peer:
    port = _free_port()
    proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = Peer("moto", f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return peer
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                peer.stop()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """A DynamoDB endpoint in its own process: dynstore when it serves, else moto_server."""
    wanted = os.environ.get("DYNSTORE_CLIENT_PEER", "")
    running = None
    if wanted in ("", "dynstore"):
        running = _start_dynstore(tmp_path_factory.mktemp("client") / "data")
        if running is None and wanted == "dynstore":
            pytest.fail("dynstore's server did not start and answer ListTables")
    if running is None:
        running = _start_moto()
    print(f"\nclient tests run against {running.name} at {running.url}")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(peer):
    with peer.client() as c:
        yield c


_tables = iter(range(10**6))


def new_table(client, sort_type: str | None = "N", **options):
    name = f"client{next(_tables)}"
    client.create_table(name, partition_key=("pk", "S"), sort_key=None if sort_type is None else ("sk", sort_type),
                        **options)
    return client.table(name)


# --- values ------------------------------------------------------------------------------------

EVERY_TYPE = {
    "pk": "p",
    "sk": 1,
    "s": "text ü",
    "empty": "",
    "int": -12345678901234567890123456789012345678,
    "dec": Decimal("0.000123"),
    "float": 0.1,
    "true": True,
    "false": False,
    "null": None,
    "bin": b"\x00\xff binary",
    "ss": {"a", "b"},
    "ns": {1, Decimal("2.5"), 3.25},
    "bs": {b"x", b"\x00"},
    "list": [1, "two", None, [3], {"four": 4}],
    "map": {"nested": {"deeper": [True, b"b"]}, "n": 7},
}


def test_every_type_round_trips_through_the_server(client):
    table = new_table(client)
    table.put(EVERY_TYPE)
    got = table.get({"pk": "p", "sk": 1})
    expected = dict(EVERY_TYPE, float=Decimal("0.1"), ns={1, Decimal("2.5"), Decimal("3.25")})
    assert got == expected
    assert type(got["sk"]) is int and type(got["int"]) is int and type(got["dec"]) is Decimal
    assert type(got["bin"]) is bytes and got["ss"] == {"a", "b"}


def test_numbers_read_back_as_int_when_integral():
    assert marshal.from_attribute({"N": "7"}) == 7 and type(marshal.from_attribute({"N": "7"})) is int
    for text in ("7.0", "7E+0", "0.7E1", "-700E-2"):
        value = marshal.from_attribute({"N": text})
        assert type(value) is int and abs(value) == 7, text
    assert marshal.from_attribute({"N": "1.50"}) == Decimal("1.5")
    assert type(marshal.from_attribute({"N": "1E-130"})) is Decimal


def test_values_written_as_dynamodb_json():
    assert marshal.to_item({"f": 0.1, "d": Decimal("1E+2"), "t": (1, "a"), "fs": frozenset({b"x"})}) == {
        "f": {"N": "0.1"}, "d": {"N": "1E+2"}, "t": {"L": [{"N": "1"}, {"S": "a"}]}, "fs": {"BS": ["eA=="]}}
    assert marshal.to_attribute(True) == {"BOOL": True}  # not the int 1
    assert marshal.to_attribute(1e-05) == {"N": "0.00001"}


@pytest.mark.parametrize("value, message", [
    (float("nan"), "no DynamoDB number form"),
    (float("inf"), "no DynamoDB number form"),
    (Decimal("NaN"), "no DynamoDB number form"),
    (set(), "empty set"),
    ({1, "a"}, "one kind of element"),
    ({True}, "cannot hold bool"),
    ({1: "x"}, "map keys must be str"),
    (object(), "object values have no DynamoDB form"),
    (decimal.Context, "type values have no DynamoDB form"),
])
def test_values_without_a_wire_form_are_refused(value, message):
    with pytest.raises(TypeError, match=message):
        marshal.to_attribute(value)


# --- items -------------------------------------------------------------------------------------


def test_get_put_delete_with_conditions_and_returns(client):
    table = new_table(client)
    key = {"pk": "a", "sk": 1}
    assert table.get(key) is None
    assert table.put({**key, "v": 1}, condition="attribute_not_exists(pk)") is None
    with pytest.raises(ConditionalCheckFailedException) as caught:
        table.put({**key, "v": 2}, condition="attribute_not_exists(pk)")
    assert caught.value.status == 400 and caught.value.request_id
    assert table.put({**key, "v": 3}, condition="v = :one", values={":one": 1}, returns="ALL_OLD") == {**key, "v": 1}
    assert table.get(key, consistent=True) == {**key, "v": 3}
    assert table.get(key, projection=["v"]) == {"v": 3}
    assert table.get(key, projection="#v, sk", names={"#v": "v"}) == {"v": 3, "sk": 1}
    with pytest.raises(ConditionalCheckFailedException):
        table.delete(key, condition="v > :n", values={":n": 5})
    assert table.delete(key, returns="ALL_OLD") == {**key, "v": 3}
    assert table.delete(key, returns="ALL_OLD") is None


def test_update_helpers_and_raw_expression(client):
    table = new_table(client)
    key = {"pk": "u", "sk": 1}
    table.put({**key, "gone": 1, "tags": {"a", "b"}})
    new = table.update(key, set={"name": "Ada", "a.b": 2}, remove=["gone"], add={"n": 5, "tags": {"c"}},
                       returns="ALL_NEW")
    assert new == {**key, "name": "Ada", "a.b": 2, "n": 5, "tags": {"a", "b", "c"}}
    assert table.update(key, delete={"tags": {"a"}}, returns="UPDATED_NEW") == {"tags": {"b", "c"}}
    assert table.update(key, expression="SET n = n + :d", values={":d": 10, ":five": 5}, condition="n = :five",
                        returns="UPDATED_OLD") == {"n": 5}
    assert table.get(key)["n"] == 15
    with pytest.raises(ValueError, match="either expression or"):
        table.update(key, set={"x": 1}, expression="SET y = :y")
    with pytest.raises(ValidationException):
        table.update(key, expression="SET n = n + :s", values={":s": "text"})


def test_query_pages_limits_and_order(client):
    table = new_table(client)
    table.batch_write(puts=[{"pk": "q", "sk": i, "odd": i % 2 == 1} for i in range(60)])
    table.put({"pk": "other", "sk": 0})
    assert [item["sk"] for item in table.query({"pk": "q"}, page_size=7)] == list(range(60))
    assert [item["sk"] for item in table.query({"pk": "q"}, forward=False, limit=5)] == [59, 58, 57, 56, 55]
    found = table.query("pk = :p AND sk BETWEEN :lo AND :hi", values={":p": "q", ":lo": 10, ":hi": 19, ":t": True},
                        filter="odd = :t", page_size=3)
    assert [item["sk"] for item in found] == [11, 13, 15, 17, 19]
    assert [item["sk"] for item in table.query({"pk": "q", "sk": 42}, projection=["sk"])] == [42]
    assert table.count({"pk": "q"}) == 60
    assert table.count() == 61
    assert [item["sk"] for item in table.query({"pk": "q"}, start={"pk": "q", "sk": 57})] == [58, 59]


def test_query_is_lazy(client):
    table = new_table(client)
    table.batch_write(puts=[{"pk": "lazy", "sk": i} for i in range(10)])
    pages = table.query({"pk": "lazy"}, page_size=2)
    assert next(pages)["sk"] == 0
    table.put({"pk": "lazy", "sk": 100})  # written after the first page: the iterator still finds it
    assert [item["sk"] for item in pages][-1] == 100


def test_scan_filter_and_segments(client):
    table = new_table(client, sort_type=None)
    table.batch_write(puts=[{"pk": f"k{i}", "n": i} for i in range(40)])
    assert sorted(item["n"] for item in table.scan(page_size=6)) == list(range(40))
    assert sorted(item["n"] for item in table.scan(filter="n >= :x", values={":x": 30})) == list(range(30, 40))
    assert len(list(table.scan(limit=7))) == 7
    parts = [sorted(item["n"] for item in table.scan(segment=s, total_segments=3)) for s in range(3)]
    assert sorted(n for part in parts for n in part) == list(range(40))


def test_batch_write_and_get_span_many_requests(client):
    table = new_table(client)
    assert table.batch_write(puts=[{"pk": "b", "sk": i, "pad": "x" * 100} for i in range(130)]) == 130
    keys = [{"pk": "b", "sk": i} for i in range(0, 260, 2)]  # half of them exist
    got = list(table.batch_get(keys, projection=["sk"]))
    assert sorted(item["sk"] for item in got) == list(range(0, 130, 2)) and got[0].keys() == {"sk"}
    assert table.batch_write(deletes=[{"pk": "b", "sk": i} for i in range(100)]) == 100
    assert table.count({"pk": "b"}) == 30


# --- tables and errors -----------------------------------------------------------------------------


def test_table_lifecycle(client):
    name = "client_lifecycle"
    description = client.create_table(name, partition_key=("id", "S"), sort_key=("at", "N"),
                                      read_units=5, write_units=5)
    assert description["TableStatus"] == "ACTIVE"
    assert description["ProvisionedThroughput"]["ReadCapacityUnits"] == 5
    assert name in list(client.list_tables())
    assert client.table(name).describe()["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"},
                                                         {"AttributeName": "at", "KeyType": "RANGE"}]
    with pytest.raises(ResourceInUseException):
        client.create_table(name, partition_key=("id", "S"))
    assert client.delete_table(name)["TableName"] == name
    with pytest.raises(ResourceNotFoundException) as caught:
        client.describe_table(name)
    assert isinstance(caught.value, ResourceNotFoundException) and caught.value.status == 400


def test_raw_call_and_typed_validation_error(client):
    table = new_table(client, sort_type=None)
    client.call("PutItem", {"TableName": table.name, "Item": {"pk": {"S": "raw"}, "n": {"N": "1.50"}}})
    assert client.call("GetItem", {"TableName": table.name, "Key": {"pk": {"S": "raw"}}})["Item"]["pk"] == {"S": "raw"}
    with pytest.raises(ValidationException) as caught:
        table.put({"pk": ""})  # empty strings are not allowed in keys
    assert caught.value.message


def test_error_bodies_map_to_classes():
    error = from_response(400, b'{"__type":"com.amazonaws.dynamodb.v20120810#TableNotFoundException",'
                               b'"message":"gone","Extra":1}', "RID")
    assert type(error).__name__ == "TableNotFoundException" and error.message == "gone"
    assert error.extra == {"Extra": 1} and error.request_id == "RID"
    unknown = from_response(400, b'{"__type":"x#SomethingNewException","Message":"m"}', None)
    assert isinstance(unknown, UnknownServiceError) and unknown.wire_type == "x#SomethingNewException"
    assert isinstance(from_response(503, b"<html>busy</html>", None), ServiceUnavailable)
    assert isinstance(from_response(502, b"", None), InternalServerError)


# --- retries and faults, from a scripted server -------------------------------------------------


class ScriptedPeer:
    """Answers request n with ``script[n](request)`` -> (status, body, options) after checking
    its SigV4 signature with dynstore's own verifier. Options: ``crc`` (a wrong x-amz-crc32
    when False), ``close`` (close the socket after answering, while announcing keep-alive)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[tuple[str, dict]] = []
        self.connections = 0
        self.verifier = sigv4.Verifier(Credentials({KEY_ID: SECRET}))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers["content-length"])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                try:
                    self.verifier.verify("POST", "/", "", headers, body, peer_is_loopback=True, now=time.time())
                except DynamoDBError as refused:
                    status, answer, options = refused.status, refused.body(), {}
                else:
                    operation = headers["x-amz-target"].split(".")[1]
                    self.requests.append((operation, orjson.loads(body)))
                    status, answer, options = self.script.pop(0)(self.requests[-1])
                answer = answer if isinstance(answer, bytes) else orjson.dumps(answer)
                crc = zlib.crc32(answer) + (0 if options.get("crc", True) else 1)
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\nx-amz-crc32: {crc}\r\n"
                             f"x-amzn-RequestId: R{len(self.requests)}\r\n\r\n".encode() + answer)
                if options.get("close"):
                    return

    def close(self):
        self.listener.close()


def answer(status=200, body=None, **options):
    return lambda request: (status, {} if body is None else body, options)


def error(name, status=400):
    return answer(status, {"__type": f"com.amazonaws.dynamodb.v20120810#{name}", "message": name})


ITEM = {"Item": {"pk": {"S": "x"}}}
FAST = dict(base_s=0.001, cap_s=0.004, rng=random.Random(7))


@pytest.fixture
def scripted():
    opened = []

    def start(*script, **retry):
        peer = ScriptedPeer(script)
        c = Client(peer.url, KEY_ID, SECRET, REGION, retry=RetryPolicy(**{**FAST, **retry}), timeout_s=5)
        opened.append((peer, c))
        return peer, c

    yield start
    for peer, c in opened:
        c.close()
        peer.close()


@pytest.mark.parametrize("fault", ["ProvisionedThroughputExceededException", "ThrottlingException",
                                   "RequestLimitExceeded"])
def test_throttling_is_retried(scripted, fault):
    peer, c = scripted(error(fault), error(fault), answer(body=ITEM))
    assert c.table("t").get({"pk": "x"}) == {"pk": "x"}
    assert [op for op, _ in peer.requests] == ["GetItem"] * 3
    assert peer.connections == 1  # keep-alive across the retries


def test_server_errors_are_retried_until_attempts_run_out(scripted):
    peer, c = scripted(*[error("InternalServerError", 500)] * 4, attempts_max=4)
    with pytest.raises(InternalServerError) as caught:
        c.table("t").get({"pk": "x"})
    assert caught.value.status == 500 and len(peer.requests) == 4


def test_client_errors_are_not_retried(scripted):
    peer, c = scripted(error("ValidationException"), error("ConditionalCheckFailedException"))
    with pytest.raises(ValidationException):
        c.table("t").put({"pk": "x"})
    with pytest.raises(ConditionalCheckFailedException):
        c.table("t").put({"pk": "x"})
    assert len(peer.requests) == 2


def test_damaged_body_is_retried_and_never_parsed(scripted):
    peer, c = scripted(answer(body=ITEM, crc=False), answer(body=ITEM))
    assert c.table("t").get({"pk": "x"}) == {"pk": "x"}
    _, c = scripted(*[answer(body=ITEM, crc=False)] * 2, attempts_max=2)
    with pytest.raises(ChecksumMismatchError):
        c.table("t").get({"pk": "x"})


def test_connection_closed_while_idle_is_replaced_without_an_attempt(scripted):
    peer, c = scripted(answer(body=ITEM, close=True), answer(body=ITEM), attempts_max=1)
    table = c.table("t")
    assert table.get({"pk": "x"}) == {"pk": "x"}
    time.sleep(0.05)  # the server's close reaches the pooled socket
    assert table.get({"pk": "x"}) == {"pk": "x"}
    assert peer.connections == 2 and len(peer.requests) == 2


def test_connection_refused_is_retried_then_raised():
    port = _free_port()
    c = Client(f"http://127.0.0.1:{port}", KEY_ID, SECRET, retry=RetryPolicy(attempts_max=3, **FAST))
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        c.table("t").get({"pk": "x"})
    assert time.monotonic() - started < 1


def test_backoff_is_full_jitter_capped_and_seeded():
    policy = RetryPolicy(base_s=0.05, cap_s=1.0, rng=random.Random(1))
    delays = [[policy.delay_s(n) for _ in range(200)] for n in range(8)]
    for n, seen in enumerate(delays):
        bound = min(1.0, 0.05 * 2 ** n)
        assert all(0 <= d <= bound for d in seen) and max(seen) > bound * 0.8
    again = RetryPolicy(base_s=0.05, cap_s=1.0, rng=random.Random(1))
    assert [again.delay_s(0) for _ in range(200)] == delays[0]
    assert not policy.retryable(ThrottlingException(), policy.attempts_max - 1)
    assert policy.retryable(ThrottlingException(), 0) and not policy.retryable(ValidationException(), 0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts_max=0)


def _unprocessed_half(request):
    items = request[1]["RequestItems"]["t"]
    return 200, {"UnprocessedItems": {"t": items[len(items) // 2:]} if len(items) > 1 else {}}, {}


def test_batch_write_resends_unprocessed_items(scripted):
    peer, c = scripted(*[_unprocessed_half] * 10)
    assert c.table("t").batch_write(puts=[{"pk": str(i)} for i in range(30)]) == 30
    sent = [entry["PutRequest"]["Item"]["pk"]["S"] for _, r in peer.requests for entry in r["RequestItems"]["t"]]
    assert [len(r["RequestItems"]["t"]) for _, r in peer.requests][0] == 25
    assert sorted(set(sent), key=int) == [str(i) for i in range(30)]


def test_batch_without_progress_raises_with_the_rest(scripted):
    stuck = lambda request: (200, {"UnprocessedItems": request[1]["RequestItems"]}, {})  # noqa: E731
    _, c = scripted(*[stuck] * 3, attempts_max=3)
    with pytest.raises(UnprocessedError) as caught:
        c.table("t").batch_write(puts=[{"pk": str(i)} for i in range(30)])
    assert len(caught.value.unprocessed["t"]) == 30


def test_batch_get_resends_unprocessed_keys(scripted):
    def half(request):
        keys = request[1]["RequestItems"]["t"]["Keys"]
        done, rest = keys[: len(keys) // 2 or 1], keys[len(keys) // 2 or 1:]
        body = {"Responses": {"t": done}}
        if rest:
            body["UnprocessedKeys"] = {"t": {"Keys": rest, "ConsistentRead": True}}
        return 200, body, {}

    peer, c = scripted(*[half] * 20)
    got = list(c.table("t").batch_get([{"pk": str(i)} for i in range(150)], consistent=True))
    assert sorted(int(item["pk"]) for item in got) == list(range(150))
    assert all(r["RequestItems"]["t"]["ConsistentRead"] for _, r in peer.requests)


def test_signing_failures_are_typed(scripted):
    peer, _ = scripted()
    with Client(peer.url, KEY_ID, "wrong secret") as c, pytest.raises(InvalidSignatureException) as caught:
        c.table("t").get({"pk": "x"})
    assert caught.value.status == 400 and peer.requests == []


# --- concurrency and asyncio ----------------------------------------------------------------------


def test_threads_share_one_client(client):
    table = new_table(client, sort_type=None)

    def work(n):
        for i in range(20):
            table.put({"pk": f"{n}-{i}", "n": i})
            assert table.get({"pk": f"{n}-{i}"})["n"] == i

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert table.count() == 120


def test_async_client_against_the_peer(peer, client):
    name = new_table(client).name

    async def main():
        async with AsyncClient(peer.url, KEY_ID, SECRET, REGION, connections_max=4) as ac:
            table = ac.table(name)
            await asyncio.gather(*(table.put({"pk": "a", "sk": i, "v": f"x{i}"}) for i in range(40)))
            items = await asyncio.gather(*(table.get({"pk": "a", "sk": i}) for i in range(40)))
            assert [item["v"] for item in items] == [f"x{i}" for i in range(40)]
            assert len(ac._idle) <= 4
            assert [item["sk"] async for item in table.query({"pk": "a"}, page_size=9)] == list(range(40))
            assert await table.count({"pk": "a"}) == 40
            assert await table.batch_write(puts=[{"pk": "b", "sk": i} for i in range(30)]) == 30
            assert len([x async for x in table.batch_get([{"pk": "b", "sk": i} for i in range(30)])]) == 30
            assert await table.update({"pk": "a", "sk": 0}, add={"n": 2}, returns="UPDATED_NEW") == {"n": 2}
            with pytest.raises(ConditionalCheckFailedException):
                await table.delete({"pk": "a", "sk": 0}, condition="attribute_not_exists(pk)")
            with pytest.raises(ResourceNotFoundException):
                await ac.describe_table("missing_table")
            assert name in [n async for n in ac.list_tables()]

    asyncio.run(main())


def test_async_client_retries_and_replaces_closed_connections(scripted):
    peer, _ = scripted(error("ThrottlingException"), answer(body=ITEM, close=True), answer(body=ITEM))

    async def main():
        ac = AsyncClient(peer.url, KEY_ID, SECRET, retry=RetryPolicy(attempts_max=2, **FAST))
        assert await ac.table("t").get({"pk": "x"}) == {"pk": "x"}
        await asyncio.sleep(0.05)
        assert await ac.table("t").get({"pk": "x"}) == {"pk": "x"}
        await ac.close()

    asyncio.run(main())
    assert len(peer.requests) == 3 and peer.connections == 2


def test_async_timeout_is_raised(scripted):
    peer, _ = scripted(lambda request: time.sleep(1) or (200, {}, {}))

    async def main():
        ac = AsyncClient(peer.url, KEY_ID, SECRET, retry=RetryPolicy(attempts_max=1), timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await ac.table("t").get({"pk": "x"})

    asyncio.run(main())

