"""Table lifecycle: CreateTable, DeleteTable, DescribeTable, ListTables, UpdateTable.

The catalog stores, per table, the description dict built here (the members
DynamoDB echoes back plus ``TableId``, ``BillingMode``, ``Tags``, ``TimeToLive`` and
an ``IndexId`` per secondary index, which names the index's key space inside the
table's partitions). ``describe`` turns it into DynamoDB's TableDescription, adding
the live ItemCount and sizes.

A table is durable in the catalog before CreateTable answers, so it is ACTIVE at
once: CreateTable itself reports CREATING (as DynamoDB does), and the first
DescribeTable (the ``table_exists`` waiter's first poll) already sees ACTIVE.
DeleteTable reports DELETING and the table is gone when it answers.
"""
from __future__ import annotations

import uuid

from dynstore import limits
from dynstore.api.errors import (
    LimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    ValidationException,
)
from dynstore.api.model import require
from dynstore.api.operations.schema import table_arn
from dynstore.api.operations.store import table_stats
from dynstore.api.operations.tags import validate_tags

_INVALID = "One or more parameter values were invalid: "
TABLE_CLASSES = ("STANDARD", "STANDARD_INFREQUENT_ACCESS")
# Members of the stored description that are internal or rebuilt by describe().
_INTERNAL = ("TableId", "BillingMode", "Tags", "TimeToLive", "LastUpdateToPayPerRequestDateTime",
             "TableClass", "StreamSpecification", "ProvisionedThroughput", "LocalSecondaryIndexes",
             "GlobalSecondaryIndexes", "DeletionProtectionEnabled", "TableStatus", "SSESpecification")

# DeleteTable's TableDescription leaves out the schema that DescribeTable shows.
_NOT_IN_DELETE = ("CreationDateTime", "KeySchema", "AttributeDefinitions", "LocalSecondaryIndexes",
                  "GlobalSecondaryIndexes")


def not_found(name: str) -> ResourceNotFoundException:
    return ResourceNotFoundException(f"Requested resource not found: Table: {name} not found")


def existing(state, name: str) -> dict:
    """The stored description of table ``name``, or DescribeTable's not-found error."""
    desc = state.router.table(name)
    if desc is None:
        raise not_found(name)
    return desc


# -- CreateTable ------------------------------------------------------------------------


def _check_key_schema(key_schema: list[dict], defined: list[str], message_keys: list[str] | None = None) -> None:
    """DynamoDB's checks of one KeySchema (the table's or an index's), in its order."""
    keys = [element["AttributeName"] for element in key_schema]
    if len(keys) > 2:
        # The service model no longer caps KeySchema at two elements (composite index keys), but
        # dynstore's keys are one HASH and at most one RANGE attribute.
        raise ValidationException(f"Invalid KeySchema: it has {len(keys)} elements; a KeySchema holds one HASH "
                                  "and at most one RANGE element")
    if any(key not in defined for key in keys):
        raise ValidationException(
            _INVALID + "Some index key attributes are not defined in AttributeDefinitions. "
            f"Keys: [{', '.join(message_keys or keys)}], AttributeDefinitions: [{', '.join(defined)}]"
        )
    if len(keys) == 2 and keys[0] == keys[1]:
        raise ValidationException("Both the Hash Key and the Range Key element in the KeySchema have the same name")
    if key_schema[0]["KeyType"] != "HASH":
        raise ValidationException("Invalid KeySchema: The first KeySchemaElement is not a HASH key type")
    if len(key_schema) == 2 and key_schema[1]["KeyType"] != "RANGE":
        raise ValidationException("Invalid KeySchema: The second KeySchemaElement is not a RANGE key type")


def _check_throughput(throughput: dict) -> None:
    for member in ("ReadCapacityUnits", "WriteCapacityUnits"):
        if throughput[member] > limits.PROVISIONED_UNITS_MAX:
            raise LimitExceededException(
                f"Subscriber limit exceeded: {member} for a table or index cannot exceed "
                f"{limits.PROVISIONED_UNITS_MAX}"
            )


def _refuse_throughput(throughput: dict | None) -> None:
    if throughput is not None:
        raise ValidationException(
            _INVALID + "Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode "
            "is PAY_PER_REQUEST"
        )


def _throughput(request_throughput: dict | None) -> dict:
    if request_throughput is None:
        return {"NumberOfDecreasesToday": 0, "ReadCapacityUnits": 0, "WriteCapacityUnits": 0}
    return {
        "NumberOfDecreasesToday": 0,
        "ReadCapacityUnits": request_throughput["ReadCapacityUnits"],
        "WriteCapacityUnits": request_throughput["WriteCapacityUnits"],
    }


