"""Splitting a partition: where to cut it, and what each part holds.

Pure functions over a partition's keys and values, for every router that splits: the
single node's (router/local.py) builds the right part's Engine from ``right_items`` and
trims its left part with ``left_ops``; a replicated router does the same to groups.

A partition is cut only at a partition-key boundary: the split key is the first storage
key of some partition key (``schema.ITEMS ‖ hash ‖ partition key``), so every item of
one partition key (an item collection) stays in one partition, and a Query of one
partition key reads one partition. Items are ordered by the hash of their partition key
first, so a cut near the median of the bytes halves the data whatever the keys are.

What goes to the right part: the items at or past the split key and the index entries
of those items (an entry's value is its base item's storage key), each part's
statistics record (format in store.py) computed from the items it keeps. The canary
key, and anything outside the item and index spaces, stays left.
"""
from __future__ import annotations

from typing import Iterable

from dynstore.api.operations.codec import decode_item
from dynstore.api.operations.schema import INDEXES, ITEMS, STATS_KEY, Table, item_range
from dynstore.api.operations.store import Stats
from dynstore.api.values import item_size


def choose_split_key(desc: dict, partition) -> bytes | None:
    """The first storage key of the partition key nearest the median of the partition's item bytes.

    None when the partition holds fewer than two partition keys: an item collection is
    never cut. Bytes are the stored keys and values, read from the partition (two scans of
    its item space: the total, then the walk to the middle).
    """
    schema = Table(desc).schema
    start, end = item_range(partition)
    half = sum(len(key) + len(value) for key, value in partition.scan(start, end)) / 2
    seen = 0  # bytes of the items before the current one
    prefix = None  # the partition key of the current item
    before: tuple[bytes, int] | None = None  # the last cut seen left of the median, and its bytes on the left
    for key, value in partition.scan(start, end):
        if prefix is None or not key.startswith(prefix):
            cut = ITEMS + schema.partition_prefix(key[len(ITEMS):])
            if prefix is not None:
                if seen >= half:
                    # The first cut at or past the median: take it or the one before, whichever is nearer.
                    return cut if before is None or seen - half <= half - before[1] else before[0]
                before = (cut, seen)
            prefix = cut
        seen += len(key) + len(value)
    return None if before is None else before[0]


def split_batches(desc: dict, items: Iterable[tuple[bytes, bytes]], key: bytes
                  ) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, bytes]]]:
    """(left_ops, right_items) of cutting a partition at item storage key ``key``.

    ``items`` is every (key, value) of the partition's tree in key order. ``left_ops``
    is the write batch that turns the tree into the left part: deletes of every moved
    item and index entry, and the left statistics record. ``right_items`` is the right
    part's tree in key order: its statistics record, items and index entries.
    """
    cut = Cut(desc, key)
    cut.feed(items)
    return cut.batches()


class Cut:
    """``split_batches`` a part at a time: ``feed`` the partition's items in key order, in as
    many calls as suits the caller (a replica yields to its event loop between them), then
    take ``batches()``."""

    def __init__(self, desc: dict, key: bytes):
        self.key = key
        self._indexes = list(Table(desc).indexes.values())
        self._left, self._right = Stats(None), Stats(None)
        self._left_ops: list[tuple[bytes, bytes | None]] = []
        self._right_items: list[tuple[bytes, bytes]] = []

    def feed(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        key, indexes = self.key, self._indexes
        for stored_key, value in items:
            if stored_key.startswith(ITEMS):
                moves = stored_key >= key
                stats = self._right if moves else self._left
                item = decode_item(value)
                stats.items += 1
                stats.bytes += item_size(item)
                for index in indexes:
                    if index.entry_key(item, stored_key) is not None:
                        counts = stats.indexes.setdefault(index.id, [0, 0])
                        counts[0] += 1
                        counts[1] += index.entry_size(item)
            elif stored_key.startswith(INDEXES):
                moves = value >= key
            else:
                continue  # the statistics record is rebuilt below; the canary stays left
            if moves:
                self._left_ops.append((stored_key, None))
                self._right_items.append((stored_key, value))

    def batches(self) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, bytes]]]:
        """(left_ops, right_items) of everything fed, as ``split_batches`` returns them."""
        return (self._left_ops + [(STATS_KEY, self._left.encode())],
                [(STATS_KEY, self._right.encode())] + self._right_items)
