"""A table as the item operations see it, and where its data sits inside a partition.

Key spaces inside every partition's Engine (one byte first, so they never mix)::

    0x00                                   the partition's statistics (store.py)
    0x01 ‖ storage key                     an item; value = codec.encode_item(item)
    0x02 ‖ index id ‖ index key ‖ storage key
                                           a secondary index entry; value = the base
                                           item's storage key (the entry points at it)
    0xFF                                   the availability canary's probe (dynstore/canary.py);
                                           no scan, count or size ever reaches it

``storage key`` is keys.KeySchema.encode of the item's primary key, ``index key`` the
same encoding of the item's index key under the index's KeySchema. Both encodings
are order preserving and prefix-free, so an index entry sorts by index key first
and then by primary key, a Query on an index is one range scan, and entries of
items with equal index keys stay distinct.

``Table`` resolves a stored description once per version (cached in
``state.schemas`` by TableId and rebuilt when the catalog hands out a new dict).
"""
from __future__ import annotations

import heapq
from operator import itemgetter
from typing import Iterator

from dynstore import limits
from dynstore.api.errors import ResourceNotFoundException, ValidationException
from dynstore.api.keys import KeySchema
from dynstore.api.values import attribute_value_size

STATS_KEY = b"\x00"
ITEMS = b"\x01"
INDEXES = b"\x02"
RANGE_KEY = b"\x03"  # in a cluster, the key range of the partition's group (router/replicated.py)
CANARY_KEY = b"\xff"  # the last byte, so key spaces added later never pass it
_HASH_BYTES = limits.STORAGE_KEY_HASH_BYTES
_INVALID = "One or more parameter values were invalid: "


def table_arn(state, name: str) -> str:
    return f"arn:aws:dynamodb:{state.region}:{state.account_id}:table/{name}"


class Index:
    """One local or global secondary index of a table."""

    __slots__ = ("name", "id", "is_global", "schema", "prefix", "projection_type", "projected", "key_names")

    def __init__(self, stored: dict, attribute_definitions: list, is_global: bool, table_keys: tuple):
        self.name = stored["IndexName"]
        self.id = stored["IndexId"]  # 1..255, the byte naming this index's key space
        self.is_global = is_global
        self.schema = KeySchema.from_table(stored["KeySchema"], attribute_definitions)
        self.prefix = INDEXES + bytes((self.id,))
        projection = stored["Projection"]
        self.projection_type = projection["ProjectionType"]
        # Names every entry carries: the table's key and the index's key.
        self.key_names = tuple(dict.fromkeys(table_keys + self.schema.names))
        # Attribute names an entry holds, or None for ALL.
        if self.projection_type == "ALL":
            self.projected = None
        else:
            self.projected = frozenset(self.key_names) | frozenset(projection.get("NonKeyAttributes", ()))

    def entry_key(self, item: dict, storage_key: bytes) -> bytes | None:
        """The index entry of ``item``, or None when the item is not in this (sparse) index.

        An item lacking an index key attribute is not indexed; one that has it with
        the wrong type or an unusable value is refused, as DynamoDB refuses the write.
        """
        for name, kind in ((self.schema.hash_name, self.schema.hash_type),
                           (self.schema.range_name, self.schema.range_type)):
            if name is None:
                continue
            av = item.get(name)
            if av is None:
                return None
            if kind not in av:
                raise ValidationException(
                    _INVALID + f"Type mismatch for Index Key {name} Expected: {kind} "
                    f"Actual: {next(iter(av))} IndexName: {self.name}"
                )
            if kind != "N" and not av[kind]:
                raise ValidationException(
                    "One or more parameter values are not valid. A value specified for a secondary index key "
                    "is not supported. The AttributeValue for a key attribute cannot contain an empty "
                    f"{'string' if kind == 'S' else 'binary'} value. IndexName: {self.name}, IndexKey: {name}"
                )
        return self.prefix + self.schema.encode(self.schema.key_of(item)) + storage_key

    def project(self, item: dict) -> dict:
        if self.projected is None:
            return item
        return {name: av for name, av in item.items() if name in self.projected}

    def entry_size(self, item: dict) -> int:
        """Bytes DynamoDB counts for this index's copy of ``item`` (its write units)."""
        return sum(attribute_value_size(name, av) for name, av in self.project(item).items())