def _check_projection(index: dict) -> None:
    projection = index["Projection"]
    kind = projection.get("ProjectionType")
    if kind is None:
        raise ValidationException(_INVALID + "Unknown ProjectionType: null")
    non_key = projection.get("NonKeyAttributes")
    if non_key is not None and kind != "INCLUDE":
        raise ValidationException(_INVALID + f"ProjectionType is {kind}, but NonKeyAttributes is specified")
    if kind == "INCLUDE":
        if not non_key:
            raise ValidationException(_INVALID + "ProjectionType is INCLUDE, but NonKeyAttributes is not specified")
        duplicates = sorted({name for name in non_key if non_key.count(name) > 1})
        if duplicates:
            raise ValidationException(_INVALID + f"Duplicate attributes in NonKeyAttributes: {', '.join(duplicates)}")


def _check_index(index: dict, defined: list[str], names: set[str], used: set[str]) -> str:
    """The checks every secondary index gets; records its name and key attributes, returns the name."""
    _check_key_schema(index["KeySchema"], defined)
    _check_projection(index)
    name = index["IndexName"]
    if name in names:
        raise ValidationException(_INVALID + f"Duplicate index name: {name}")
    names.add(name)
    used.update(element["AttributeName"] for element in index["KeySchema"])
    return name


def _check_table_class(request: dict) -> None:
    table_class = request.get("TableClass")
    if table_class is not None and table_class not in TABLE_CLASSES:
        raise ValidationException("Invalid table-class parameter provided. Please try again with a valid table-class "
                                  f"value: [{', '.join(TABLE_CLASSES)}].")


def _validate_create(request: dict) -> str:
    """Validates a CreateTable request the way DynamoDB does; returns the billing mode."""
    # The service model makes only TableName required; DynamoDB still insists on these two.
    require(request, ("AttributeDefinitions", "KeySchema"))
    _check_table_class(request)
    billing = request.get("BillingMode", "PROVISIONED")
    throughput = request.get("ProvisionedThroughput")
    if billing == "PAY_PER_REQUEST":
        _refuse_throughput(throughput)
    else:
        if throughput is None or not throughput.get("ReadCapacityUnits") or not throughput.get("WriteCapacityUnits"):
            raise ValidationException(
                _INVALID + "ReadCapacityUnits and WriteCapacityUnits must both be specified "
                "when BillingMode is PROVISIONED"
            )
    defined = [d["AttributeName"] for d in request["AttributeDefinitions"]]
    key_schema = request["KeySchema"]
    keys = [element["AttributeName"] for element in key_schema]
    if len(keys) > len(defined):
        raise ValidationException("Invalid KeySchema: Some index key attribute have no definition")
    _check_key_schema(key_schema, defined)
    duplicated = next((name for i, name in enumerate(defined) if name in defined[:i]), None)
    if duplicated is not None:
        raise ValidationException(f"Attribute Name is duplicated: {duplicated}")
    lsis = request.get("LocalSecondaryIndexes")
    gsis = request.get("GlobalSecondaryIndexes")
    if lsis is None and gsis is None:
        if len(keys) != len(defined):
            raise ValidationException(
                _INVALID + "Number of attributes in KeySchema does not exactly match number of "
                "attributes defined in AttributeDefinitions"
            )
    names: set[str] = set()
    used = set(keys)
    if lsis is not None:
        if not lsis:
            raise ValidationException(_INVALID + "List of LocalSecondaryIndexes is empty")
        if len(key_schema) != 2:
            raise ValidationException(
                _INVALID + "Table KeySchema does not have a range key, which is required when "
                "specifying a LocalSecondaryIndex"
            )
        for index in lsis:
            name = _check_index(index, defined, names, used)
            if len(index["KeySchema"]) != 2:
                raise ValidationException(_INVALID + f"Index KeySchema does not have a range key for index: {name}")
            index_hash = index["KeySchema"][0]["AttributeName"]
            if index_hash != keys[0]:
                raise ValidationException(
                    _INVALID + "Index KeySchema does not have the same leading hash key as table "
                    f"KeySchema for index: {name}. index hash key: {index_hash}, table hash key: {keys[0]}"
                )
        if len(lsis) > limits.LOCAL_SECONDARY_INDEXES_MAX:
            raise ValidationException(
                _INVALID + "Number of LocalSecondaryIndexes exceeds per-table limit of "
                f"{limits.LOCAL_SECONDARY_INDEXES_MAX}"
            )
    if gsis is not None:
        if not gsis:
            raise ValidationException(_INVALID + "List of GlobalSecondaryIndexes is empty")
        for index in gsis:
            name = _check_index(index, defined, names, used)
            index_throughput = index.get("ProvisionedThroughput")
            if billing == "PAY_PER_REQUEST" and index_throughput is not None:
                raise ValidationException(
                    _INVALID + f"ProvisionedThroughput should not be specified for index: {name} "
                    "when BillingMode is PAY_PER_REQUEST"
                )
            if billing != "PAY_PER_REQUEST":
                if index_throughput is None:
                    raise ValidationException(_INVALID + f"ProvisionedThroughput must be specified for index: {name}")
                _check_throughput(index_throughput)
        if len(gsis) > limits.GLOBAL_SECONDARY_INDEXES_MAX:
            raise ValidationException(
                _INVALID + "GlobalSecondaryIndex count exceeds the per-table limit of "
                f"{limits.GLOBAL_SECONDARY_INDEXES_MAX}"
            )
    if used != set(defined):
        raise ValidationException(
            _INVALID + f"Some AttributeDefinitions are not used. AttributeDefinitions: [{', '.join(defined)}], "
            f"keys used: [{', '.join(sorted(used))}]"
        )
    if throughput is not None:
        _check_throughput(throughput)
    return billing


