"""Drives dynstore.api.operations on a real data directory, in-process or through a cluster.

``Node`` owns an event loop and a ``State`` over a temporary directory; ``node(op,
**request)`` runs one operation to completion and returns its response, raising the
DynamoDB error it raised. ``restart()`` closes the storage and opens it again, so a
test can check what survived; ``now`` is the clock the operations read.

``ClusterNode`` has the same calling interface over HTTP: each call is a SigV4-signed
request (the development credentials) to one endpoint of a running ``dynstore up
--nodes 3``, and an error answer is raised as the dynstore.api.errors type it names.
It has no ``restart``, ``now``, ``state`` or ``run``: tests that need those run on
``Node`` only (marker ``single_node``, see conftest.py).
"""
from __future__ import annotations

import asyncio
import http.client
import time
from urllib.parse import urlsplit

import orjson

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.api.errors import ValidationException
from dynstore.api.operations import OPERATIONS, State
from dynstore.api.sigv4 import sign
from dynstore.client.core import CONTENT_TYPE, TARGET_PREFIX
from dynstore.node.routing import error_from_body


class _Calls:
    """What both harnesses build on their ``__call__``."""

    def create(self, name: str = "tbl", hash_type: str = "S", range_type: str | None = None, **extra) -> dict:
        """A PAY_PER_REQUEST table with key p (and sort key s when ``range_type``)."""
        keys = [{"AttributeName": "p", "KeyType": "HASH"}]
        attrs = [{"AttributeName": "p", "AttributeType": hash_type}]
        if range_type is not None:
            keys.append({"AttributeName": "s", "KeyType": "RANGE"})
            attrs.append({"AttributeName": "s", "AttributeType": range_type})
        attrs += extra.pop("extra_attributes", [])
        request = {"TableName": name, "KeySchema": keys, "AttributeDefinitions": attrs,
                   "BillingMode": "PAY_PER_REQUEST"}
        request.update(extra)
        return self("CreateTable", **request)["TableDescription"]


class Node(_Calls):
    def __init__(self, data_dir: str, clock=None):
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.now = 1_700_000_000.0
        self.clock = clock or (lambda: self.now)
        self.state = self.run(State.open(data_dir, expire=False, clock=self.clock))
        self.address = self.state.address

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def __call__(self, operation: str, **request):
        return self.run(OPERATIONS[operation](self.state, request))

    def restart(self) -> None:
        self.run(self.state.close())
        self.state = self.run(State.open(self.data_dir, expire=False, clock=self.clock))

    def close(self) -> None:
        self.run(self.state.close())
        self.loop.close()


class ClusterNode(_Calls):
    """Calls to the DynamoDB endpoint ``url`` (``http://host:port``) over one kept-alive connection."""

    def __init__(self, url: str, region: str = "us-east-1"):
        parts = urlsplit(url)
        self.address = parts.netloc
        self.region = region
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def __call__(self, operation: str, **request) -> dict:
        body = orjson.dumps(request)
        headers = {"host": self.address, "content-type": CONTENT_TYPE, "x-amz-target": TARGET_PREFIX + operation}
        headers.update(sign("POST", "/", "", headers, body, DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY,
                            self.region, now=time.time()))
        self.conn.request("POST", "/", body, headers)
        response = self.conn.getresponse()
        answer = orjson.loads(response.read() or b"{}")
        if response.status != 200:
            raise error_from_body(response.status, answer)
        return answer

    def drop_tables(self) -> None:
        """Delete every table (protected ones too), so the next test starts on an empty cluster."""
        for name in self("ListTables")["TableNames"]:
            try:
                self("DeleteTable", TableName=name)
            except ValidationException:
                self("UpdateTable", TableName=name, DeletionProtectionEnabled=False)
                self("DeleteTable", TableName=name)

    def close(self) -> None:
        self.conn.close()
