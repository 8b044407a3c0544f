"""The HTTP front end over real sockets: boto3, http.client and raw sockets against a real Server.

The operations table here is a small real one (ListTables that lists nothing, GetItem that
answers with the key it was given, DescribeTable with a bug in it); the storage behind
operations is tested with the operations themselves.
"""
import contextlib
import gzip
import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib

import boto3
import botocore.config
import orjson
import pytest
from botocore.exceptions import ClientError

from dynstore.api.credentials import Credentials
from dynstore.api.server import Server, ServerLimits, ServerThread
from dynstore.api.sigv4 import sign

KEY_ID = "AKIDDYNSTORETEST0001"
SECRET = "test/secret/of/the/server/suite/0000000"
CREDENTIALS = Credentials({KEY_ID: SECRET})
JSON_10 = "application/x-amz-json-1.0"


async def list_tables(state, request):
    return {"TableNames": []}


async def get_item(state, request):
    return {"Item": request["Key"]}


async def describe_table(state, request):
    return {"Table": {}[request["TableName"]]}  # a bug: KeyError


async def accept(state, request):
    return {}


OPERATIONS = {"ListTables": list_tables, "GetItem": get_item, "DescribeTable": describe_table,
              "CreateTable": accept, "Scan": accept, "BatchGetItem": accept, "TagResource": accept}

SMALL_LIMITS = ServerLimits(body_bytes_max=64 * 1024, header_bytes_max=4096, idle_timeout_s=1.5,
                            header_timeout_s=0.5, body_timeout_s=0.5, send_timeout_s=1.0)


def start_server(operations=OPERATIONS, server_limits=SMALL_LIMITS, state=None) -> ServerThread:
    return ServerThread(Server(operations, state, CREDENTIALS, server_limits=server_limits)).start()


@pytest.fixture(scope="module")
def server():
    thread = start_server()
    yield thread
    thread.stop()


def client(endpoint, key_id=KEY_ID, secret=SECRET, validate=True):
    config = botocore.config.Config(parameter_validation=validate, retries={"max_attempts": 1})
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=config)


def signed_headers(port, operation, body: bytes, *, now=None, secret=SECRET, key_id=KEY_ID, extra=None):
    headers = {"host": f"127.0.0.1:{port}", "content-type": JSON_10, "x-amz-target": f"DynamoDB_20120810.{operation}"}
    headers.update(extra or {})
    headers.update(sign("POST", "/", "", headers, body, key_id, secret, "us-east-1",
                        now=time.time() if now is None else now))
    return headers


def post(conn: http.client.HTTPConnection, port, operation, body: bytes, **kw):
    """A signed request on ``conn``; returns (status, headers, body) after checking the wire contract."""
    conn.request("POST", "/", body=body, headers=signed_headers(port, operation, body, **kw))
    return read(conn)


def read(conn):
    resp = conn.getresponse()
    data = resp.read()
    check_wire(resp.status, resp.headers, data)
    return resp.status, resp.headers, data


def check_wire(status, headers, body):
    """What every response carries: a request id and a crc32 of the body; errors in DynamoDB's JSON."""
    assert int(headers["x-amz-crc32"]) == zlib.crc32(body)
    request_id = headers["x-amzn-RequestId"]
    assert len(request_id) == 52 and request_id.isalnum() and request_id.upper() == request_id
    assert int(headers["Content-Length"]) == len(body)
    if status >= 400 and status != 404:
        error = orjson.loads(body)
        assert set(error) == {"__type", "message"}
        namespace, _, name = error["__type"].partition("#")
        assert namespace.startswith("com.amazon") and name


def error_of(body):
    error = orjson.loads(body)
    return error["__type"].partition("#")[2], error["message"]


def connect(thread, timeout=5):
    return contextlib.closing(http.client.HTTPConnection("127.0.0.1", thread.server.port, timeout=timeout))


# --- the API through boto3 ---------------------------------------------------------------