def _new_table(state, request: dict, billing: str, tags: list[dict]) -> dict:
    """The stored description of a table CreateTable is about to make."""
    name = request["TableName"]
    if state.router.table(name) is not None:
        raise ResourceInUseException(f"Table already exists: {name}")
    if len(state.router.table_names()) >= limits.TABLES_PER_ACCOUNT_MAX:
        raise LimitExceededException(
            f"Subscriber limit exceeded: Number of tables in this account and region exceeds "
            f"{limits.TABLES_PER_ACCOUNT_MAX}"
        )
    now = state.clock()
    desc: dict = {
        "TableName": name,
        "TableId": str(uuid.uuid4()),
        "AttributeDefinitions": request["AttributeDefinitions"],
        "KeySchema": request["KeySchema"],
        "CreationDateTime": now,
        "BillingMode": billing,
        "ProvisionedThroughput": _throughput(request.get("ProvisionedThroughput")),
        "Tags": [{"Key": t["Key"], "Value": t["Value"]} for t in {t["Key"]: t for t in tags}.values()],
        "DeletionProtectionEnabled": bool(request.get("DeletionProtectionEnabled", False)),
    }
    if billing == "PAY_PER_REQUEST":
        desc["LastUpdateToPayPerRequestDateTime"] = now
    index_id = 0
    for kind in ("LocalSecondaryIndexes", "GlobalSecondaryIndexes"):
        if kind in request:
            stored = []
            for index in request[kind]:
                index_id += 1
                entry = {"IndexName": index["IndexName"], "KeySchema": index["KeySchema"],
                         "Projection": index["Projection"], "IndexId": index_id}
                if kind == "GlobalSecondaryIndexes":
                    entry["ProvisionedThroughput"] = _throughput(index.get("ProvisionedThroughput"))
                stored.append(entry)
            desc[kind] = stored
    for member in ("StreamSpecification", "TableClass", "SSESpecification"):
        if member in request:
            desc[member] = request[member]
    return desc


async def create_table(state, request: dict) -> dict:
    billing = _validate_create(request)
    tags = request.get("Tags", [])
    validate_tags(tags)
    async with state.router.catalog_lock:
        desc = _new_table(state, request, billing, tags)
        await state.router.create_table(desc)
    return {"TableDescription": describe(state, desc, status="CREATING")}


# -- DescribeTable ----------------------------------------------------------------------


