"""The client's sans-I/O core: request bytes, response interpretation, retry policy, and the
table API, shared by the blocking client (sync.py) and the asyncio one (aio.py).

Wire format, one request per connection at a time over persistent HTTP/1.1 connections::

    POST / HTTP/1.1
    Host: <host[:port]>
    Content-Type: application/x-amz-json-1.0
    X-Amz-Target: DynamoDB_20120810.<Operation>
    X-Amz-Date: <yyyymmddThhmmssZ>
    Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=...
    Content-Length: <n>

    <JSON body>

The answer is 200 with a JSON body, or a 4xx/5xx error body (see errors.py). When it carries
``x-amz-crc32`` (DynamoDB and dynstore always send it) the body's zlib CRC-32 must match
before anything is parsed; a mismatch is retried like a server error. A response without
the header is accepted, as botocore accepts it.

How a shell uses the core: ``RequestBuilder.build`` gives the bytes to send (signed at the
time the shell passes in), a ``ResponseReader`` per connection turns received bytes into a
``Response``, ``outcome`` turns that into a dict or raises the typed error, and
``RetryPolicy`` says whether and how long to wait before trying again. Operations that take
several requests (paging, batches with unprocessed items, waiting for a table) are
``Steps``: ``next()`` gives the next request and how long to wait before it, ``feed()`` takes
its response and returns the values it produced. The shells only move bytes and sleep.

``Table`` and ``ClientCalls`` are written once over four shell methods: ``call`` (one
operation, with retries), ``_run`` (one operation, then a parse), ``_iterate`` (the values of
``Steps``, lazily) and ``_drain`` (``Steps`` run to the end, then their result). In the
blocking client those return values and generators, in the asyncio client awaitables and
async generators, so ``table.get(key)`` there is ``await table.get(key)``.

Faults handled: damaged bodies (CRC), garbled HTTP (the connection is dropped), throttling and
5xx answers (retried with capped, fully jittered exponential backoff), batch items left
unprocessed (resent with the same backoff while the server makes no progress).
"""
from __future__ import annotations

import abc
import collections
import random
import ssl
import zlib
from typing import Any, Callable, Iterable, NamedTuple, Protocol
from urllib.parse import urlsplit

import httptools
import orjson

from dynstore import limits
from dynstore.api import sigv4
from dynstore.client import errors
from dynstore.client.marshal import from_item, to_attribute, to_item

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"


# --- requests and responses ----------------------------------------------------------------


