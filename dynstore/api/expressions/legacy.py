"""DynamoDB's pre-expression parameters, converted to the trees expressions parse into, so
one evaluator serves both: Expected (with ConditionalOperator), QueryFilter, ScanFilter,
AttributeUpdates, AttributesToGet and KeyConditions.

Legacy attribute names are taken as written (no placeholders, no reserved words), values
are ``Literal`` nodes. The parameters are checked first with DynamoDB's messages for the
legacy forms ("Invalid number of argument(s) for the EQ ComparisonOperator", ...).
"""
from __future__ import annotations

from dynstore.api.errors import ValidationException
from dynstore.api.expressions import operands
from dynstore.api.expressions.ast import (
    Action, And, Between, Call, Compare, In, Literal, Not, Or, Path,
)
from dynstore.api.expressions.condition import Condition, ConditionBinder
from dynstore.api.expressions.keycondition import KeyCondition, key_condition_from
from dynstore.api.expressions.projection import Projection
from dynstore.api.expressions.update import OperandTypeError, Update, UpdateBinder
from dynstore.api.values import validate_value

_INVALID = "One or more parameter values were invalid: "
_COMPARISONS = {"EQ": "=", "NE": "<>", "LE": "<=", "LT": "<", "GE": ">=", "GT": ">"}
# Operator -> (fewest, most) values in AttributeValueList.
_ARGUMENTS = {
    "EQ": (1, 1), "NE": (1, 1), "LE": (1, 1), "LT": (1, 1), "GE": (1, 1), "GT": (1, 1),
    "NOT_NULL": (0, 0), "NULL": (0, 0), "CONTAINS": (1, 1), "NOT_CONTAINS": (1, 1),
    "BEGINS_WITH": (1, 1), "IN": (1, None), "BETWEEN": (2, 2),
}
# Operator -> value types it accepts; EQ and NE accept every type.
_VALUE_TYPES = {
    "LE": "SNB", "LT": "SNB", "GE": "SNB", "GT": "SNB", "BETWEEN": "SNB", "IN": "SNB",
    "CONTAINS": "SNB", "NOT_CONTAINS": "SNB", "BEGINS_WITH": "SB",
}
_KEY_OPERATORS = frozenset({"EQ", "LE", "LT", "GE", "GT", "BEGINS_WITH", "BETWEEN"})


def _check_values(op: str, values: list) -> None:
    if op not in _ARGUMENTS:
        raise ValidationException(f"{_INVALID}Unsupported ComparisonOperator: {op}")
    fewest, most = _ARGUMENTS[op]
    if len(values) < fewest or (most is not None and len(values) > most):
        raise ValidationException(f"{_INVALID}Invalid number of argument(s) for the {op} ComparisonOperator")
    kinds = [operands.type_of(v) for v in values]
    if any(kind != kinds[0] for kind in kinds):
        raise ValidationException(f"{_INVALID}AttributeValues inside AttributeValueList must be of same type")
    allowed = _VALUE_TYPES.get(op)
    for kind in kinds:
        if allowed is not None and (len(kind) != 1 or kind not in allowed):
            raise ValidationException(f"{_INVALID}ComparisonOperator {op} is not valid for {kind} AttributeValue type")
    if op == "BETWEEN" and operands.ordering_key(values[0])[1] > operands.ordering_key(values[1])[1]:
        raise ValidationException("The BETWEEN condition was provided a range where the lower bound "
                                  "is greater than the upper bound")


def _comparison(name: str, op: str, values: list):
    path = Path((name,))
    literals = [Literal(v) for v in values]
    if op in _COMPARISONS:
        return Compare(_COMPARISONS[op], path, literals[0])
    if op == "NOT_NULL":
        return Call("attribute_exists", (path,))
    if op == "NULL":
        return Call("attribute_not_exists", (path,))
    if op == "CONTAINS":
        return Call("contains", (path, literals[0]))
    if op == "NOT_CONTAINS":
        return And((Call("attribute_exists", (path,)), Not(Call("contains", (path, literals[0])))))
    if op == "BEGINS_WITH":
        return Call("begins_with", (path, literals[0]))
    if op == "IN":
        return In(path, tuple(literals))
    return Between(path, literals[0], literals[1])