def describe(state, desc: dict, *, status: str = "ACTIVE") -> dict:
    """DynamoDB's TableDescription of a stored table."""
    arn = table_arn(state, desc["TableName"])
    items, size, per_index = table_stats(state, desc)
    out = {key: value for key, value in desc.items() if key not in _INTERNAL}
    out["TableStatus"] = status
    out["ProvisionedThroughput"] = dict(desc["ProvisionedThroughput"])
    out["TableSizeBytes"] = size
    out["ItemCount"] = items
    out["TableArn"] = arn
    out["TableId"] = desc["TableId"]
    if "LastUpdateToPayPerRequestDateTime" in desc:
        summary = {"BillingMode": desc["BillingMode"]}
        summary["LastUpdateToPayPerRequestDateTime"] = desc["LastUpdateToPayPerRequestDateTime"]
        out["BillingModeSummary"] = summary
    for kind in ("LocalSecondaryIndexes", "GlobalSecondaryIndexes"):
        if kind in desc:
            described = []
            for index in desc[kind]:
                entry = {"IndexName": index["IndexName"], "KeySchema": index["KeySchema"],
                         "Projection": index["Projection"]}
                if kind == "GlobalSecondaryIndexes":
                    entry["IndexStatus"] = "ACTIVE"
                    entry["ProvisionedThroughput"] = dict(index["ProvisionedThroughput"])
                index_items, index_size = per_index.get(index["IndexId"], (0, 0))
                entry["IndexSizeBytes"] = index_size
                entry["ItemCount"] = index_items
                entry["IndexArn"] = f"{arn}/index/{index['IndexName']}"
                described.append(entry)
            out[kind] = described
    stream = desc.get("StreamSpecification")
    if stream and stream.get("StreamEnabled"):
        out["StreamSpecification"] = stream
    if "TableClass" in desc:
        out["TableClassSummary"] = {"TableClass": desc["TableClass"]}
    out["DeletionProtectionEnabled"] = desc.get("DeletionProtectionEnabled", False)
    return out


async def describe_table(state, request: dict) -> dict:
    return {"Table": describe(state, existing(state, request["TableName"]))}


# -- ListTables ---------------------------------------------------------------------------


async def list_tables(state, request: dict) -> dict:
    names = state.router.table_names()
    start = request.get("ExclusiveStartTableName")
    if start is not None:
        names = [name for name in names if name > start]
    limit = request.get("Limit", limits.LIST_TABLES_LIMIT_MAX)
    out: dict = {"TableNames": names[:limit]}
    if len(names) > limit:
        out["LastEvaluatedTableName"] = names[limit - 1]
    return out


# -- DeleteTable --------------------------------------------------------------------------


async def delete_table(state, request: dict) -> dict:
    name = request["TableName"]
    async with state.router.catalog_lock:
        desc = existing(state, name)
        if desc.get("DeletionProtectionEnabled"):
            raise ValidationException(
                "Resource cannot be deleted as it is currently protected against deletion. "
                "Disable deletion protection first."
            )
        described = describe(state, desc, status="DELETING")
        for member in _NOT_IN_DELETE:
            described.pop(member, None)
        await state.router.delete_table(name)
    state.schemas.pop(desc["TableId"], None)
    state.ttl_cursors.pop(desc["TableId"], None)
    return {"TableDescription": described}


# -- UpdateTable --------------------------------------------------------------------------


def _new_throughput(state, current: dict, requested: dict, what: str) -> dict:
    """``current`` changed to ``requested``, with DynamoDB's increase/decrease bookkeeping."""
    _check_throughput(requested)
    read = requested["ReadCapacityUnits"] - current["ReadCapacityUnits"]
    write = requested["WriteCapacityUnits"] - current["WriteCapacityUnits"]
    if not read and not write:
        raise ValidationException(
            f"The provisioned throughput for the {what} will not change. The requested value equals the current "
            f"value. Current ReadCapacityUnits provisioned for the {what}: {current['ReadCapacityUnits']}. "
            f"Requested ReadCapacityUnits: {requested['ReadCapacityUnits']}. Current WriteCapacityUnits "
            f"provisioned for the {what}: {current['WriteCapacityUnits']}. Requested WriteCapacityUnits: "
            f"{requested['WriteCapacityUnits']}. Refer to the Amazon DynamoDB Developer Guide for current "
            "limits and how to request higher limits."
        )
    updated = dict(current)
    updated["ReadCapacityUnits"] = requested["ReadCapacityUnits"]
    updated["WriteCapacityUnits"] = requested["WriteCapacityUnits"]
    now = state.clock()
    if read > 0 or write > 0:
        updated["LastIncreaseDateTime"] = now
    if read < 0 or write < 0:
        if current.get("NumberOfDecreasesToday", 0) >= limits.THROUGHPUT_DECREASES_PER_DAY_MAX:
            raise LimitExceededException(
                f"Subscriber limit exceeded: Provisioned throughput decreases are limited within a given UTC day. "
                f"After the first 4 decreases, each subsequent decrease in the same UTC day can be performed at "
                f"most once every 3600 seconds. Number of decreases today: {current['NumberOfDecreasesToday']}."
            )
        updated["LastDecreaseDateTime"] = now
        updated["NumberOfDecreasesToday"] = current.get("NumberOfDecreasesToday", 0) + 1
    return updated