class Table:
    """A stored table description, resolved for the item operations."""

    __slots__ = ("desc", "name", "schema", "key_names", "indexes", "ttl_attribute")

    def __init__(self, desc: dict):
        self.desc = desc
        self.name = desc["TableName"]
        definitions = desc["AttributeDefinitions"]
        self.schema = KeySchema.from_table(desc["KeySchema"], definitions)
        self.key_names = self.schema.names
        self.indexes: dict[str, Index] = {}
        for kind, is_global in (("LocalSecondaryIndexes", False), ("GlobalSecondaryIndexes", True)):
            for stored in desc.get(kind, ()):
                self.indexes[stored["IndexName"]] = Index(stored, definitions, is_global, self.key_names)
        ttl = desc.get("TimeToLive")
        self.ttl_attribute = ttl["AttributeName"] if ttl and ttl["Enabled"] else None

    @property
    def table_id(self) -> str:
        return self.desc["TableId"]

    def storage_key(self, key: dict) -> bytes:
        """The item-space key of a validated primary key."""
        return ITEMS + self.schema.encode(key)

    def key_from_storage(self, stored_key: bytes) -> dict:
        return self.schema.decode(stored_key[len(ITEMS):])

    def key_of(self, item: dict) -> dict:
        return {name: item[name] for name in self.key_names}

    def index(self, name: str) -> Index:
        index = self.indexes.get(name)
        if index is None:
            raise ValidationException("The table does not have the specified index: " + name)
        return index


def table(state, name: str) -> Table:
    """The table an item operation names, or its not-found error (no table name in it)."""
    desc = state.router.table(name)
    if desc is None:
        raise ResourceNotFoundException()
    cached = state.schemas.get(desc["TableId"])
    if cached is None or cached.desc is not desc:
        cached = state.schemas[desc["TableId"]] = Table(desc)
    return cached


def space_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (a key space's end)."""
    return prefix[:-1] + bytes((prefix[-1] + 1,))


def segment_range(prefix: bytes, segment: int, total: int) -> tuple[bytes, bytes]:
    """The key range of parallel Scan segment ``segment`` of ``total`` in the key space ``prefix``.

    Segments split the leading partition-key hash evenly, so every item (and every
    item of one partition key) falls in exactly one segment.
    """
    space = 1 << (8 * _HASH_BYTES)
    low = segment * space // total
    high = (segment + 1) * space // total
    start = prefix + low.to_bytes(_HASH_BYTES, "big")
    end = space_end(prefix) if high == space else prefix + high.to_bytes(_HASH_BYTES, "big")
    return start, end


def item_range(partition) -> tuple[bytes, bytes]:
    """[start, end) of the item storage keys ``partition`` owns, within the item space."""
    end = space_end(ITEMS)
    return max(partition.start, ITEMS), end if partition.end is None else min(partition.end, end)


def owned_items(partitions, start: bytes, end: bytes, *, reverse: bool = False) -> Iterator[tuple]:
    """(key, item bytes, partition) of the items in [start, end), across ``partitions`` (in key order).

    Each partition is read only within its own range, so a key a split left behind in a
    partition that no longer owns it (router/local.py) is never read twice.
    """
    for partition in reversed(partitions) if reverse else partitions:
        low, high = item_range(partition)
        low, high = max(low, start), min(high, end)
        if low < high:
            for key, value in partition.scan(low, high, reverse=reverse):
                yield key, value, partition


def owned_entries(partitions, start: bytes, end: bytes, *, reverse: bool = False) -> Iterator[tuple]:
    """(entry key, base storage key, partition) of the index entries in [start, end), in entry order.

    Every partition holds the entries of its own items, so the partitions' entries are
    merged; an entry counts only from the partition that owns its base item.
    """
    def entries(partition):
        low, high = item_range(partition)
        for key, base in partition.scan(start, end, reverse=reverse):
            if low <= base < high:
                yield key, base, partition

    if len(partitions) == 1:
        return entries(partitions[0])
    return heapq.merge(*map(entries, partitions), key=itemgetter(0), reverse=reverse)
