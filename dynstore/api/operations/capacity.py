"""Consumed capacity, computed the way DynamoDB computes it.

* A read of an item costs ``ceil(size / 4 KB)`` units (at least 1, also for a missing
  item), half of that when eventually consistent. Query and Scan round the sum of
  the sizes of all items read (before any filter), not each item.
* A write costs ``ceil(size / 1 KB)`` units (at least 1), where size is the larger of
  the item before and after the write; a delete costs the deleted item's size.
* Each secondary index written costs its own write units, by the size of the index
  entry (base key, index key and projected attributes); an index entry that moves to
  a new index key costs a delete plus a put.

``ReturnConsumedCapacity`` TOTAL reports ``{"TableName", "CapacityUnits"}``; INDEXES
adds ``Table`` and, per index kind, ``{index name: {"CapacityUnits"}}``; NONE (or
absent) reports nothing.
"""
from __future__ import annotations

import math

from dynstore import limits


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / limits.READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def write_units(size: int) -> float:
    return float(max(1, math.ceil(size / limits.WRITE_UNIT_BYTES)))


class Consumed:
    """Capacity one request consumed on one table, split by table and index."""

    __slots__ = ("table_name", "table", "local", "global_")

    def __init__(self, table_name: str):
        self.table_name = table_name
        self.table = 0.0
        self.local: dict[str, float] = {}
        self.global_: dict[str, float] = {}

    def add_index(self, is_global: bool, name: str, units: float) -> None:
        into = self.global_ if is_global else self.local
        into[name] = into.get(name, 0.0) + units

    def report(self, mode: str | None) -> dict | None:
        """The ConsumedCapacity member for ``ReturnConsumedCapacity=mode``, or None."""
        if mode not in ("TOTAL", "INDEXES"):
            return None
        total = self.table + sum(self.local.values()) + sum(self.global_.values())
        out: dict = {"TableName": self.table_name, "CapacityUnits": total}
        if mode == "INDEXES":
            out["Table"] = {"CapacityUnits": self.table}
            if self.local:
                out["LocalSecondaryIndexes"] = {n: {"CapacityUnits": u} for n, u in self.local.items()}
            if self.global_:
                out["GlobalSecondaryIndexes"] = {n: {"CapacityUnits": u} for n, u in self.global_.items()}
        return out