def _combine(parts: list, conditional_operator: str | None, parameter: str) -> Condition:
    if conditional_operator not in (None, "AND", "OR"):
        raise ValidationException(f"1 validation error detected: Value '{conditional_operator}' at "
                                  "'conditionalOperator' failed to satisfy constraint: Member must "
                                  "satisfy enum value set: [AND, OR]")
    tree = (Or if conditional_operator == "OR" else And)(tuple(parts))
    return Condition(ConditionBinder(parameter, {}, {}).condition(tree))


def expected(conditions: dict, conditional_operator: str | None = None) -> Condition:
    """The legacy Expected parameter as a condition."""
    parts = []
    for name, condition in conditions.items():
        where = f" for Attribute: {name}"
        has_list = "AttributeValueList" in condition
        if has_list and "Value" in condition:
            raise ValidationException(f"{_INVALID}Value and AttributeValueList cannot be used together{where}")
        op = condition.get("ComparisonOperator")
        if op is not None:
            if "Exists" in condition:
                raise ValidationException(f"{_INVALID}Exists and ComparisonOperator cannot be used together{where}")
            if op not in ("NULL", "NOT_NULL") and not has_list and "Value" not in condition:
                raise ValidationException(f"{_INVALID}Value or AttributeValueList must be used with "
                                          f"ComparisonOperator: {op}{where}")
            values = condition["AttributeValueList"] if has_list else \
                [condition["Value"]] if "Value" in condition else []
            _check_values(op, values)
            parts.append(_comparison(name, op, values))
        elif has_list:
            raise ValidationException(f"{_INVALID}AttributeValueList can only be used with a ComparisonOperator{where}")
        else:
            exists = condition.get("Exists")
            value = condition.get("Value")
            if exists is not False and value is None:
                shown = "null" if exists is None else "true"
                raise ValidationException(f"{_INVALID}Value must be provided when Exists is {shown}{where}")
            if exists is False and value is not None:
                raise ValidationException(f"{_INVALID}Value cannot be used when Exists is false{where}")
            parts.append(Call("attribute_not_exists", (Path((name,)),)) if exists is False
                         else Compare("=", Path((name,)), Literal(value)))
    return _combine(parts, conditional_operator, "Expected")


def filter_condition(conditions: dict, conditional_operator: str | None = None) -> Condition:
    """The legacy QueryFilter or ScanFilter parameter as a condition."""
    parts = []
    for name, condition in conditions.items():
        op = condition["ComparisonOperator"]
        values = condition.get("AttributeValueList") or []
        _check_values(op, values)
        parts.append(_comparison(name, op, values))
    return _combine(parts, conditional_operator, "Filter")


query_filter = scan_filter = filter_condition


class _AttributeUpdates(Update):
    """AttributeUpdates reports a value of the wrong type for ADD or DELETE in its own words."""

    __slots__ = ()

    def apply(self, item: dict) -> dict:
        try:
            return super().apply(item)
        except OperandTypeError:
            raise ValidationException(f"{_INVALID}Type mismatch for attribute to update") from None


def attribute_updates(updates: dict) -> Update:
    """The legacy AttributeUpdates parameter as an update."""
    actions = []
    for name, update in updates.items():
        action = update.get("Action", "PUT")
        value = update.get("Value")
        path = Path((name,))
        if value is not None:
            value = validate_value(value)
        if value is None:
            if action != "DELETE":
                raise ValidationException(f"{_INVALID}Only DELETE action is allowed when no attribute value is specified")
            actions.append(Action("REMOVE", path, None))
            continue
        kind = operands.type_of(value)
        if action == "PUT":
            actions.append(Action("SET", path, Literal(value)))
        elif action == "DELETE":
            if kind not in operands.SET_TYPES:
                raise ValidationException(f"{_INVALID}DELETE action with value is not supported for the type {kind}")
            actions.append(Action("DELETE", path, Literal(value)))
        elif kind == "L":
            # Legacy ADD appends to a list, which expressions spell as list_append.
            existing = Call("if_not_exists", (path, Literal({"L": []})))
            actions.append(Action("SET", path, Call("list_append", (existing, Literal(value)))))
        elif kind == "N" or kind in operands.SET_TYPES:
            actions.append(Action("ADD", path, Literal(value)))
        else:
            raise ValidationException(f"{_INVALID}ADD action is not supported for the type {kind}")
    return UpdateBinder("AttributeUpdates", {}, {}).bind(tuple(actions), _AttributeUpdates)