def test_boto3_calls_reach_operations(server):
    c = client(server.endpoint)
    assert c.list_tables()["TableNames"] == []
    item = c.get_item(TableName="Music", Key={"Artist": {"S": "Arturo"}, "n": {"N": "1.5"}, "b": {"B": b"\x00\x01"}})
    assert item["Item"] == {"Artist": {"S": "Arturo"}, "n": {"N": "1.5"}, "b": {"B": b"\x00\x01"}}
    meta = item["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 200 and len(meta["RequestId"]) == 52


def test_operation_not_served_is_unknown(server):
    with pytest.raises(ClientError) as e:
        client(server.endpoint).delete_table(TableName="Music")
    assert e.value.response["Error"]["Code"] == "UnknownOperationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize("call, message", [
    (dict(TableName="ab"), "1 validation error detected: Value 'ab' at 'tableName' failed to satisfy constraint: "
                           "Member must have length greater than or equal to 3"),
    (dict(TableName="bad;name"), "1 validation error detected: Value 'bad;name' at 'tableName' failed to satisfy "
                                 "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"),
    (dict(TableName="x" * 256), "1 validation error detected: Value '" + "x" * 256 + "' at 'tableName' failed to "
                                "satisfy constraint: Member must have length less than or equal to 255"),
    (dict(TableName="a;", ReturnConsumedCapacity="ALL"),
     "3 validation errors detected: Value 'a;' at 'tableName' failed to satisfy constraint: Member must satisfy "
     "regular expression pattern: [a-zA-Z0-9_.-]+; Value 'a;' at 'tableName' failed to satisfy constraint: Member "
     "must have length greater than or equal to 3; Value 'ALL' at 'returnConsumedCapacity' failed to satisfy "
     "constraint: Member must satisfy enum value set: [INDEXES, TOTAL, NONE]"),
    (dict(TableName="Music", AttributesToGet=[]),
     "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy constraint: Member must have "
     "length greater than or equal to 1"),
])
def test_validation_messages_get_item(server, call, message):
    c = client(server.endpoint, validate=False)
    with pytest.raises(ClientError) as e:
        c.get_item(Key={"k": {"S": "v"}}, **call)
    assert e.value.response["Error"] == {"Code": "ValidationException", "Message": message}


def test_validation_of_missing_and_nested_members(server):
    c = client(server.endpoint, validate=False)
    with pytest.raises(ClientError) as e:
        c.get_item(Key={"k": {"S": "v"}})
    assert e.value.response["Error"]["Message"] == (
        "1 validation error detected: Value null at 'tableName' failed to satisfy constraint: "
        "Member must not be null")
    with pytest.raises(ClientError) as e:
        c.create_table(TableName="Music", KeySchema=[{"AttributeName": "a", "KeyType": "SORT"}, {"KeyType": "RANGE"}],
                       AttributeDefinitions=[{"AttributeName": "a", "AttributeType": "S"}],
                       BillingMode="PAY_PER_REQUEST")
    assert e.value.response["Error"] == {"Code": "ValidationException", "Message": (
        "2 validation errors detected: Value 'SORT' at 'keySchema.1.member.keyType' failed to satisfy constraint: "
        "Member must satisfy enum value set: [HASH, RANGE]; Value null at 'keySchema.2.member.attributeName' failed "
        "to satisfy constraint: Member must not be null")}
    with pytest.raises(ClientError) as e:
        c.scan(TableName="Music", Limit=0, TotalSegments=1000001)
    assert e.value.response["Error"]["Message"] == (
        "2 validation errors detected: Value '0' at 'limit' failed to satisfy constraint: Member must have value "
        "greater than or equal to 1; Value '1000001' at 'totalSegments' failed to satisfy constraint: Member must "
        "have value less than or equal to 1000000")
    with pytest.raises(ClientError) as e:
        c.batch_get_item(RequestItems={"a;": {"Keys": [{"k": {"S": "v"}}]}})
    assert e.value.response["Error"]["Message"].endswith(
        "at 'requestItems' failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length "
        "less than or equal to 255, Member must have length greater than or equal to 3, Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9_.-]+]")


@pytest.mark.parametrize("request_, message", [
    (dict(TableName=5, Key={"k": {"S": "v"}}), "NUMBER_VALUE cannot be converted to String"),
    (dict(TableName="Music", Key={"k": {"S": {"S": "v"}}}), "Start of structure or map found where not expected"),
    (dict(TableName="Music", Key=[]), "Start of list found where not expected"),
    (dict(TableName="Music", Key={"k": {"S": "v"}}, ConsistentRead="yes"),
     "STRING_VALUE cannot be converted to Boolean"),
    (dict(TableName="Music", Key={"k": {"B": "abc"}}),
     "'abc' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: 3"),
])
def test_type_errors_are_serialization_exceptions(server, request_, message):
    # DynamoDB deserializes before it validates: a type error wins over constraint violations.
    request_["ReturnConsumedCapacity"] = "ALL"
    with connect(server) as conn:
        status, _, data = post(conn, server.server.port, "GetItem", orjson.dumps(request_))
    assert status == 400 and error_of(data) == ("SerializationException", message)


