"""Query and Scan: range scans over a table's (or an index's) key space, across its partitions.

A table's items are read partition after partition, each within its own key range. Every
partition holds the index entries of its own items, so a read of an index merges the
partitions' entries in index-key order (either direction); paging positions are keys,
so a page may end in one partition and the next begin in another. A Query of the table
or of a local index reads the one partition that holds its partition key.

A page ends after ``Limit`` items were *evaluated* (read, before the filter) or once
the items read add up to 1 MB, as in DynamoDB; then ``LastEvaluatedKey`` is the key of
the last item read, and the next page starts just after it (``ExclusiveStartKey``).
Count and ScannedCount count the items that passed the filter and the items read.

Reads see durable state only (the partition's B-tree). A query on an index walks
the index entries (schema.py) and fetches each base item. A global index returns only
what it projects; a local index, like DynamoDB's, returns the whole base item for
Select=ALL_ATTRIBUTES and lets SPECIFIC_ATTRIBUTES and filters name any attribute.

Capacity: the sizes of all items read are summed and rounded up to 4 KB units once
per request, halved for eventually consistent reads.
"""
from __future__ import annotations

from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.expressions import (
    check_parameters, compile_condition, compile_key_condition, key_conditions, query_filter, scan_filter,
)
from dynstore.api.operations.capacity import Consumed, read_units
from dynstore.api.operations.codec import decode_item
from dynstore.api.operations.items import context, projection_of
from dynstore.api.operations.schema import ITEMS, owned_entries, owned_items, segment_range, space_end
from dynstore.api.operations.schema import table as find_table
from dynstore.api.values import item_size

_INVALID = "One or more parameter values were invalid: "


def _select(request: dict, index, projection) -> str:
    select = request.get("Select")
    legacy = request.get("AttributesToGet") is not None
    what = "AttributesToGet" if legacy else "ProjectionExpression"
    if select is None:
        return "SPECIFIC_ATTRIBUTES" if projection is not None else (
            "ALL_PROJECTED_ATTRIBUTES" if index is not None else "ALL_ATTRIBUTES")
    if select == "SPECIFIC_ATTRIBUTES":
        if projection is None:
            raise ValidationException(_INVALID + "Must specify the AttributesToGet or ProjectionExpression "
                                      "when choosing to get SPECIFIC_ATTRIBUTES")
    elif projection is not None:
        raise ValidationException(_INVALID + f"Cannot specify the {what} when choosing to get {select}")
    if select == "ALL_PROJECTED_ATTRIBUTES" and index is None:
        raise ValidationException(_INVALID + "ALL_PROJECTED_ATTRIBUTES can be used only when Querying using an "
                                  "IndexName")
    if select == "ALL_ATTRIBUTES" and index is not None and index.is_global and index.projection_type != "ALL":
        raise ValidationException(_INVALID + f"Select type ALL_ATTRIBUTES is not supported for global secondary "
                                  f"index {index.name} because its projection type is not ALL")
    return select


def _start_key_position(table, index, start_key: dict) -> bytes:
    """The storage key (item or index entry) an ExclusiveStartKey names."""
    names = set(table.key_names) | (set(index.schema.names) if index is not None else set())
    if set(start_key) != names:
        raise ValidationException("The provided starting key is invalid: The provided key element does not match "
                                  "the schema")
    try:
        base = table.schema.validate_key({name: start_key[name] for name in table.key_names})
    except ValidationException as error:
        raise ValidationException(f"The provided starting key is invalid: {error.message}") from None
    storage_key = table.storage_key(base)
    if index is None:
        return storage_key
    entry = index.entry_key(start_key, storage_key)
    if entry is None:
        raise ValidationException("The provided starting key is invalid: The provided key element does not match "
                                  "the schema")
    return entry


def _read_page(state, table, index, entries, request: dict, filter_, projection, select: str) -> dict:
    """Walk ``entries`` (key, value, partition) in order and build the response page.

    Items for a read of the table, index entries (value = the base item's storage key,
    in the same partition) for a read of an index (schema.owned_items, owned_entries).
    """
    limit = request.get("Limit")
    select_count = request.get("Select") == "COUNT"
    items: list[dict] = []
    scanned = 0
    size = 0
    last = None
    for stored_key, value, partition in entries:
        if index is None:
            item = decode_item(value)
        else:
            base = partition.get(value)
            if base is None:
                # The entry's base item is gone in a batch not yet applied: skip it.
                continue
            item = decode_item(base)
            # A local index sits beside its base items, so DynamoDB fetches them whole for the
            # filter and for a Select beyond the projection; a global index has only what it projects.
            if index.is_global:
                item = index.project(item)
        scanned += 1
        size += item_size(item)
        if filter_ is None or filter_.evaluate(item):
            if not select_count:
                if projection is not None:
                    items.append(projection.apply(item))
                elif select == "ALL_PROJECTED_ATTRIBUTES":
                    items.append(index.project(item))
                else:
                    items.append(item)
            else:
                items.append(None)
        if scanned == limit or size >= limits.PAGE_BYTES_MAX:
            last = item
            break
    consumed = Consumed(table.name)
    units = read_units(size, bool(request.get("ConsistentRead")))
    if index is None:
        consumed.table = units
    else:
        consumed.add_index(index.is_global, index.name, units)
    out: dict = {}
    if not select_count:
        out["Items"] = items
    out["Count"] = len(items)
    out["ScannedCount"] = scanned
    if last is not None:
        names = table.key_names + (tuple(n for n in index.schema.names if n not in table.key_names)
                                   if index is not None else ())
        out["LastEvaluatedKey"] = {name: last[name] for name in names}
    report = consumed.report(request.get("ReturnConsumedCapacity"))
    if report is not None:
        out["ConsumedCapacity"] = report
    return out


