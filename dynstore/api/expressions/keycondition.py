"""KeyConditionExpression (and legacy KeyConditions) reduced to what a Query scans: the
partition key value and at most one condition on the sort key.

A key condition is ``pk = :v`` optionally ANDed with one sort key condition using
``= < <= > >=``, BETWEEN or begins_with; either side of a comparison may hold the key
(``:v < sk`` is ``sk > :v``). Sort conditions use the legacy operator names (EQ, LT, LE,
GT, GE, BETWEEN, BEGINS_WITH), which KeySchema.sort_range takes.
"""
from __future__ import annotations

from typing import NamedTuple

from dynstore.api.errors import ValidationException
from dynstore.api.expressions import operands
from dynstore.api.expressions.ast import And, Between, Call, Compare, Group, In, Not, Or, Path, unwrap
from dynstore.api.expressions.condition import ConditionBinder

_OPERATORS = {"=": "EQ", "<": "LT", "<=": "LE", ">": "GT", ">=": "GE"}
_FLIPPED = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class KeyCondition(NamedTuple):
    partition_value: dict  # the partition key's attribute value
    sort_op: str | None  # EQ LT LE GT GE BETWEEN BEGINS_WITH, or None for the whole partition
    sort_values: tuple  # the operator's attribute values (two for BETWEEN)


def key_condition_from(conditions: dict, schema: tuple) -> KeyCondition:
    """Check ``conditions`` (attribute name -> (operator, values)) against the key schema
    (hash name, range name or None), as DynamoDB does for both key condition forms."""
    hash_name, range_name = schema
    if hash_name not in conditions:
        raise ValidationException(f"Query condition missed key schema element: {hash_name}")
    for name in conditions:
        if name not in (hash_name, range_name):
            if range_name is None:
                raise ValidationException("Query key condition not supported")
            raise ValidationException(f"Query condition missed key schema element: {range_name}")
    op, values = conditions[hash_name]
    if op != "EQ":
        raise ValidationException("Query key condition not supported")
    for _, values_ in conditions.values():
        for value in values_:
            if operands.type_of(value) not in operands.SCALAR_TYPES:
                raise ValidationException("One or more parameter values were invalid: Condition "
                                          "parameter type does not match schema type")
    if range_name in conditions:
        sort_op, sort_values = conditions[range_name]
        return KeyCondition(values[0], sort_op, tuple(sort_values))
    return KeyCondition(values[0], None, ())


class _KeyBinder(ConditionBinder):
    __slots__ = ()

    def fail(self, message: str):
        raise self.error(message)

    def conditions(self, node, found: dict) -> None:
        node = unwrap(node)
        kind = type(node)
        if kind is And:
            for item in node.items:
                self.conditions(item, found)
            return
        if kind in (Or, Not, In) or (kind is Compare and node.op == "<>"):
            word = {Or: "OR", Not: "NOT", In: "IN"}.get(kind, "<>")
            self.fail(f"Invalid operator used in KeyConditionExpression: {word}")
        if kind is Call:
            self.check_call(node)
            if node.name == "size":
                self.fail("KeyConditionExpressions cannot contain nested operations")
            if node.name != "begins_with":
                self.fail(f"Invalid operator used in KeyConditionExpression: {node.name}")
            operands_ = node.args
            op = "BEGINS_WITH"
        elif kind is Between:
            self.check_between(node.low, node.high)
            operands_ = (node.operand, node.low, node.high)
            op = "BETWEEN"
        else:
            assert kind is Compare, node
            self.check_distinct(node.op, node.left, node.right)
            operands_ = (node.left, node.right)
            op = node.op
        key = None
        for position, operand in enumerate(operands_):
            operand = unwrap(operand)
            if type(operand) is Call:
                self.fail("KeyConditionExpressions cannot contain nested operations")
            if type(operand) is Path:
                path = self.path(operand)
                if key is not None:
                    self.fail("Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition")
                if len(path) > 1:
                    self.fail("KeyConditionExpressions cannot have conditions on nested attributes")
                key = (path[0], position)
        if key is None:
            self.fail("Invalid condition in KeyConditionExpression: No key attribute specified")
        name, position = key
        if position != 0:
            if op in ("BETWEEN", "BEGINS_WITH"):
                word = "BETWEEN" if op == "BETWEEN" else "begins_with"
                self.fail(f"Invalid condition in KeyConditionExpression: {word} operator must have "
                          "the key attribute as its first operand")
            op = _FLIPPED[op]
        if name in found:
            self.fail("KeyConditionExpressions must only contain one condition per key")
        values = tuple(self.value(unwrap(o)) for i, o in enumerate(operands_) if i != position)
        found[name] = (_OPERATORS.get(op, op), values)


def bind_key_condition(tree, kind: str, names: dict, values: dict, schema: tuple) -> KeyCondition:
    found = {}
    _KeyBinder(kind, names, values).conditions(Group(tree), found)
    return key_condition_from(found, schema)