def test_document_nested_past_the_request_limit_is_refused_as_the_item(server):
    # 50 nested maps are deeper than the validator follows a request body; the refusal of any
    # attribute value (here a key) still uses DynamoDB's message for a document nested too deeply.
    value = {"S": "leaf"}
    for _ in range(50):
        value = {"M": {"a": value}}
    c = client(server.endpoint, validate=False)
    with pytest.raises(ClientError) as e:
        c.get_item(TableName="Music", Key={"k": value})
    assert e.value.response["Error"] == {"Code": "ValidationException", "Message": (
        "Nesting Levels have exceeded supported limits: Attributes in the item have nested levels beyond "
        "supported limit")}

def test_validated_request_is_normalized(server):
    # Unknown members and nulls are dropped before the operation sees the request.
    with connect(server) as conn:
        body = orjson.dumps({"TableName": "Music", "Key": {"k": {"S": "v", "Bogus": 1, "N": None}}, "Extra": [1]})
        status, _, data = post(conn, server.server.port, "GetItem", body)
    assert status == 200 and orjson.loads(data) == {"Item": {"k": {"S": "v"}}}


# --- the wire ------------------------------------------------------------------------------


def test_health_answer(server):
    with connect(server) as conn:
        conn.request("GET", "/")
        status, headers, body = read(conn)
        assert status == 200 and body == b"healthy: 127.0.0.1:%d " % server.server.port  # the Host it was sent to
        conn.request("GET", "/", headers={"Host": "dynamo\u00e9.local"})  # not a host name to repeat
        status, headers, body = read(conn)
        assert status == 200 and body == b"healthy: dynamodb.us-east-1.amazonaws.com "
        for path in ("/abc", "/health", "/index.htm"):
            conn.request("GET", path)
            status, _, body = read(conn)
            assert status == 404 and body == b"<UnknownOperationException/>\n"


CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Max-Age",
                "Access-Control-Allow-Methods", "Access-Control-Allow-Headers")


def test_cors_for_requests_with_an_origin(server):
    asked = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, x-amz-target, authorization"}
    with connect(server) as conn:
        conn.request("OPTIONS", "/", headers=asked)  # a browser's preflight
        status, headers, body = read(conn)
        assert status == 200 and body == b""
        assert headers["Access-Control-Allow-Origin"] == "*" and "x-amzn-RequestId" in headers[
            "Access-Control-Expose-Headers"]
        assert headers["Access-Control-Allow-Methods"] == "POST"
        assert headers["Access-Control-Allow-Headers"] == "content-type, x-amz-target, authorization"
        assert int(headers["Access-Control-Max-Age"]) > 0
        for method, body in (("GET", None), ("POST", b"{}")):  # the request itself: allowed, not a preflight
            conn.request(method, "/", body=body, headers=dict(asked, **{"Content-Type": "application/x-amz-json-1.0"}))
            status, headers, _ = read(conn)
            assert headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Expose-Headers" in headers
            assert not {"Access-Control-Max-Age", "Access-Control-Allow-Methods"} & set(headers)
        for method in ("OPTIONS", "GET", "POST"):  # no Origin: no CORS
            conn.request(method, "/", body=b"{}" if method == "POST" else None)
            status, headers, _ = read(conn)
            assert not set(CORS_HEADERS) & set(headers)
            assert method != "OPTIONS" or status == 404


def test_other_methods_and_content_types_are_unknown(server):
    with connect(server) as conn:
        conn.request("PUT", "/", body=b"{}")
        status, _, body = read(conn)
        assert status == 404 and body == b"<UnknownOperationException/>\n"
        conn.request("POST", "/", body=b"{}", headers={"Content-Type": "text/plain"})
        status, _, body = read(conn)
        assert status == 404 and body == b"<UnknownOperationException/>\n"