class Endpoint(NamedTuple):
    scheme: str  # "http" or "https"
    host: str  # to connect to
    port: int
    authority: str  # the Host header: host, with the port when it is not the scheme's default
    path: str

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, not {url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = host if port == default_port else f"{host}:{port}"
        return cls(parts.scheme, parts.hostname, port, authority, parts.path or "/")


class RequestBuilder:
    """Signed request bytes for one endpoint and one access key."""

    def __init__(self, endpoint: Endpoint, access_key: str, secret_key: str, region: str):
        self.endpoint = endpoint
        self.access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self._request_line = f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.authority}\r\n"

    def __repr__(self) -> str:
        return f"RequestBuilder({self.endpoint.authority!r}, access_key={self.access_key!r}, region={self.region!r})"

    def build(self, operation: str, body: bytes, now: float) -> bytes:
        target = TARGET_PREFIX + operation
        signed = sigv4.sign(
            "POST", self.endpoint.path, "",
            {"host": self.endpoint.authority, "content-type": CONTENT_TYPE, "x-amz-target": target},
            body, self.access_key, self._secret_key, self.region, now=now)
        head = (f"{self._request_line}Content-Type: {CONTENT_TYPE}\r\nX-Amz-Target: {target}\r\n"
                f"X-Amz-Date: {signed['X-Amz-Date']}\r\nAuthorization: {signed['Authorization']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode("ascii") + body


class Response(NamedTuple):
    status: int
    headers: dict  # lower-case header name (bytes) -> value (bytes)
    body: bytes
    keep_alive: bool  # whether the connection may carry another request


class ResponseReader:
    """HTTP/1.1 response framing for one connection: bytes in, ``Response`` out."""

    __slots__ = ("_parser", "_headers", "_body", "_response", "started")

    def __init__(self):
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict = {}
        self._body: list = []
        self._response: Response | None = None
        self.started = False  # whether any byte of the current response has arrived

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        self._response = Response(parser.get_status_code(), self._headers, b"".join(self._body),
                                  parser.should_keep_alive())

    def feed(self, data: bytes) -> Response | None:
        """The response, once ``data`` completes it; raises ConnectionError on garbled HTTP."""
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            raise ConnectionError(f"malformed HTTP response from the server: {e}") from None
        response = self._response
        if response is not None:
            self._headers = {}
            self._body = []
            self._response = None
            self.started = False
        return response


def outcome(response: Response) -> dict:
    """The decoded body of a successful response; raises the typed error of any other."""
    body = response.body
    crc = response.headers.get(b"x-amz-crc32")
    if crc is not None and zlib.crc32(body) != int(crc):
        raise errors.ChecksumMismatchError(
            f"response body of {len(body)} bytes has CRC-32 {zlib.crc32(body)}, the server sent {int(crc)}")
    if response.status == 200:
        return orjson.loads(body)
    request_id = response.headers.get(b"x-amzn-requestid")
    raise errors.from_response(response.status, body, request_id.decode("latin-1") if request_id else None)


class RetryPolicy:
    """How many attempts a request gets and how long to wait between them.

    Full jitter (wait ``uniform(0, min(cap, base * 2**n))`` before attempt n+1) spreads the
    retries of many clients throttled at the same moment, so they do not come back together.
    """

    def __init__(self, *, attempts_max: int = limits.CLIENT_ATTEMPTS_MAX,
                 base_s: float = limits.CLIENT_BACKOFF_BASE_S, cap_s: float = limits.CLIENT_BACKOFF_CAP_S,
                 rng: random.Random | None = None):
        if attempts_max < 1:
            raise ValueError("attempts_max counts the first attempt too: it must be at least 1")
        self.attempts_max = attempts_max
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng if rng is not None else random.Random()

    def retryable(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (0 is the first) that failed with ``error`` is followed by another."""
        return attempt + 1 < self.attempts_max and errors.is_transient(error)

    def delay_s(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * (2 ** attempt)))


# --- operations of several requests ----------------------------------------------------------


class Steps(Protocol):
    """A conversation of several requests, driven by a shell's ``_iterate``/``_drain``."""

    result: Any  # the outcome, once ``next()`` has returned None

    def next(self) -> tuple[str, dict, float] | None:
        """The next request as ``(operation, payload, seconds to wait first)``, or None when done."""

    def feed(self, response: dict) -> Iterable:
        """Take the response to the last request; returns the values it produced."""


class Pages:
    """Query, Scan and ListTables: one request per page until the server stops returning a
    continuation, or ``limit`` values were produced. ``result`` counts the values matched
    (the sum of the pages' ``Count``)."""

    def __init__(self, operation: str, payload: dict, *, items: str, last: str, start: str,
                 decode: Callable | None, limit: int | None = None, page_size: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (leave it out for every item)")
        self.operation = operation
        self.payload = payload
        self.items_key, self.last_key, self.start_key = items, last, start
        self.decode = decode
        self.remaining = limit
        self.page_size = page_size
        self.result = 0
        self.done = False

    def next(self):
        if self.done:
            return None
        size = self.page_size
        if self.remaining is not None:
            size = self.remaining if size is None else min(size, self.remaining)
        if size is not None:
            self.payload["Limit"] = size
        return self.operation, self.payload, 0.0

    def feed(self, response):
        values = response.get(self.items_key, ())
        self.result += response.get("Count", len(values))
        last = response.get(self.last_key)
        if self.remaining is not None:
            values = values[:self.remaining]
            self.remaining -= len(values)
            if self.remaining == 0:
                last = None
        if last is None:
            self.done = True
        else:
            self.payload = {**self.payload, self.start_key: last}
        decode = self.decode
        return values if decode is None else [decode(v) for v in values]


class _Batch(abc.ABC):
    """Batch requests: at most ``per_request`` entries each; whatever the server leaves
    unprocessed goes back to the front of the queue and is resent after a backoff. Rounds
    that make no progress at all are bounded by the retry policy's attempts."""

    operation = ""
    per_request = 0

    def __init__(self, table: str, entries: Iterable, retry: RetryPolicy):
        self.table = table
        self.pending = collections.deque(entries)
        self.retry = retry
        self.stalled = 0  # rounds in a row that left something unprocessed
        self.sent = 0
        self.result = 0  # entries the server processed

    def next(self):
        if not self.pending:
            return None
        take = min(self.per_request, len(self.pending))
        batch = [self.pending.popleft() for _ in range(take)]
        self.sent = take
        delay_s = self.retry.delay_s(self.stalled - 1) if self.stalled else 0.0
        return self.operation, self.request(batch), delay_s

    def requeue(self, back: list) -> None:
        self.result += self.sent - len(back)
        if not back:
            self.stalled = 0
            return
        self.stalled = self.stalled + 1 if len(back) == self.sent else 1
        self.pending.extendleft(reversed(back))
        if self.stalled >= self.retry.attempts_max:
            raise errors.UnprocessedError(
                f"{self.operation} on {self.table}: the server left {len(self.pending)} entries unprocessed "
                f"{self.stalled} times in a row", self.unprocessed())

    @abc.abstractmethod
    def request(self, batch: list) -> dict:
        """The payload that sends ``batch``."""

    @abc.abstractmethod
    def feed(self, response: dict) -> Iterable:
        """Requeue what ``response`` left unprocessed; returns the items it carried."""

    @abc.abstractmethod
    def unprocessed(self) -> dict:
        """What is still pending, in the request's own form, for UnprocessedError."""


class BatchWrite(_Batch):
    """BatchWriteItem over one table; entries are ``{"PutRequest": ...}`` / ``{"DeleteRequest": ...}``."""

    operation = "BatchWriteItem"
    per_request = limits.BATCH_WRITE_REQUESTS_MAX

    def request(self, batch):
        return {"RequestItems": {self.table: batch}}

    def feed(self, response):
        self.requeue((response.get("UnprocessedItems") or {}).get(self.table, []))
        return ()

    def unprocessed(self):
        return {self.table: list(self.pending)}


class BatchGet(_Batch):
    """BatchGetItem over one table; entries are keys in DynamoDB JSON, ``options`` the rest of
    the table's request (ConsistentRead, ProjectionExpression, ExpressionAttributeNames)."""

    operation = "BatchGetItem"
    per_request = limits.BATCH_GET_KEYS_MAX

    def __init__(self, table: str, keys: Iterable, retry: RetryPolicy, options: dict):
        super().__init__(table, keys, retry)
        self.options = options

    def request(self, batch):
        return {"RequestItems": {self.table: {**self.options, "Keys": batch}}}

    def feed(self, response):
        self.requeue(((response.get("UnprocessedKeys") or {}).get(self.table) or {}).get("Keys", []))
        return [from_item(item) for item in (response.get("Responses") or {}).get(self.table, ())]

    def unprocessed(self):
        return {self.table: {**self.options, "Keys": list(self.pending)}}


class CreateTable:
    """CreateTable, then (with ``wait``) DescribeTable until the table and its indexes are
    ACTIVE. ``result`` is the last table description."""

    def __init__(self, payload: dict, wait: bool):
        self.payload = payload
        self.wait = wait
        self.polls_max = int(limits.CLIENT_TABLE_WAIT_S_MAX / limits.CLIENT_TABLE_POLL_S)
        self.polls = -1  # the CreateTable request itself comes first
        self.done = False
        self.result = None

    def next(self):
        if self.done:
            return None
        if self.polls < 0:
            return "CreateTable", self.payload, 0.0
        if self.polls >= self.polls_max:
            raise TimeoutError(f"table {self.payload['TableName']} not ACTIVE after "
                               f"{limits.CLIENT_TABLE_WAIT_S_MAX:.0f} s")
        return "DescribeTable", {"TableName": self.payload["TableName"]}, limits.CLIENT_TABLE_POLL_S

    def feed(self, response):
        self.polls += 1
        self.result = response.get("TableDescription") or response["Table"]
        indexes = self.result.get("GlobalSecondaryIndexes", ())
        active = self.result.get("TableStatus") == "ACTIVE" and all(
            index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes)
        self.done = active or not self.wait
        return ()


# --- expressions -----------------------------------------------------------------------------


class Expressions:
    """The ExpressionAttributeNames and ExpressionAttributeValues of one request: the caller's
    own (values as plain Python) plus placeholders made for attribute names and values that the
    helpers put into expressions (``#_0``, ``:_0``, ... skipping any the caller used)."""

    __slots__ = ("names", "values", "_n")

    def __init__(self, names: dict | None, values: dict | None):
        self.names = dict(names) if names else {}
        self.values = to_item(values) if values else {}
        self._n = 0

    def _fresh(self, sigil: str, taken: dict) -> str:
        while True:
            placeholder = f"{sigil}_{self._n}"
            self._n += 1
            if placeholder not in taken:
                return placeholder

    def name(self, attribute: str) -> str:
        placeholder = self._fresh("#", self.names)
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value) -> str:
        placeholder = self._fresh(":", self.values)
        self.values[placeholder] = to_attribute(value)
        return placeholder

    def projection(self, projection) -> str:
        """A projection given as an expression, or as an iterable of top-level attribute names."""
        if isinstance(projection, str):
            return projection
        return ", ".join(self.name(attribute) for attribute in projection)

    def equalities(self, values: dict) -> str:
        """``#a = :a AND #b = :b`` for a dict of attribute -> value (a key condition)."""
        return " AND ".join(f"{self.name(a)} = {self.value(v)}" for a, v in values.items())

    def into(self, payload: dict) -> dict:
        if self.names:
            payload["ExpressionAttributeNames"] = self.names
        if self.values:
            payload["ExpressionAttributeValues"] = self.values
        return payload


def _attributes_or_none(response: dict) -> dict | None:
    attributes = response.get("Attributes")
    return None if attributes is None else from_item(attributes)


def _item_or_none(response: dict) -> dict | None:
    item = response.get("Item")
    return None if item is None else from_item(item)


def _write_payload(table: str, member: str, value: dict, condition: str | None, names, values,
                   returns: str) -> dict:
    payload = {"TableName": table, member: to_item(value)}
    if returns != "NONE":
        payload["ReturnValues"] = returns
    if condition is not None:
        payload["ConditionExpression"] = condition
    if names or values:
        Expressions(names, values).into(payload)
    return payload


# --- the API, written once for both shells -------------------------------------------------


class Table:
    """One table's items. Values are plain Python in and out (see marshal.py); ``names`` and
    ``values`` are the ExpressionAttributeNames and (plain) ExpressionAttributeValues for the
    expressions passed in. With the asyncio client every method returns an awaitable, and
    ``query``, ``scan`` and ``batch_get`` async iterators."""

    __slots__ = ("client", "name")

    def __init__(self, client, name: str):
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Table({self.name!r})"

    def get(self, key: dict, *, consistent: bool = False, projection=None, names: dict | None = None):
        """The item with ``key``, or None. ``projection``: an expression, or attribute names."""
        payload = {"TableName": self.name, "Key": to_item(key)}
        if consistent:
            payload["ConsistentRead"] = True
        if projection is not None:
            expressions = Expressions(names, None)
            payload["ProjectionExpression"] = expressions.projection(projection)
            expressions.into(payload)
        return self.client._run("GetItem", payload, _item_or_none)

    def put(self, item: dict, *, condition: str | None = None, names: dict | None = None,
            values: dict | None = None, returns: str = "NONE"):
        """Write ``item`` whole. ``returns="ALL_OLD"`` returns the item it replaced (or None)."""
        payload = _write_payload(self.name, "Item", item, condition, names, values, returns)
        return self.client._run("PutItem", payload, _attributes_or_none)

    def delete(self, key: dict, *, condition: str | None = None, names: dict | None = None,
               values: dict | None = None, returns: str = "NONE"):
        """Delete the item with ``key``. ``returns="ALL_OLD"`` returns it (or None)."""
        payload = _write_payload(self.name, "Key", key, condition, names, values, returns)
        return self.client._run("DeleteItem", payload, _attributes_or_none)

    def update(self, key: dict, *, set: dict | None = None, remove: Iterable[str] = (), add: dict | None = None,
               delete: dict | None = None, expression: str | None = None, condition: str | None = None,
               names: dict | None = None, values: dict | None = None, returns: str = "NONE"):
        """Update the item with ``key``: either ``expression`` (an UpdateExpression), or any of
        ``set`` {attribute: value}, ``remove`` [attribute], ``add`` {attribute: number or set} and
        ``delete`` {attribute: set}, where attributes are top-level names taken literally.
        ``returns`` is DynamoDB's ReturnValues; the attributes it names are returned (or None)."""
        expressions = Expressions(names, values)
        clauses = []
        if set:
            clauses.append("SET " + ", ".join(f"{expressions.name(a)} = {expressions.value(v)}"
                                              for a, v in set.items()))
        if remove:
            clauses.append("REMOVE " + ", ".join(expressions.name(a) for a in remove))
        for keyword, changes in (("ADD", add), ("DELETE", delete)):
            if changes:
                clauses.append(f"{keyword} " + ", ".join(f"{expressions.name(a)} {expressions.value(v)}"
                                                         for a, v in changes.items()))
        if expression is not None:
            if clauses:
                raise ValueError("pass either expression or set/remove/add/delete, not both")
            clauses.append(expression)
        payload = {"TableName": self.name, "Key": to_item(key)}
        if clauses:
            payload["UpdateExpression"] = " ".join(clauses)
        if condition is not None:
            payload["ConditionExpression"] = condition
        if returns != "NONE":
            payload["ReturnValues"] = returns
        return self.client._run("UpdateItem", expressions.into(payload), _attributes_or_none)

    def _search(self, key, filter, projection, index, names, values, consistent, start,
                extra: dict) -> dict:
        expressions = Expressions(names, values)
        payload = {"TableName": self.name, **extra}
        if key is not None:
            payload["KeyConditionExpression"] = key if isinstance(key, str) else expressions.equalities(key)
        if filter is not None:
            payload["FilterExpression"] = filter
        if projection is not None:
            payload["ProjectionExpression"] = expressions.projection(projection)
        if index is not None:
            payload["IndexName"] = index
        if consistent:
            payload["ConsistentRead"] = True
        if start is not None:
            payload["ExclusiveStartKey"] = to_item(start)
        return expressions.into(payload)

    def _items(self, operation: str, payload: dict, limit, page_size):
        return self.client._iterate(Pages(operation, payload, items="Items", last="LastEvaluatedKey",
                                          start="ExclusiveStartKey", decode=from_item, limit=limit,
                                          page_size=page_size))

    def query(self, key, *, filter: str | None = None, projection=None, index: str | None = None,
              names: dict | None = None, values: dict | None = None, forward: bool = True,
              consistent: bool = False, limit: int | None = None, page_size: int | None = None,
              start: dict | None = None):
        """The items matching ``key``: a KeyConditionExpression, or a dict {attribute: value}
        of equalities (the partition key, and optionally the sort key). Pages are fetched as the
        iterator is consumed; ``limit`` caps the items produced, ``page_size`` each request."""
        extra = {} if forward else {"ScanIndexForward": False}
        payload = self._search(key, filter, projection, index, names, values, consistent, start, extra)
        return self._items("Query", payload, limit, page_size)

    def count(self, key=None, *, filter: str | None = None, index: str | None = None,
              names: dict | None = None, values: dict | None = None, consistent: bool = False):
        """How many items match: a Query with ``key``, or a Scan of the whole table without it."""
        operation = "Scan" if key is None else "Query"
        payload = self._search(key, filter, None, index, names, values, consistent, None,
                               {"Select": "COUNT"})
        return self.client._drain(Pages(operation, payload, items="Items", last="LastEvaluatedKey",
                                        start="ExclusiveStartKey", decode=None))

    def scan(self, *, filter: str | None = None, projection=None, index: str | None = None,
             names: dict | None = None, values: dict | None = None, consistent: bool = False,
             limit: int | None = None, page_size: int | None = None, segment: int | None = None,
             total_segments: int | None = None, start: dict | None = None):
        """Every item (matching ``filter``), page by page as the iterator is consumed;
        ``segment``/``total_segments`` select one part of a parallel scan."""
        extra = {}
        if total_segments is not None:
            extra = {"Segment": segment, "TotalSegments": total_segments}
        payload = self._search(None, filter, projection, index, names, values, consistent, start, extra)
        return self._items("Scan", payload, limit, page_size)

    def batch_write(self, puts: Iterable[dict] = (), deletes: Iterable[dict] = ()):
        """Put ``puts`` (items) and delete ``deletes`` (keys), 25 to a request, resending what
        the server leaves unprocessed; returns how many were written. Raises UnprocessedError
        when the server makes no progress for the retry policy's attempts."""
        entries = [{"PutRequest": {"Item": to_item(item)}} for item in puts]
        entries += [{"DeleteRequest": {"Key": to_item(key)}} for key in deletes]
        return self.client._drain(BatchWrite(self.name, entries, self.client.retry))

    def batch_get(self, keys: Iterable[dict], *, consistent: bool = False, projection=None,
                  names: dict | None = None):
        """The items with ``keys`` (missing ones are skipped), in no particular order, 100 keys
        to a request, resending what the server leaves unprocessed."""
        options = {"ConsistentRead": True} if consistent else {}
        if projection is not None:
            expressions = Expressions(names, None)
            options["ProjectionExpression"] = expressions.projection(projection)
            expressions.into(options)
        return self.client._iterate(BatchGet(self.name, [to_item(key) for key in keys], self.client.retry, options))

    def describe(self):
        """DescribeTable's ``Table`` (as DynamoDB JSON)."""
        return self.client.describe_table(self.name)


def _table_description(response: dict) -> dict:
    return response["TableDescription"]


class ClientCalls:
    """What both clients share: their configuration and the table lifecycle helpers.
    ``call(operation, payload)`` reaches every other operation with DynamoDB JSON in and out.

    ``endpoint`` is an http:// or https:// URL; ``rng`` seeds the backoff jitter and ``retry``
    replaces the whole policy; ``timeout_s`` bounds each connect, send and receive.
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1", *,
                 timeout_s: float = limits.CLIENT_SOCKET_TIMEOUT_S, retry: RetryPolicy | None = None,
                 rng: random.Random | None = None, ssl_context: ssl.SSLContext | None = None):
        self.endpoint = Endpoint.parse(endpoint)
        self._builder = RequestBuilder(self.endpoint, access_key, secret_key, region)
        self.retry = retry if retry is not None else RetryPolicy(rng=rng)
        self.timeout_s = timeout_s
        if self.endpoint.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context
        self._idle: list = []  # connections kept open for the next request

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._builder!r})"

    def table(self, name: str) -> Table:
        return Table(self, name)

    def create_table(self, name: str, *, partition_key: tuple[str, str], sort_key: tuple[str, str] | None = None,
                     read_units: int | None = None, write_units: int | None = None, wait: bool = True,
                     **members):
        """Create a table keyed by ``partition_key`` (and ``sort_key``), each ``(name, "S"|"N"|"B")``;
        on demand unless ``read_units``/``write_units`` are given. Other CreateTable members
        (GlobalSecondaryIndexes, StreamSpecification, ...) pass through as keyword arguments with
        DynamoDB's names. With ``wait`` returns once the table is ACTIVE. Returns its description."""
        keys = [(partition_key, "HASH")] + ([(sort_key, "RANGE")] if sort_key is not None else [])
        definitions = {attribute: kind for (attribute, kind), _ in keys}
        for definition in members.pop("AttributeDefinitions", ()):
            definitions[definition["AttributeName"]] = definition["AttributeType"]
        payload = {
            "TableName": name,
            "KeySchema": [{"AttributeName": attribute, "KeyType": role} for (attribute, _), role in keys],
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t in definitions.items()],
        }
        if read_units is None and write_units is None:
            payload["BillingMode"] = "PAY_PER_REQUEST"
        else:
            payload["ProvisionedThroughput"] = {"ReadCapacityUnits": read_units, "WriteCapacityUnits": write_units}
        payload.update(members)
        return self._drain(CreateTable(payload, wait))

    def delete_table(self, name: str):
        """Delete the table; returns its description."""
        return self._run("DeleteTable", {"TableName": name}, _table_description)

    def describe_table(self, name: str):
        return self._run("DescribeTable", {"TableName": name}, lambda response: response["Table"])

    def list_tables(self):
        """The names of every table, page by page."""
        return self._iterate(Pages("ListTables", {}, items="TableNames", last="LastEvaluatedTableName",
                                   start="ExclusiveStartTableName", decode=None))