def _update_indexes(state, desc: dict, updates: list[dict], billing: str) -> list[dict]:
    by_name = {index["IndexName"]: index for index in desc.get("GlobalSecondaryIndexes", [])}
    seen: set[str] = set()
    for update in updates:
        if not any(kind in update for kind in ("Update", "Create", "Delete")):
            raise ValidationException(
                _INVALID + "One of GlobalSecondaryIndexUpdate.Update, GlobalSecondaryIndexUpdate.Create, "
                "GlobalSecondaryIndexUpdate.Delete must not be null"
            )
        action = update.get("Update") or update.get("Create") or update.get("Delete")
        name = action["IndexName"]
        if name in seen:
            raise ValidationException(
                _INVALID + f"Only one global secondary index update per index is allowed simultaneously. Index: {name}"
            )
        seen.add(name)
        if "Update" not in update:
            raise ValidationException(
                "Creating or deleting a global secondary index on an existing table is not supported by "
                "this endpoint; create the table with its indexes instead."
            )
        if name not in by_name:
            raise ResourceNotFoundException(f"Requested resource not found: Requested index {name} not found")
        if billing == "PAY_PER_REQUEST":
            raise ValidationException(
                _INVALID + f"ProvisionedThroughput should not be specified for index: {name} when BillingMode "
                "is PAY_PER_REQUEST"
            )
        index = dict(by_name[name])
        index["ProvisionedThroughput"] = _new_throughput(
            state, index["ProvisionedThroughput"], action["ProvisionedThroughput"], "index"
        )
        by_name[name] = index
    return list(by_name.values())


async def update_table(state, request: dict) -> dict:
    async with state.router.catalog_lock:
        return await _update_table(state, request)


async def _update_table(state, request: dict) -> dict:
    desc = existing(state, request["TableName"])
    changes = ("ProvisionedThroughput", "BillingMode", "StreamSpecification", "GlobalSecondaryIndexUpdates",
               "SSESpecification", "ReplicaUpdates", "DeletionProtectionEnabled", "TableClass")
    if not any(request.get(member) not in (None, []) for member in changes):
        raise ValidationException(
            "At least one of ProvisionedThroughput, BillingMode, UpdateStreamEnabled, GlobalSecondaryIndexUpdates "
            "or SSESpecification or ReplicaUpdates is required"
        )
    _check_table_class(request)
    updated = dict(desc)
    now = state.clock()
    billing = request.get("BillingMode", desc["BillingMode"])
    throughput = request.get("ProvisionedThroughput")
    if billing == "PAY_PER_REQUEST":
        _refuse_throughput(throughput)
        if desc["BillingMode"] != "PAY_PER_REQUEST":
            updated["LastUpdateToPayPerRequestDateTime"] = now
            updated["ProvisionedThroughput"] = dict(desc["ProvisionedThroughput"], ReadCapacityUnits=0,
                                                    WriteCapacityUnits=0)
            updated["GlobalSecondaryIndexes"] = [
                dict(index, ProvisionedThroughput=_throughput(None))
                for index in desc.get("GlobalSecondaryIndexes", [])
            ] or None
    else:
        if desc["BillingMode"] == "PAY_PER_REQUEST":
            if throughput is None:
                raise ValidationException(
                    _INVALID + "ProvisionedThroughput must be specified when BillingMode is PROVISIONED"
                )
            updated["ProvisionedThroughput"] = dict(desc["ProvisionedThroughput"], **throughput)
            _check_throughput(throughput)
        elif throughput is not None:
            updated["ProvisionedThroughput"] = _new_throughput(state, desc["ProvisionedThroughput"], throughput,
                                                               "table")
    updated["BillingMode"] = billing
    if request.get("GlobalSecondaryIndexUpdates"):
        updated["GlobalSecondaryIndexes"] = _update_indexes(state, updated, request["GlobalSecondaryIndexUpdates"],
                                                            billing)
    if updated.get("GlobalSecondaryIndexes") is None:
        updated.pop("GlobalSecondaryIndexes", None)
    if "DeletionProtectionEnabled" in request:
        updated["DeletionProtectionEnabled"] = bool(request["DeletionProtectionEnabled"])
    for member in ("StreamSpecification", "TableClass", "SSESpecification"):
        if member in request:
            updated[member] = request[member]
    await state.router.update_table(updated)
    changing = throughput is not None or billing != desc["BillingMode"] or "GlobalSecondaryIndexUpdates" in request
    return {"TableDescription": describe(state, updated, status="UPDATING" if changing else "ACTIVE")}