def test_unknown_target(server):
    port = server.server.port
    with connect(server) as conn:
        for target in ("Nonsense", "DynamoDB_20120810", "DynamoDB_20111205.ListTables"):
            operation = target.partition(".")[2]
            headers = signed_headers(port, operation, b"{}")
            headers["x-amz-target"] = target
            conn.request("POST", "/", body=b"{}", headers=headers)
            status, _, body = read(conn)
            assert status == 400 and error_of(body)[0] == "UnknownOperationException"


@pytest.mark.parametrize("body, message", [
    (b"{", ""),
    (b"", ""),
    (b"\xff\xfe", ""),
    (b"[]", "Start of list found where not expected"),
    (b'"x"', "Expected null"),
])
def test_malformed_json(server, body, message):
    with connect(server) as conn:
        status, _, data = post(conn, server.server.port, "ListTables", body)
    assert status == 400 and error_of(data) == ("SerializationException", message)


def test_operation_without_output_answers_an_empty_body(server):
    # TagResource has no output shape: DynamoDB answers 200 with nothing in the body, not "{}".
    body = b'{"ResourceArn": "arn:aws:dynamodb:us-east-1:000000000000:table/Music", "Tags": [{"Key": "k", "Value": "v"}]}'
    with connect(server) as conn:
        status, _, data = post(conn, server.server.port, "TagResource", body)
        assert (status, data) == (200, b"")
        status, _, data = post(conn, server.server.port, "ListTables", b"{}")  # the connection goes on serving
        assert status == 200 and orjson.loads(data) == {"TableNames": []}

def test_json_11_content_type_is_echoed(server):
    with connect(server) as conn:
        conn.request("POST", "/", body=b"{}", headers=signed_headers(
            server.server.port, "ListTables", b"{}", extra={"content-type": "application/x-amz-json-1.1"}))
        status, headers, _ = read(conn)
    assert status == 200 and headers["Content-Type"] == "application/x-amz-json-1.1"


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress),
    ("gzip", lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:])),  # two members, as `cat a.gz b.gz`
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
])
def test_compressed_body(server, encoding, compress):
    body = compress(orjson.dumps({"TableName": "Music", "Key": {"k": {"S": "v" * 1000}}}))
    with connect(server) as conn:
        status, _, data = post(conn, server.server.port, "GetItem", body, extra={"content-encoding": encoding})
    assert status == 200 and orjson.loads(data)["Item"]["k"]["S"] == "v" * 1000