def attributes_to_get(names: list) -> Projection:
    """The legacy AttributesToGet parameter as a projection of top-level attributes."""
    seen = set()
    for name in names:
        if name in seen:
            raise ValidationException(f"{_INVALID}Duplicate value in attribute name: {name}")
        seen.add(name)
    return Projection(tuple((name,) for name in names))


def key_conditions(conditions: dict, schema: tuple) -> KeyCondition:
    """The legacy KeyConditions parameter; ``schema`` is (hash name, range name or None)."""
    found = {}
    for name, condition in conditions.items():
        op = condition["ComparisonOperator"]
        values = condition.get("AttributeValueList") or []
        _check_values(op, values)
        if op not in _KEY_OPERATORS:
            raise ValidationException("Attempted conditional constraint is not an indexable operation")
        found[name] = (op, tuple(values))
    if len(found) not in (1, 2):
        raise ValidationException("Conditions can be of length 1 or 2 only")
    return key_condition_from(found, schema)


_EXPRESSION_PARAMETERS = {
    # operation -> (expression parameters, legacy parameters), in the order DynamoDB lists them
    "GetItem": (("ProjectionExpression",), ("AttributesToGet",)),
    "BatchGetItem": (("ProjectionExpression",), ("AttributesToGet",)),
    "PutItem": (("ConditionExpression",), ("Expected", "ConditionalOperator")),
    "DeleteItem": (("ConditionExpression",), ("Expected", "ConditionalOperator")),
    "UpdateItem": (("UpdateExpression", "ConditionExpression"),
                   ("AttributeUpdates", "Expected", "ConditionalOperator")),
    "Query": (("ProjectionExpression", "FilterExpression", "KeyConditionExpression"),
              ("AttributesToGet", "QueryFilter", "ConditionalOperator", "KeyConditions")),
    "Scan": (("ProjectionExpression", "FilterExpression"),
             ("AttributesToGet", "ScanFilter", "ConditionalOperator")),
}


def check_parameters(operation: str, request: dict) -> None:
    """DynamoDB's rules for mixing expression and legacy parameters in one request
    (``request`` is the request body, or one table's entry of a BatchGetItem)."""
    expressions, legacy = _EXPRESSION_PARAMETERS[operation]
    used = [p for p in expressions if request.get(p) is not None]
    if used:
        # A Query may pair legacy KeyConditions with expression filters and projections.
        if request.get("KeyConditionExpression") is None:
            legacy = tuple(p for p in legacy if p != "KeyConditions")
        mixed = [p for p in legacy if request.get(p) is not None]
        if mixed:
            raise ValidationException(
                "Can not use both expression and non-expression parameters in the same request: "
                f"Non-expression parameters: {{{', '.join(mixed)}}} "
                f"Expression parameters: {{{', '.join(used)}}}")
    if request.get("ExpressionAttributeNames") is not None and not used:
        raise ValidationException("ExpressionAttributeNames can only be specified when using expressions")
    valued = [p for p in expressions if p != "ProjectionExpression"]
    if request.get("ExpressionAttributeValues") is not None and valued and \
            not any(request.get(p) is not None for p in valued):
        raise ValidationException("ExpressionAttributeValues can only be specified when using "
                                  f"expressions: {' and '.join(valued)} "
                                  f"{'are' if len(valued) > 1 else 'is'} null")
