"""The table catalog of one node: every table's stored description, durable.

On disk the catalog is an Engine of its own (WAL + B-tree): key = the table name in
UTF-8, value = the description as JSON (orjson). The description is the dict the
operations keep for a table (name, TableId, key schema, indexes, billing, tags, TTL);
the catalog does not interpret it beyond ``TableName``.

The same Engine holds each split table's partition map, under a key of its own that
no table name can take (names are printable ASCII, 3 to 255 characters)::

    key   = 0x00 "partitions" 0x00 ‖ TableId (UTF-8)
    value = JSON list, in key order, of [directory name, first item storage key in hex]

A table without one has a single partition, ``p0``, that serves every key. Each
partition ends where the next one starts; the last one has no end. A map is written
in one durable write (the commit point of a split), and the table's description and
map are deleted in one write, so neither outlives the other.

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


_MAP = b"\x00partitions\x00"
# The partition map of a table never split.
SINGLE_PARTITION = (("p0", b""),)


class Catalog:
    def __init__(self, engine):
        self.engine = engine
        self.lock = asyncio.Lock()
        self._tables: dict[str, dict] = {}
        # TableId -> ((directory name, start), ...) of every split table.
        self._maps: dict[str, tuple[tuple[str, bytes], ...]] = {}
        for key, value in engine.scan(None, None):
            if key.startswith(_MAP):
                self._maps[key[len(_MAP):].decode()] = tuple((name, bytes.fromhex(start))
                                                            for name, start in orjson.loads(value))
            else:
                self._tables[key.decode()] = orjson.loads(value)

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

    def partition_map(self, table_id: str) -> tuple[tuple[str, bytes], ...]:
        """(directory name, first item storage key) of each of the table's partitions, in key order."""
        return self._maps.get(table_id, SINGLE_PARTITION)

    async def put_partition_map(self, table_id: str, partitions: list[tuple[str, bytes]]) -> None:
        value = orjson.dumps([[name, start.hex()] for name, start in partitions])
        await self.engine.write([(_MAP + table_id.encode(), value)])
        self._maps[table_id] = tuple(partitions)

    async def delete(self, name: str) -> None:
        table_id = self._tables[name]["TableId"]
        await self.engine.write([(name.encode(), None), (_MAP + table_id.encode(), None)])
        del self._tables[name]
        self._maps.pop(table_id, None)

    def close(self) -> None:
        self.engine.close()
