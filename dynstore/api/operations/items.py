"""PutItem, GetItem, UpdateItem, DeleteItem.

Each write goes through store.write_item, so its condition check, the new item and
the write are one atomic step on the item's partition, and the answer waits for the
write to be durable. GetItem reads durable state only.

ReturnValues, as DynamoDB allows them: PutItem and DeleteItem take NONE or ALL_OLD;
UpdateItem takes all five (UPDATED_OLD/UPDATED_NEW return the attributes the update
wrote, as they were before / are after). ``ReturnValuesOnConditionCheckFailure=ALL_OLD``
puts the current item into the ConditionalCheckFailedException body as ``Item``.
"""
from __future__ import annotations

from dynstore import limits
from dynstore.api.errors import ConditionalCheckFailedException, ValidationException
from dynstore.api.expressions import (
    ExpressionContext, attribute_updates, attributes_to_get, check_parameters, compile_condition,
    compile_projection, compile_update, expected,
)
from dynstore.api.expressions.projection import Projection
from dynstore.api.operations.capacity import Consumed, read_units
from dynstore.api.operations.schema import table as find_table
from dynstore.api.operations.store import read_item, write_item
from dynstore.api.values import item_size, validate_item, validate_value

_INVALID = "One or more parameter values were invalid: "


def context(request: dict) -> ExpressionContext:
    """The request's ExpressionAttributeNames/Values, values checked and canonical."""
    values = request.get("ExpressionAttributeValues")
    if values:
        values = {name: validate_value(av) for name, av in values.items()}
    return ExpressionContext(request.get("ExpressionAttributeNames"), values)


def projection_of(request: dict, ctx: ExpressionContext):
    """The request's ProjectionExpression or AttributesToGet as a Projection, or None."""
    if request.get("ProjectionExpression") is not None:
        return compile_projection(request["ProjectionExpression"], ctx)
    if request.get("AttributesToGet") is not None:
        return attributes_to_get(request["AttributesToGet"])
    return None


def condition_of(request: dict, ctx: ExpressionContext):
    """The request's ConditionExpression or Expected as a Condition, or None."""
    if request.get("ConditionExpression") is not None:
        return compile_condition(request["ConditionExpression"], ctx)
    if request.get("Expected"):
        return expected(request["Expected"], request.get("ConditionalOperator"))
    # An empty Expected is no condition, so a ConditionalOperator has nothing to combine.
    if request.get("ConditionalOperator") is not None:
        raise ValidationException("ConditionalOperator can only be used when Filter or Expected conditions have been "
                                  "specified")
    return None


def _return_values(request: dict, allowed: tuple) -> str:
    mode = request.get("ReturnValues", "NONE")
    if mode not in allowed:
        raise ValidationException("ReturnValues can only be ALL_OLD or NONE")
    return mode


def _check(condition, old: dict | None, request: dict) -> None:
    """Raise DynamoDB's ConditionalCheckFailedException unless ``condition`` holds for ``old``."""
    if condition is None or condition.evaluate(old or {}):
        return
    if request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and old is not None:
        raise ConditionalCheckFailedException(Item=old)
    raise ConditionalCheckFailedException()


def _finish(table, request: dict, consumed: Consumed, key: dict, attributes: dict | None) -> dict:
    out: dict = {}
    if attributes:
        out["Attributes"] = attributes
    report = consumed.report(request.get("ReturnConsumedCapacity"))
    if report is not None:
        out["ConsumedCapacity"] = report
    metrics = collection_metrics(table, request, key)
    if metrics is not None:
        out["ItemCollectionMetrics"] = metrics
    return out


