"""Drives dynstore.api.operations in-process on a real data directory.

``Node`` owns an event loop and a ``State`` over a temporary directory; ``node(op,
**request)`` runs one operation to completion and returns its response, raising the
DynamoDB error it raised. ``restart()`` closes the storage and opens it again, so a
test can check what survived.
"""
from __future__ import annotations

import asyncio

from dynstore.api.operations import OPERATIONS, State


class Node:
    def __init__(self, data_dir: str, clock=None):
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.now = 1_700_000_000.0
        self.clock = clock or (lambda: self.now)
        self.state = self.run(State.open(data_dir, expire=False, clock=self.clock))

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

    def create(self, name: str = "t", hash_type: str = "S", range_type: str | None = None, **extra) -> dict:
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