def _filter_and_projection(request: dict, ctx, index, legacy_name: str, legacy_filter):
    """The request's filter (FilterExpression or the legacy one) and projection, Select checked."""
    if request.get("FilterExpression") is not None:
        filter_ = compile_condition(request["FilterExpression"], ctx, "FilterExpression")
    elif request.get(legacy_name) is not None:
        filter_ = legacy_filter(request[legacy_name], request.get("ConditionalOperator"))
    else:
        filter_ = None
    projection = projection_of(request, ctx)
    ctx.check_unused()
    return filter_, projection, _select(request, index, projection)


def _common(state, request: dict, operation: str):
    check_parameters(operation, request)
    table = find_table(state, request["TableName"])
    index = table.index(request["IndexName"]) if request.get("IndexName") is not None else None
    if index is not None and index.is_global and request.get("ConsistentRead"):
        raise ValidationException("Consistent reads are not supported on global secondary indexes")
    return table, index


async def query(state, request: dict) -> dict:
    table, index = _common(state, request, "Query")
    schema = index.schema if index is not None else table.schema
    ctx = context(request)
    names = (schema.hash_name, schema.range_name)
    if request.get("KeyConditionExpression") is not None:
        key = compile_key_condition(request["KeyConditionExpression"], ctx, names)
    elif request.get("KeyConditions") is not None:
        key = key_conditions(request["KeyConditions"], names)
    else:
        raise ValidationException("Either the KeyConditions or KeyConditionExpression parameter must be specified "
                                  "in the request.")
    for name in request.get("QueryFilter") or ():
        # The key condition already decides key attributes; the legacy filter may not repeat them.
        if name in names:
            raise ValidationException(f"QueryFilter can only contain non-primary key attributes: "
                                      f"Primary key attribute: {name}")
    filter_, projection, select = _filter_and_projection(request, ctx, index, "QueryFilter", query_filter)
    if request.get("FilterExpression") is not None:
        for name in names:
            if name in filter_.attributes:
                raise ValidationException(f"Filter Expression can only contain non-primary key attributes: "
                                          f"Primary key attribute: {name}")
    if schema.hash_type not in key.partition_value:
        raise ValidationException(_INVALID + "Condition parameter type does not match schema type")
    if key.sort_op is None:
        start, end = schema.partition_range(key.partition_value)
    else:
        start, end = schema.sort_range(key.partition_value, key.sort_op, list(key.sort_values))
    prefix = index.prefix if index is not None else ITEMS
    start, end = prefix + start, prefix + end
    reverse = request.get("ScanIndexForward") is False
    if request.get("ExclusiveStartKey") is not None:
        position = _start_key_position(table, index, request["ExclusiveStartKey"])
        partition_start, partition_end = schema.partition_range(key.partition_value)
        if not prefix + partition_start <= position < prefix + partition_end:
            raise ValidationException("The provided starting key is outside query boundaries based on provided "
                                      "conditions")
        if reverse:
            end = min(end, position)
        else:
            start = max(start, position + b"\x00")
    # One partition key lives in one partition (splits cut between partition keys), and so do the
    # local index entries of its items; a global index's entries are spread over every partition.
    if index is not None and index.is_global:
        entries = owned_entries(state.router.partitions(table.desc), start, end, reverse=reverse)
    else:
        item_start = ITEMS + table.schema.partition_range(key.partition_value)[0]
        partition = [state.router.partition_for(table.desc, item_start)]
        entries = (owned_items if index is None else owned_entries)(partition, start, end, reverse=reverse)
    return _read_page(state, table, index, entries, request, filter_, projection, select)


async def scan(state, request: dict) -> dict:
    table, index = _common(state, request, "Scan")
    segment, total = request.get("Segment"), request.get("TotalSegments")
    if segment is not None and total is None:
        raise ValidationException("The TotalSegments parameter is required but was not present in the request "
                                  "when parameter Segment is present")
    if total is not None and segment is None:
        raise ValidationException("The Segment parameter is required but was not present in the request when "
                                  "parameter TotalSegments is present")
    if segment is not None and segment >= total:
        raise ValidationException(f"The Segment parameter is zero-based and must be less than parameter "
                                  f"TotalSegments: Segment: {segment} is not less than TotalSegments: {total}")
    ctx = context(request)
    filter_, projection, select = _filter_and_projection(request, ctx, index, "ScanFilter", scan_filter)
    prefix = index.prefix if index is not None else ITEMS
    if segment is None:
        start, end = prefix, space_end(prefix)
    else:
        start, end = segment_range(prefix, segment, total)
    if request.get("ExclusiveStartKey") is not None:
        position = _start_key_position(table, index, request["ExclusiveStartKey"])
        if segment is not None and not start <= position < end:
            raise ValidationException("The provided Exclusive start key does not map to the provided Segment and "
                                      "TotalSegments values.")
        start = max(start, position + b"\x00")
    partitions = state.router.partitions(table.desc)
    entries = (owned_items if index is None else owned_entries)(partitions, start, end)
    return _read_page(state, table, index, entries, request, filter_, projection, select)