def test_compressed_body_errors(server):
    port = server.server.port
    with connect(server) as conn:
        # DynamoDB answers a body it cannot decode with InternalServerError, not a client error.
        for body in (b"not gzip", gzip.compress(b"{}")[:-3], gzip.compress(b"{}") + b"junk", b""):
            status, _, data = post(conn, port, "ListTables", body, extra={"content-encoding": "gzip"})
            assert status == 500 and error_of(data) == ("InternalServerError", "Request body is not valid gzip data")
        bomb = gzip.compress(b" " * (SMALL_LIMITS.body_bytes_max // 2)) * 3  # too large only once all are read
        status, _, data = post(conn, port, "ListTables", bomb, extra={"content-encoding": "gzip"})
        assert status == 413 and error_of(data)[0] == "RequestEntityTooLargeException"
        status, _, data = post(conn, port, "ListTables", b"{}", extra={"content-encoding": "br"})
        assert status == 500 and error_of(data) == ("InternalServerError", "Unsupported Content-Encoding: br")
        status, _, _ = post(conn, port, "ListTables", b"{}")  # the same connection still serves
        assert status == 200


def test_body_too_large(server):
    port = server.server.port
    with connect(server) as conn:
        big = b" " * (SMALL_LIMITS.body_bytes_max + 1)
        conn.request("POST", "/", body=big, headers=signed_headers(port, "ListTables", big))
        resp = conn.getresponse()
        data = resp.read()
        check_wire(resp.status, resp.headers, data)
        assert resp.status == 413 and error_of(data)[0] == "RequestEntityTooLargeException"
        assert resp.headers["Connection"] == "close"
    # A chunked body has no length up front: the limit applies as it arrives.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        headers = signed_headers(port, "ListTables", b"")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST / HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b" " * 32768
        for _ in range(3):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 413 ")


def test_header_section_too_large(server):
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 400 ") and b"BadRequestException" in response


def test_unterminated_header_line_is_bounded(server):
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nX-Big: ")
        time.sleep(0.05)
        for _ in range(3):
            sock.sendall(b"a" * 2048)
            time.sleep(0.05)
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 400 ")


def test_garbage_is_answered_and_closed(server):
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 400 ")


def recv_all(sock) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def test_keep_alive_serves_many_requests_on_one_socket(server):
    with connect(server) as conn:
        for i in range(20):
            status, _, _ = post(conn, server.server.port, "ListTables", b"{}")
            assert status == 200
            if i == 0:
                sock = conn.sock
            assert conn.sock is sock


def test_pipelined_requests_are_answered_in_order(server):
    port = server.server.port
    wire = b""
    for i in range(40):  # more than the read-ahead bound, so reading pauses and resumes
        body = orjson.dumps({"TableName": "Music", "Key": {"k": {"N": str(i)}}})
        headers = signed_headers(port, "GetItem", body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        wire += f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(wire)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 40 or not received.endswith(b"}}}"):
            data = sock.recv(65536)
            assert data, "connection closed early"
            received += data
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert [orjson.loads(b)["Item"]["k"]["N"] for b in bodies] == [str(i) for i in range(40)]


def test_expect_100_continue(server):
    port = server.server.port
    body = b"{}"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        headers = signed_headers(port, "ListTables", body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")


def test_internal_error_is_500_and_connection_survives(server, caplog):
    caplog.set_level(logging.ERROR, logger="dynstore.api.server")
    with connect(server) as conn:
        status, _, data = post(conn, server.server.port, "DescribeTable", b'{"TableName": "Music"}')
        assert status == 500 and error_of(data) == ("InternalServerError", "Internal server error")
        status, _, _ = post(conn, server.server.port, "ListTables", b"{}")
        assert status == 200
    deadline = time.time() + 2
    while not caplog.records and time.time() < deadline:
        time.sleep(0.01)
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "DescribeTable" in logged and "KeyError" in str([r.exc_info for r in caplog.records])
    assert SECRET not in logged


# --- slow and greedy clients ---------------------------------------------------------------


def closed_within(sock, seconds) -> float:
    """Seconds until the server closed ``sock``; fails if it is still open after ``seconds``."""
    start = time.monotonic()
    sock.settimeout(seconds)
    assert recv_all(sock) is not None
    return time.monotonic() - start


def test_slow_headers_time_out(server):
    with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        elapsed = closed_within(sock, 5)
    assert SMALL_LIMITS.header_timeout_s - 0.1 < elapsed < SMALL_LIMITS.header_timeout_s + 1


def test_slow_body_times_out(server):
    with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        elapsed = closed_within(sock, 5)
    assert SMALL_LIMITS.body_timeout_s - 0.1 < elapsed < SMALL_LIMITS.body_timeout_s + 1


def test_idle_connection_times_out(server):
    with socket.create_connection(("127.0.0.1", server.server.port)) as sock:
        elapsed = closed_within(sock, 5)
    assert SMALL_LIMITS.idle_timeout_s - 0.1 < elapsed < SMALL_LIMITS.idle_timeout_s + 1


def test_client_that_never_reads_is_dropped(server):
    port = server.server.port
    body = orjson.dumps({"TableName": "Music", "Key": {"k": {"S": "v" * 30000}}})
    headers = signed_headers(port, "GetItem", body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.2)
        sent = 0
        start = time.monotonic()
        try:
            while time.monotonic() - start < 10:
                sock.sendall(request)
                sent += 1
        except (socket.timeout, ConnectionError):
            pass
        # The server stopped reading (its answers are not read) and then dropped the connection.
        assert sent < 1000
        time.sleep(SMALL_LIMITS.send_timeout_s + 0.5)
        with pytest.raises(ConnectionError):
            for _ in range(100):
                sock.sendall(request)
                time.sleep(0.01)
    assert status_of_new_request(port) == 200


def status_of_new_request(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        return post(conn, port, "ListTables", b"{}")[0]
    finally:
        conn.close()


def test_connection_limit():
    thread = start_server(server_limits=ServerLimits(connections_max=2))
    try:
        port = thread.server.port
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2)]
        for conn in held:
            assert post(conn, port, "ListTables", b"{}")[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            response = recv_all(sock)
        assert response.startswith(b"HTTP/1.1 503 ") and b"ServiceUnavailable" in response
        held[0].close()
        deadline = time.time() + 5
        while len(thread.server.connections) > 1 and time.time() < deadline:
            time.sleep(0.01)
        assert status_of_new_request(port) == 200
        held[1].close()
    finally:
        thread.stop()


def test_close_lets_running_requests_answer():
    import asyncio

    async def slow(state, request):
        await asyncio.sleep(0.3)
        return {"TableNames": ["done"]}

    thread = start_server(operations={"ListTables": slow})
    port = thread.server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", "/", body=b"{}", headers=signed_headers(port, "ListTables", b"{}"))
    time.sleep(0.1)
    thread.stop()
    status, headers, data = read(conn)
    assert status == 200 and orjson.loads(data) == {"TableNames": ["done"]}
    assert headers["Connection"] == "close"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


# --- dynstore up ----------------------------------------------------------------------------


def dynstore_up(*args, env=None):
    environment = dict(os.environ, PYTHONUNBUFFERED="1", DYNSTORE_STORAGE="reference")
    environment.pop("DYNSTORE_ACCESS_KEY_ID", None)
    environment.pop("DYNSTORE_SECRET_ACCESS_KEY", None)
    environment.update(env or {})
    return subprocess.Popen([sys.executable, "-c", "from dynstore.cli import main; main()", "up", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def banner(proc) -> str:
    """What ``dynstore up`` prints before it serves."""
    printed = ""
    for line in proc.stdout:
        printed += line
        if "Ctrl-C" in line:
            return printed
    raise AssertionError(f"dynstore up exited early:\n{printed}")


UP_MODES = pytest.mark.parametrize("nodes", ["1", "3"], ids=["single", "cluster"])


@UP_MODES
def test_up_prints_endpoint_and_credentials_and_stops_on_ctrl_c_and_finds_its_data_again(tmp_path, nodes):
    data = str(tmp_path / "data")
    proc = dynstore_up("--nodes", nodes, "--port", "0", "--data-dir", data)
    try:
        printed = banner(proc)
        endpoint = re.search(r"http://127\.0\.0\.1:\d+", printed).group(0)
        key_id = re.search(r"aws_access_key_id\s*=\s*(\S+)", printed).group(1)
        secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", printed).group(1)
        dynamodb = client(endpoint, key_id, secret)
        assert dynamodb.list_tables()["TableNames"] == []
        dynamodb.create_table(TableName="kept", BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
        dynamodb.put_item(TableName="kept", Item={"k": {"S": "a"}, "v": {"N": "1"}})
    finally:
        proc.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        rest, _ = proc.communicate(timeout=30)
    assert time.monotonic() - stopping < 10
    assert proc.returncode == 0 and "stopped" in rest and "Traceback" not in rest
    # A second `dynstore up` on the same data directory serves what the first one acknowledged.
    proc = dynstore_up("--nodes", nodes, "--port", "0", "--data-dir", data)
    try:
        endpoint = re.search(r"http://127\.0\.0\.1:\d+", banner(proc)).group(0)
        got = client(endpoint, key_id, secret).get_item(TableName="kept", Key={"k": {"S": "a"}}, ConsistentRead=True)
        assert got["Item"] == {"k": {"S": "a"}, "v": {"N": "1"}}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@UP_MODES
def test_up_refuses_development_credentials_off_loopback(tmp_path, nodes):
    proc = dynstore_up("--nodes", nodes, "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path / "data"))
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "needs configured credentials" in output


@UP_MODES
def test_up_says_when_its_port_is_taken(tmp_path, nodes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = dynstore_up("--nodes", nodes, "--port", str(taken.getsockname()[1]), "--data-dir",
                           str(tmp_path / "data"))
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cannot listen on 127.0.0.1" in output and "Traceback" not in output


@UP_MODES
def test_up_with_configured_credentials(tmp_path, nodes):
    proc = dynstore_up("--nodes", nodes, "--port", "0", "--data-dir", str(tmp_path / "data"),
                       env={"DYNSTORE_ACCESS_KEY_ID": KEY_ID, "DYNSTORE_SECRET_ACCESS_KEY": SECRET})
    try:
        printed = banner(proc)
        assert SECRET not in printed
        endpoint = re.search(r"http://127\.0\.0\.1:\d+", printed).group(0)
        assert client(endpoint).list_tables()["TableNames"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
