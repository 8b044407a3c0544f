"""DynamoDB's expression language: a pure core, no I/O.

An expression is parsed once and its tree cached by text (parser.parse, a bounded LRU);
each request then binds the cached tree to its ExpressionContext, which resolves and
counts placeholders, and gets back closures over items:

    ctx = ExpressionContext(request.get("ExpressionAttributeNames"),
                            request.get("ExpressionAttributeValues"))
    condition = compile_condition(text, ctx)            # .evaluate(item) -> bool
    update = compile_update(text, ctx)                  # .apply(item) -> new item, .paths
    projection = compile_projection(text, ctx)          # .apply(item) -> projected item
    key = compile_key_condition(text, ctx, ("pk", "sk"))  # (partition_value, sort_op, sort_values)
    ctx.check_unused()

Every error is a ValidationException carrying DynamoDB's message. The legacy parameters
(legacy.py) become the same Condition, Update, Projection and KeyCondition objects.
"""
from __future__ import annotations

from dynstore.api.expressions.condition import Condition, bind_condition
from dynstore.api.expressions.context import ExpressionContext
from dynstore.api.expressions.keycondition import KeyCondition, bind_key_condition
from dynstore.api.expressions.legacy import (
    attribute_updates, attributes_to_get, check_parameters, expected, filter_condition,
    key_conditions, query_filter, scan_filter,
)
from dynstore.api.expressions.parser import CONDITION, PROJECTION, UPDATE, parse
from dynstore.api.expressions.projection import Projection, bind_projection
from dynstore.api.expressions.update import Update, bind_update

__all__ = [
    "Condition", "ExpressionContext", "KeyCondition", "Projection", "Update",
    "attribute_updates", "attributes_to_get", "check_parameters", "compile_condition",
    "compile_key_condition", "compile_projection", "compile_update", "expected",
    "filter_condition", "key_conditions", "query_filter", "scan_filter",
]


def compile_condition(text: str, ctx: ExpressionContext, kind: str = "ConditionExpression") -> Condition:
    """A ConditionExpression; pass kind="FilterExpression" for filters (it names errors)."""
    parsed = parse(CONDITION, kind, text)
    names, values = ctx.resolve(kind, parsed.refs)
    return bind_condition(parsed.tree, kind, names, values)


def compile_update(text: str, ctx: ExpressionContext, kind: str = "UpdateExpression") -> Update:
    parsed = parse(UPDATE, kind, text)
    names, values = ctx.resolve(kind, parsed.refs)
    return bind_update(parsed.tree, kind, names, values)


def compile_projection(text: str, ctx: ExpressionContext, kind: str = "ProjectionExpression") -> Projection:
    parsed = parse(PROJECTION, kind, text)
    names, values = ctx.resolve(kind, parsed.refs)
    return bind_projection(parsed.tree, kind, names, values)


def compile_key_condition(text: str, ctx: ExpressionContext, schema: tuple,
                          kind: str = "KeyConditionExpression") -> KeyCondition:
    """``schema`` is (hash key name, range key name or None) of the table or index queried."""
    parsed = parse(CONDITION, kind, text)
    names, values = ctx.resolve(kind, parsed.refs)
    return bind_key_condition(parsed.tree, kind, names, values, schema)
