"""Fuzzing the front end over real sockets: request bodies shaped by the service model and then
broken, arbitrary JSON and bytes, content encodings, stray headers and bad signatures.

Every operation of the model is served by an operation that accepts anything valid, so each
request travels the whole path (framing, signature, decoding, JSON, model validation). The
properties: every answer is either 200 with a JSON object or a well-formed DynamoDB error with
a 4xx status, never a 500, a hang or a dropped connection, and the server keeps serving.

Hypothesis prints the failing example and how to reproduce it; ``--long`` runs ten times more.
"""
import gzip
import http.client
import json
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dynstore.api import model
from conftest import long_mode
from test_server import JSON_10, SECRET, check_wire, signed_headers, start_server

with gzip.open(model.MODEL_PATH, "rt") as f:
    SHAPES = json.load(f)["shapes"]
    f.seek(0)
    OPERATION_INPUTS = {name: op["input"]["shape"] for name, op in json.load(f)["operations"].items()}

EXAMPLES = 20000 if long_mode() else 2000
DEPTH_MAX = 5


async def accept(state, request):
    return {}


@pytest.fixture(scope="module")
def server():
    thread = start_server(operations={name: accept for name in model.OPERATION_NAMES})
    yield thread
    thread.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

_strategies = {}


def shaped(name: str, depth: int):
    """Values for shape ``name``, mostly of the right type and sometimes not."""
    key = (name, depth)
    if key not in _strategies:
        _strategies[key] = st.deferred(lambda: st.one_of(
            _well_typed(name, depth), _well_typed(name, depth), _well_typed(name, depth), json_values))
    return _strategies[key]


def _well_typed(name: str, depth: int):
    shape = SHAPES[name]
    kind = shape["type"]
    if kind == "structure":
        if depth >= DEPTH_MAX:
            return st.just({})
        return st.fixed_dictionaries({}, optional={
            member: shaped(spec["shape"], depth + 1) for member, spec in shape["members"].items()})
    if kind == "list":
        if depth >= DEPTH_MAX:
            return st.just([])
        return st.lists(shaped(shape["member"]["shape"], depth + 1), max_size=3)
    if kind == "map":
        if depth >= DEPTH_MAX:
            return st.just({})
        return st.dictionaries(st.text(max_size=6), shaped(shape["value"]["shape"], depth + 1), max_size=3)
    if kind == "string":
        text = st.text(max_size=12) | st.text(alphabet="abcXYZ019_.-", min_size=2, max_size=6)
        return st.sampled_from(shape["enum"]) | text if "enum" in shape else text
    if kind in ("integer", "long"):
        return st.integers(-3, 1_000_001)
    if kind in ("double", "timestamp"):
        return st.floats(-1e9, 1e9)
    if kind == "boolean":
        return st.booleans()
    if kind == "blob":
        return st.sampled_from(["", "AAEC", "abc", "a===", "!!!!", "QUJD"])
    raise AssertionError(f"shape type {kind} has no strategy")


@st.composite
def requests(draw):
    operation = draw(st.sampled_from(sorted(OPERATION_INPUTS)))
    body_kind = draw(st.sampled_from(["model", "model", "model", "json", "bytes"]))
    if body_kind == "model":
        body = orjson.dumps(draw(shaped(OPERATION_INPUTS[operation], 0)))
    elif body_kind == "json":
        body = orjson.dumps(draw(json_values))
    else:
        body = draw(st.binary(max_size=64))
    encoding = draw(st.sampled_from([None, None, None, "gzip", "deflate", "identity", "br", "gzip-broken"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "gzip-broken":
        encoding, body = "gzip", gzip.compress(body)[:-4]
    target = draw(st.sampled_from([operation] * 8 + ["", "Nope", operation.lower()]))
    extra = draw(st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
            lambda n: n not in ("host", "content-length", "transfer-encoding", "connection", "expect", "upgrade")),
        st.text(alphabet="".join(map(chr, range(0x20, 0x7F))), max_size=30), max_size=3))
    signing = draw(st.sampled_from(["good"] * 6 + ["none", "wrong-secret", "garbage"]))
    content_type = draw(st.sampled_from([JSON_10] * 6 + ["application/x-amz-json-1.1", "application/json"]))
    return operation, target, body, encoding, extra, signing, content_type


def build_headers(port, operation, target, body, encoding, extra, signing, content_type):
    headers = dict(extra)
    if encoding:
        headers["content-encoding"] = encoding
    headers["content-type"] = content_type
    headers = signed_headers(port, operation, body, extra=headers,
                             secret="wrong" if signing == "wrong-secret" else SECRET)
    headers["x-amz-target"] = f"DynamoDB_20120810.{target}"
    if signing == "none":
        headers.pop("Authorization")
    elif signing == "garbage":
        headers["Authorization"] = "AWS4-HMAC-SHA256 " + ",".join(f"{k}={v}" for k, v in extra.items())
    return headers


class Client:
    """One keep-alive connection, reopened only when the server said it would close."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def send(self, headers, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.conn.request("POST", "/", body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.headers["Connection"] == "close":
            self.conn.close()
            self.conn = None
        return resp.status, resp.headers, data


@pytest.fixture(scope="module")
def http_client(server):
    client = Client(server.server.port)
    yield client
    if client.conn is not None:
        client.conn.close()


@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_every_answer_is_ok_or_a_client_error(server, http_client, request):
    operation, target, body, encoding, extra, signing, content_type = request
    headers = build_headers(server.server.port, *request)
    status, response_headers, data = http_client.send(headers, body)
    check_wire(status, response_headers, data)
    event(f"{status} {orjson.loads(data)['__type'].partition('#')[2] if status not in (200, 404) else ''}")
    undecodable = status == 500 and orjson.loads(data)["message"].startswith(  # as DynamoDB answers it
        ("Request body is not valid", "Unsupported Content-Encoding"))
    assert status == 200 or 400 <= status < 500 or undecodable, (status, data)
    # Nothing in these requests breaks HTTP framing, so every connection stays open.
    assert response_headers["Connection"] == "keep-alive", data
    if status == 200:
        # Operations without output in DynamoDB's model answer an empty body, as DynamoDB does.
        assert data == (b"" if operation in model.EMPTY_REPLY_OPERATIONS else b"{}")
        assert signing == "good" and target == operation
    elif status != 404 and not undecodable:
        assert orjson.loads(data)["__type"].startswith("com.amazon.coral.")


def test_server_still_serves_after_fuzzing(server, http_client):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"healthy: 127.0.0.1:%d " % server.server.port
    conn.close()
    assert len(server.server.connections) <= 2