def collection_metrics(table, request: dict, key: dict) -> dict | None:
    """ItemCollectionMetrics for ReturnItemCollectionMetrics=SIZE on a table with local indexes."""
    if request.get("ReturnItemCollectionMetrics") != "SIZE":
        return None
    if not any(not index.is_global for index in table.indexes.values()):
        return None
    hash_name = table.schema.hash_name
    # DynamoDB reports an estimate range in GB; an item collection here is always below 1 GB
    # until it reaches the 10 GB item collection limit DynamoDB enforces for local indexes.
    return {"ItemCollectionKey": {hash_name: key[hash_name]}, "SizeEstimateRangeGB": [0.0, 1.0]}


async def _put_or_delete(state, request: dict, operation: str, key_and_item) -> dict:
    """PutItem or DeleteItem: ``key_and_item(table)`` gives the key and the new item (None deletes)."""
    check_parameters(operation, request)
    mode = _return_values(request, ("NONE", "ALL_OLD"))
    table = find_table(state, request["TableName"])
    key, item = key_and_item(table)
    ctx = context(request)
    condition = condition_of(request, ctx)
    ctx.check_unused()
    consumed = Consumed(table.name)

    def decide(old):
        _check(condition, old, request)
        return item

    old, _ = await write_item(state, table, key, decide, consumed)
    return _finish(table, request, consumed, key, old if mode == "ALL_OLD" else None)


async def put_item(state, request: dict) -> dict:
    def key_and_item(table):
        item = validate_item(request["Item"])
        return table.schema.key_of(item), item

    return await _put_or_delete(state, request, "PutItem", key_and_item)


async def delete_item(state, request: dict) -> dict:
    return await _put_or_delete(state, request, "DeleteItem",
                                lambda table: (table.schema.validate_key(request["Key"]), None))


async def update_item(state, request: dict) -> dict:
    check_parameters("UpdateItem", request)
    mode = request.get("ReturnValues", "NONE")
    table = find_table(state, request["TableName"])
    key = table.schema.validate_key(request["Key"])
    ctx = context(request)
    if request.get("UpdateExpression") is not None:
        update = compile_update(request["UpdateExpression"], ctx)
    elif request.get("AttributeUpdates") is not None:
        update = attribute_updates(request["AttributeUpdates"])
    else:
        update = None
    condition = condition_of(request, ctx)
    ctx.check_unused()
    if update is not None:
        for path in update.paths:
            if path[0] in key:
                raise ValidationException(
                    _INVALID + f"Cannot update attribute {path[0]}. This attribute is part of the key"
                )
    consumed = Consumed(table.name)

    def decide(old):
        _check(condition, old, request)
        if update is None:
            return old if old is not None else dict(key)
        if old is None and update.only_removes:
            return None
        new = update.apply(old if old is not None else dict(key))
        if item_size(new) > limits.ITEM_BYTES_MAX:
            raise ValidationException("Item size to update has exceeded the maximum allowed size")
        return new

    old, new = await write_item(state, table, key, decide, consumed)
    if mode == "ALL_OLD":
        attributes = old
    elif mode == "ALL_NEW":
        attributes = new
    elif mode in ("UPDATED_OLD", "UPDATED_NEW") and update is not None:
        written = Projection(update.paths)
        attributes = written.apply(old or {}) if mode == "UPDATED_OLD" else written.apply(new or {})
    else:
        attributes = None
    return _finish(table, request, consumed, key, attributes)


async def get_item(state, request: dict) -> dict:
    check_parameters("GetItem", request)
    table = find_table(state, request["TableName"])
    key = table.schema.validate_key(request["Key"])
    ctx = context(request)
    projection = projection_of(request, ctx)
    ctx.check_unused()
    item = read_item(state, table, key)
    out: dict = {}
    if item is not None:
        out["Item"] = projection.apply(item) if projection is not None else item
    consumed = Consumed(table.name)
    consumed.table = read_units(item_size(item) if item is not None else 0, bool(request.get("ConsistentRead")))
    report = consumed.report(request.get("ReturnConsumedCapacity"))
    if report is not None:
        out["ConsumedCapacity"] = report
    return out
