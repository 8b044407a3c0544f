"""The table catalog of one node: every table's stored description, durable.

On disk the catalog is an Engine of its own (WAL + B-tree): key = the table name in
UTF-8, value = the description as JSON (orjson). The description is the dict the
operations keep for a table (name, TableId, key schema, indexes, billing, tags, TTL);
the catalog does not interpret it beyond ``TableName``.

The whole catalog is also held in memory (a node has at most
``limits.TABLES_PER_ACCOUNT_MAX`` tables), loaded once at open. A change is made
durable first and only then reflected in memory, so a reader never sees a table
that a crash could take back.

A catalog change is a read-modify-write of a description that spans an ``await``
(the durable write), so every change is made holding ``lock``: two TagResource
calls, or two CreateTable calls for one name, never lose each other's work.
"""
from __future__ import annotations

import asyncio

import orjson


class Catalog:
    def __init__(self, engine):
        self.engine = engine
        self.lock = asyncio.Lock()
        self._tables: dict[str, dict] = {
            key.decode(): orjson.loads(value) for key, value in engine.scan(None, None)
        }

    def get(self, name: str) -> dict | None:
        return self._tables.get(name)

    def names(self) -> list[str]:
        return sorted(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    async def put(self, desc: dict) -> None:
        name = desc["TableName"]
        await self.engine.write([(name.encode(), orjson.dumps(desc))])
        self._tables[name] = desc

    async def delete(self, name: str) -> None:
        await self.engine.write([(name.encode(), None)])
        del self._tables[name]

    def close(self) -> None:
        self.engine.close()
