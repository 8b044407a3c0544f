"""BatchGetItem and BatchWriteItem.

Both validate the whole request first (key counts, duplicate keys, every item and
key, every table) and only then read or write, so a bad request changes nothing.

BatchWriteItem starts every write before awaiting any: each one reads, decides and
appends to its partition's log in turn (store.write_item), and they share group
commits. Each put or delete is atomic on its own; the batch as a whole is not, as in
DynamoDB. A write that fails on storage, or that its partition's leader refused because
it holds its most writes in flight (Busy: nothing was written), is reported back in
``UnprocessedItems`` for the client to retry, which is what DynamoDB's clients already do.

BatchGetItem stops adding items once the response reaches 16 MB; the keys it did
not read come back in ``UnprocessedKeys`` with the table's read parameters.
"""
from __future__ import annotations

import asyncio

from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.expressions import check_parameters
from dynstore.api.operations.capacity import Consumed, read_units
from dynstore.api.operations.items import collection_metrics, context, projection_of
from dynstore.api.operations.schema import table as find_table
from dynstore.api.operations.store import read_item, write_item
from dynstore.api.values import item_size, validate_item
from dynstore.replication.errors import Busy
from dynstore.storage.errors import StorageError

_DUPLICATES = "Provided list of item keys contains duplicates"


def _plan_gets(state, request_items: dict) -> list:
    """Every table's part of a BatchGetItem, validated: (table name, entry, table, projection, keys)."""
    total = sum(len(entry["Keys"]) for entry in request_items.values())
    if total > limits.BATCH_GET_KEYS_MAX:
        raise ValidationException("Too many items requested for the BatchGetItem call")
    plans = []
    for name, entry in request_items.items():
        check_parameters("BatchGetItem", entry)
        table = find_table(state, name)
        ctx = context(entry)
        projection = projection_of(entry, ctx)
        ctx.check_unused()
        keys = [table.schema.validate_key(key) for key in entry["Keys"]]
        if len({table.storage_key(key) for key in keys}) != len(keys):
            raise ValidationException(_DUPLICATES)
        plans.append((name, entry, table, projection, keys))
    return plans


def check_batch(state, op: str, request: dict) -> None:
    """Validate a whole BatchGetItem or BatchWriteItem without reading or writing: a cluster
    node checks a batch over several tables once, before each table's part goes to its own
    leader, so limits over the whole request hold and a bad part changes nothing."""
    (_plan_gets if op == "BatchGetItem" else plan_writes)(state, request["RequestItems"])


async def batch_get_item(state, request: dict) -> dict:
    plans = _plan_gets(state, request["RequestItems"])
    responses: dict = {}
    unprocessed: dict = {}
    consumed_list = []
    size = 0
    for name, entry, table, projection, keys in plans:
        found = responses[name] = []
        consumed = Consumed(table.name)
        consistent = bool(entry.get("ConsistentRead"))
        for position, key in enumerate(keys):
            if size >= limits.BATCH_GET_RESPONSE_BYTES_MAX:
                unprocessed[name] = dict(entry, Keys=keys[position:])
                break
            item = read_item(state, table, key)
            item_bytes = item_size(item) if item is not None else 0
            consumed.table += read_units(item_bytes, consistent)
            if item is not None:
                size += item_bytes
                found.append(projection.apply(item) if projection is not None else item)
        report = consumed.report(request.get("ReturnConsumedCapacity"))
        if report is not None:
            consumed_list.append(report)
    out: dict = {"Responses": responses, "UnprocessedKeys": unprocessed}
    if request.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
        out["ConsumedCapacity"] = consumed_list
    return out


def plan_writes(state, request_items: dict) -> list:
    """Every write of a BatchWriteItem, validated: (table name, table, request, key, item or None)."""
    total = sum(len(requests) for requests in request_items.values())
    if total > limits.BATCH_WRITE_REQUESTS_MAX:
        raise ValidationException("Too many items requested for the BatchWriteItem call")
    plans = []
    for name, requests in request_items.items():
        table = find_table(state, name)
        seen = set()
        for write in requests:
            if len(write) != 1:
                raise ValidationException("Supplied AttributeValue has more than one datatypes set, must contain "
                                          "exactly one of the supported datatypes")
            if "PutRequest" in write:
                item = validate_item(write["PutRequest"]["Item"], older=True)
                key = table.schema.key_of(item)
                for index in table.indexes.values():
                    index.entry_key(item, b"")  # refuses a bad index key before anything is written
            else:
                item = None
                key = table.schema.validate_key(write["DeleteRequest"]["Key"], older=True)
            storage_key = table.storage_key(key)
            if storage_key in seen:
                raise ValidationException(_DUPLICATES)
            seen.add(storage_key)
            plans.append((name, table, write, key, item))
    return plans


async def batch_write_item(state, request: dict) -> dict:
    plans = plan_writes(state, request["RequestItems"])
    consumed: dict[str, Consumed] = {}
    writes = []
    for name, table, _, key, item in plans:
        units = consumed.setdefault(name, Consumed(table.name))
        writes.append(write_item(state, table, key, lambda old, item=item: item, units))
    results = await asyncio.gather(*writes, return_exceptions=True)
    unprocessed: dict = {}
    for (name, _, write, _, _), result in zip(plans, results):
        if isinstance(result, (StorageError, Busy)):
            unprocessed.setdefault(name, []).append(write)
        elif isinstance(result, BaseException):
            raise result
    out: dict = {"UnprocessedItems": unprocessed}
    mode = request.get("ReturnConsumedCapacity")
    if mode in ("TOTAL", "INDEXES"):
        out["ConsumedCapacity"] = [units.report(mode) for units in consumed.values()]
    if request.get("ReturnItemCollectionMetrics") == "SIZE":
        metrics: dict = {}
        for name, table, _, key, _ in plans:
            entry = collection_metrics(table, request, key)
            if entry is not None and entry not in metrics.setdefault(name, []):
                metrics[name].append(entry)
        out["ItemCollectionMetrics"] = {name: entries for name, entries in metrics.items() if entries}
    return out
