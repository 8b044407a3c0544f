"""The write path every item write shares, and each partition's statistics.

``write_item`` is the one place an item changes: PutItem, UpdateItem, DeleteItem,
BatchWriteItem and TTL expiry all call it with a ``decide(old) -> new`` function.
It waits while a split holds the item's partition (router/partition.py), then
reads the current item with ``get_latest`` (writes accepted but not yet durable
included), lets ``decide`` check conditions and build the new item, and writes in
one batch, without an ``await`` in between (see router/partition.py):

* the item itself (or its deletion),
* the secondary index entries that appear, move or disappear,
* the partition's statistics record.

So an item, its index entries and the table's ItemCount never disagree, even across
a crash: the batch is one WAL record. The call returns once the batch is durable.

Statistics record (key ``schema.STATS_KEY``), JSON::

    {"items": n, "bytes": b, "indexes": {"<index id>": [n, b], ...}}

``bytes`` is DynamoDB's item size (values.item_size), the figure DescribeTable reports
as TableSizeBytes. The record is rewritten by every write with the running totals;
the totals are kept in memory (``state.stats``) and reloaded from the record after
a failed write, so a write that never became durable does not skew them.
"""
from __future__ import annotations

from typing import Callable, Iterator

import orjson

from dynstore.api.errors import DynamoDBError, ResourceNotFoundException
from dynstore.api.operations.capacity import Consumed, write_units
from dynstore.api.operations.codec import decode_item, encode_item
from dynstore.api.operations.schema import STATS_KEY, Table
from dynstore.api.values import item_size
from dynstore.metrics import PartitionFigures


class Stats:
    __slots__ = ("items", "bytes", "indexes")

    def __init__(self, stored: bytes | None):
        record = orjson.loads(stored) if stored is not None else {"items": 0, "bytes": 0, "indexes": {}}
        self.items: int = record["items"]
        self.bytes: int = record["bytes"]
        # index id -> [ItemCount, IndexSizeBytes]
        self.indexes: dict[int, list[int]] = {int(k): v for k, v in record["indexes"].items()}

    def encode(self) -> bytes:
        return orjson.dumps({"items": self.items, "bytes": self.bytes,
                             "indexes": {str(k): v for k, v in self.indexes.items()}})


def partition_stats(state, partition) -> Stats:
    stats = state.stats.get(partition)
    if stats is None:
        stats = state.stats[partition] = Stats(partition.get_latest(STATS_KEY))
    return stats


def table_stats(state, desc: dict) -> tuple[int, int, dict]:
    """(ItemCount, TableSizeBytes, {index id: (ItemCount, IndexSizeBytes)}) of a table."""
    items = size = 0
    per_index: dict[int, tuple[int, int]] = {}
    for partition in state.router.partitions(desc):
        stats = partition_stats(state, partition)
        items += stats.items
        size += stats.bytes
        for index_id, (count, index_bytes) in stats.indexes.items():
            old = per_index.get(index_id, (0, 0))
            per_index[index_id] = (old[0] + count, old[1] + index_bytes)
    return items, size, per_index


def partition_figures(state) -> Iterator[PartitionFigures]:
    """Every partition of every table with its statistics, for the node's metrics."""
    router = state.router
    for name in router.table_names():
        for number, partition in enumerate(router.partitions(router.table(name))):
            stats = partition_stats(state, partition)
            yield PartitionFigures(name, number, stats.items, stats.bytes, partition.reads, partition.writes,
                                   partition.engine.stats()["tree"])


def read_item(state, table: Table, key: dict) -> dict | None:
    """The durable item with primary key ``key`` (validated), or None."""
    storage_key = table.storage_key(key)
    stored = state.router.partition_for(table.desc, storage_key).get(storage_key)
    return None if stored is None else decode_item(stored)


async def write_item(state, table: Table, key: dict, decide: Callable[[dict | None], dict | None],
                     consumed: Consumed | None = None) -> tuple[dict | None, dict | None]:
    """Replace the item at ``key`` by ``decide(old)`` (None deletes); returns (old, new).

    ``decide`` may raise (a failed condition, an invalid update): nothing is written.
    Write units are added to ``consumed`` when given.
    """
    storage_key = table.storage_key(key)
    partition = state.router.partition_for(table.desc, storage_key)
    while partition.switch is not None:
        # A split holds this partition's writes: wait for the new map, where the key may have moved.
        await partition.switch.wait()
        current = state.router.table(table.name)
        if current is None or current["TableId"] != table.table_id:
            raise ResourceNotFoundException()  # deleted meanwhile
        partition = state.router.partition_for(table.desc, storage_key)
    stored = partition.get_latest(storage_key)
    old = None if stored is None else decode_item(stored)
    try:
        new = decide(old)
    except DynamoDBError:
        await partition.settle(storage_key)
        raise
    old_size = item_size(old) if old is not None else 0
    new_size = item_size(new) if new is not None else 0
    if consumed is not None:
        consumed.table += write_units(max(old_size, new_size))
    if old is None and new is None:
        await partition.settle(storage_key)
        return old, new
    ops: list[tuple[bytes, bytes | None]] = [(storage_key, None if new is None else encode_item(new))]
    stats = partition_stats(state, partition)
    for index in table.indexes.values():
        old_entry = index.entry_key(old, storage_key) if old is not None else None
        new_entry = index.entry_key(new, storage_key) if new is not None else None
        if old_entry is None and new_entry is None:
            continue
        old_entry_size = index.entry_size(old) if old_entry is not None else 0
        new_entry_size = index.entry_size(new) if new_entry is not None else 0
        if old_entry == new_entry:
            units = write_units(new_entry_size) if index.project(old) != index.project(new) else 0.0
        else:
            units = (write_units(old_entry_size) if old_entry is not None else 0.0) + \
                    (write_units(new_entry_size) if new_entry is not None else 0.0)
            if old_entry is not None:
                ops.append((old_entry, None))
            if new_entry is not None:
                ops.append((new_entry, storage_key))
        if consumed is not None and units:
            consumed.add_index(index.is_global, index.name, units)
        counts = stats.indexes.setdefault(index.id, [0, 0])
        counts[0] += (new_entry is not None) - (old_entry is not None)
        counts[1] += new_entry_size - old_entry_size
    stats.items += (new is not None) - (old is not None)
    stats.bytes += new_size - old_size
    ops.append((STATS_KEY, stats.encode()))
    try:
        await partition.write(ops)
    except BaseException:
        # The totals above assumed this write; reload them from what is durable.
        state.stats.pop(partition, None)
        raise
    return old, new
