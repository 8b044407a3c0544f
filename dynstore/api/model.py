"""Input validation driven by botocore's DynamoDB service model, compiled once at import.

The model (``botocore/data/dynamodb/2012-08-10/service-2.json.gz``) names every operation's
input shape; each shape is compiled here into one closure::

    check(value, path, errors, depth) -> value

which raises ``SerializationException`` at the first value of the wrong JSON type (DynamoDB
deserializes the whole request before it validates anything, so a type error wins over any
constraint), and appends DynamoDB's constraint messages to ``errors``::

    Value 'x' at 'tableName' failed to satisfy constraint: Member must have length greater than or equal to 3
    Value null at 'keySchema.1.member.attributeName' failed to satisfy constraint: Member must not be null

``path`` is built lazily as a chain of tuples and rendered only for a message: ``(parent, name)``
for a structure member, ``(parent, index)`` for a list element (``name.1.member``) and
``(parent, key, None)`` for a map value (``name.key.member``).

The checked request is normalized in place the way DynamoDB's deserializer leaves it:
members the model does not know and members sent as ``null`` are dropped, integers sent with
a fraction are truncated. Operations can therefore trust every member's type, enum (but
TableClass's, which DynamoDB checks with its own message), length and range, and never see
``None`` anywhere in the request.
"""
from __future__ import annotations

import binascii
import gzip
import json
import os
import re

import botocore

from dynstore import limits
from dynstore.api.errors import SerializationException, ValidationException
from dynstore.api.values import ITEM_NESTING_MESSAGE

MODEL_PATH = os.path.join(os.path.dirname(botocore.__file__), "data", "dynamodb", "2012-08-10", "service-2.json.gz")

NESTING_MESSAGE = "Nesting Levels have exceeded supported limits"

_JAVA_TYPE = {"string": "String", "integer": "Integer", "long": "Long", "double": "Double",
              "boolean": "Boolean", "blob": "Blob", "timestamp": "Date"}
_INT_BOUNDS = {"integer": (-(2 ** 31), 2 ** 31 - 1), "long": (-(2 ** 63), 2 ** 63 - 1)}

# Java regular expressions of the model that Python spells differently. A pattern not listed
# here is the same in both languages; every pattern is compiled at import, so a new model with
# a construct Python lacks fails loudly instead of validating wrongly.
_JAVA_REGEX = (
    ("\\p{Print}", "\\x20-\\x7e"),
    ("\\uD800\\uDC00-\\uDBFF\\uDFFF", "\\U00010000-\\U0010FFFF"),  # a surrogate pair range: astral planes
)


# Enums DynamoDB checks in the service, with a message of its own (operations/tables.py), rather
# than as a model constraint.
_SERVICE_CHECKED_ENUMS = frozenset({"TableClass"})

# Members that take a table's name or its ARN. A value that is not an ARN is held to the
# name's rules (pattern and 3..255 characters), as DynamoDB does.
_NAME_OR_ARN = {"TableArn": "TableName"}


def _python_regex(pattern: str) -> re.Pattern:
    text = pattern
    for java, python in _JAVA_REGEX:
        if java == "\\p{Print}" and java in text and f"[{java}" not in text:
            python = f"[{python}]"
        text = text.replace(java, python)
    return re.compile(text)


def _java_length(text: str) -> int:
    """String.length() as DynamoDB's Java validator counts it: UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def render_path(path) -> str:
    parts = []
    while path is not None:
        if len(path) == 3:
            parts.append(f"{path[1]}.member")
        elif type(path[1]) is int:
            parts.append(f"{path[1] + 1}.member")
        else:
            parts.append(path[1])
        path = path[0]
    return ".".join(reversed(parts))


def render_value(value) -> str:
    """A value as DynamoDB's Java validator prints it in a message."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is list:
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if type(value) is dict:
        return "{" + ", ".join(f"{k}={render_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _violation(errors: list, value, path, constraint: str) -> None:
    if len(errors) < limits.VALIDATION_ERRORS_MAX:
        shown = "null" if value is None else f"'{render_value(value)}'"
        errors.append(f"Value {shown} at '{render_path(path)}' failed to satisfy constraint: {constraint}")


def _mismatch(value, expected: str) -> SerializationException:
    """The deserializer's complaint about a value of the wrong JSON type."""
    if type(value) is dict:
        return SerializationException("Start of structure or map found where not expected")
    if type(value) is list:
        return SerializationException("Start of list found where not expected")
    if expected == "list":
        return SerializationException("Expected list or null")
    if expected == "map":
        return SerializationException("Expected map or null")
    if expected == "structure":
        return SerializationException("Expected null")
    token = ("TRUE_VALUE" if value else "FALSE_VALUE") if type(value) is bool else (
        "STRING_VALUE" if type(value) is str else "NUMBER_VALUE")
    return SerializationException(f"{token} cannot be converted to {_JAVA_TYPE[expected]}")


# Only documents (attribute values) can nest deep enough to reach the limit; there DynamoDB's
# message names the item, whichever member of the request holds the value.
_DOCUMENT_SHAPES = frozenset(("AttributeValue", "MapAttributeValue", "ListAttributeValue"))


def _nesting_error(shape_name: str) -> ValidationException:
    return ValidationException(ITEM_NESTING_MESSAGE if shape_name in _DOCUMENT_SHAPES else NESTING_MESSAGE)


def _bounds(shape: dict, what: str) -> list[tuple[str, int, str]]:
    """The shape's min and max as (operator, bound, message); ``what`` is "length" or "value"."""
    out = []
    if "min" in shape:
        out.append((">=", shape["min"], f"Member must have {what} greater than or equal to {shape['min']}"))
    if "max" in shape:
        out.append(("<=", shape["max"], f"Member must have {what} less than or equal to {shape['max']}"))
    return out


def _check_bounds(n, bounds, errors: list, value, path) -> None:
    for op, bound, message in bounds:
        if (n < bound) if op == ">=" else (n > bound):
            _violation(errors, value, path, message)


class _Compiler:
    """Turns model shapes into checkers, once per shape; recursive shapes share one closure."""

    def __init__(self, shapes: dict):
        self.shapes = shapes
        self.done: dict[str, object] = {}
        # String shape -> its constraints as a map-key message lists them.
        self.key_constraints: dict[str, list[str]] = {}

    def checker(self, name: str):
        check = self.done.get(name)
        if check is None:
            shape = self.shapes[name]
            check = getattr(self, "_" + shape["type"])(name, shape)
            self.done[name] = check
        return check

    def _structure(self, name: str, shape: dict):
        # Registered before its members are compiled: AttributeValue contains itself.
        members: dict[str, tuple[str, object]] = {}
        order = list(shape["members"])
        required = tuple(shape.get("required", ()))

        def check_structure(value, path, errors, depth):
            if type(value) is not dict:
                raise _mismatch(value, "structure")
            if depth > limits.REQUEST_NESTING_MAX:
                raise _nesting_error(name)
            before = len(errors)
            dropped = None
            for key, v in value.items():
                member = members.get(key)
                if member is None or v is None:
                    dropped = [key] if dropped is None else dropped + [key]
                    continue
                checked = member[1](v, (path, member[0]), errors, depth + 1)
                if checked is not v:
                    value[key] = checked
            if dropped is not None:
                for key in dropped:
                    del value[key]
            for key in required:
                if key not in value:
                    _violation(errors, None, (path, members[key][0]), "Member must not be null")
            if len(errors) != before:
                # Rare: report this structure's violations in the model's member order.
                del errors[before:]
                for key in order:
                    if key in value:
                        members[key][1](value[key], (path, members[key][0]), errors, depth + 1)
                    elif key in required:
                        _violation(errors, None, (path, members[key][0]), "Member must not be null")
            return value

        self.done[name] = check_structure
        for member_name, member in shape["members"].items():
            members[member_name] = (_lower_first(member_name), self.checker(member["shape"]))
        return check_structure

    def _list(self, name: str, shape: dict):
        item = self.checker(shape["member"]["shape"])
        bounds = _bounds(shape, "length")

        def check_list(value, path, errors, depth):
            if type(value) is not list:
                raise _mismatch(value, "list")
            if depth > limits.REQUEST_NESTING_MAX:
                raise _nesting_error(name)
            _check_bounds(len(value), bounds, errors, value, path)
            for i, v in enumerate(value):
                if v is None:
                    _violation(errors, None, (path, i), "Member must not be null")
                    continue
                checked = item(v, (path, i), errors, depth + 1)
                if checked is not v:
                    value[i] = checked
            return value

        return check_list

    def _map(self, name: str, shape: dict):
        key_name = shape["key"]["shape"]
        key_check = self.checker(key_name)
        key_message = f"Map keys must satisfy constraint: [{', '.join(self.key_constraints.get(key_name, ()))}]"
        value_check = self.checker(shape["value"]["shape"])
        bounds = _bounds(shape, "length")

        def check_map(value, path, errors, depth):
            if type(value) is not dict:
                raise _mismatch(value, "map")
            if depth > limits.REQUEST_NESTING_MAX:
                raise _nesting_error(name)
            _check_bounds(len(value), bounds, errors, value, path)
            scratch = []
            for key in value:
                key_check(key, None, scratch, depth)
                if scratch:
                    _violation(errors, value, path, key_message)
                    break
            for key, v in value.items():
                if v is None:
                    _violation(errors, None, (path, key, None), "Member must not be null")
                    continue
                checked = value_check(v, (path, key, None), errors, depth + 1)
                if checked is not v:
                    value[key] = checked
            return value

        return check_map

    def _string(self, name: str, shape: dict):
        if name in _NAME_OR_ARN:
            return self._name_or_arn(name, shape)
        enum = shape.get("enum") if name not in _SERVICE_CHECKED_ENUMS else None
        enum_set = frozenset(enum) if enum else None
        enum_message = f"Member must satisfy enum value set: [{', '.join(enum)}]" if enum else ""
        pattern = _python_regex(shape["pattern"]) if "pattern" in shape else None
        pattern_message = f"Member must satisfy regular expression pattern: {shape.get('pattern')}"
        bounds = _bounds(shape, "length")
        # As a map key, DynamoDB lists the constraints longest-first, then the pattern.
        self.key_constraints[name] = [b[2] for b in reversed(bounds)] + ([pattern_message] if pattern else [])

        def check_string(value, path, errors, depth):
            if type(value) is not str:
                raise _mismatch(value, "string")
            if enum_set is not None and value not in enum_set:
                _violation(errors, value, path, enum_message)
            if pattern is not None and pattern.fullmatch(value) is None:
                _violation(errors, value, path, pattern_message)
            if bounds:
                _check_bounds(_java_length(value), bounds, errors, value, path)
            return value

        return check_string

    def _name_or_arn(self, name: str, shape: dict):
        arn_check = self._string(name + "#arn", shape)
        name_shape = _NAME_OR_ARN[name]
        name_check = self.checker(name_shape)
        self.key_constraints[name] = self.key_constraints[name_shape]

        def check_name_or_arn(value, path, errors, depth):
            if type(value) is str and value.startswith("arn:"):
                return arn_check(value, path, errors, depth)
            return name_check(value, path, errors, depth)

        return check_name_or_arn

    def _number(self, kind: str, shape: dict):
        low, high = _INT_BOUNDS.get(kind, (None, None))
        bounds = _bounds(shape, "value")

        def check_number(value, path, errors, depth):
            t = type(value)
            if t is float and low is not None:
                # The deserializer truncates a fraction sent for an integer member.
                value = int(value)
            elif t is not int and t is not float:
                raise _mismatch(value, kind)
            if low is not None and not low <= value <= high:
                raise _mismatch(value, kind)
            _check_bounds(value, bounds, errors, value, path)
            return value

        return check_number

    def _integer(self, name, shape):
        return self._number("integer", shape)

    def _long(self, name, shape):
        return self._number("long", shape)

    def _double(self, name, shape):
        return self._number("double", shape)

    def _boolean(self, name: str, shape: dict):
        def check_boolean(value, path, errors, depth):
            if type(value) is not bool:
                raise _mismatch(value, "boolean")
            return value

        return check_boolean

    def _blob(self, name: str, shape: dict):
        def check_blob(value, path, errors, depth):
            if type(value) is not str:
                raise _mismatch(value, "blob")
            _check_base64(value)
            return value

        return check_blob

    def _timestamp(self, name: str, shape: dict):
        # Epoch seconds as the JSON protocol sends them; ISO-8601 text is left to the operation.
        def check_timestamp(value, path, errors, depth):
            if type(value) not in (int, float, str):
                raise _mismatch(value, "timestamp")
            return value

        return check_timestamp


_BASE64_ALPHABET = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _check_base64(text: str) -> None:
    if len(text) % 4:
        raise SerializationException(
            f"'{text[:64]}' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 "
            f"bytes but found: {len(text)}")
    if _BASE64_ALPHABET.fullmatch(text) is None:
        bad = next((c for c in text.rstrip("=") if not (c.isascii() and (c.isalnum() or c in "+/"))), "=")
        raise SerializationException(
            f"'{text[:64]}' can not be converted to a Blob: Invalid Base64 character: '{bad}'")
    try:
        binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise SerializationException(
            f"'{text[:64]}' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"
        ) from None


def _load_model() -> tuple[dict[str, object], frozenset[str]]:
    """Each operation's input checker, and the operations whose success DynamoDB answers with an empty body."""
    with gzip.open(MODEL_PATH, "rt", encoding="utf-8") as f:
        model = json.load(f)
    compiler = _Compiler(model["shapes"])
    validators = {name: compiler.checker(op["input"]["shape"]) for name, op in model["operations"].items()}
    return validators, frozenset(name for name, op in model["operations"].items() if "output" not in op)


VALIDATORS, EMPTY_REPLY_OPERATIONS = _load_model()
OPERATION_NAMES = frozenset(VALIDATORS)


def validate(operation: str, request) -> dict:
    """The request of ``operation`` checked and normalized, or DynamoDB's error.

    ``request`` is the parsed JSON body; ``None`` (a body of ``null``) counts as ``{}``.
    """
    if request is None:
        request = {}
    errors: list[str] = []
    request = VALIDATORS[operation](request, None, errors, 0)
    _raise_errors(errors)
    return request


def require(request: dict, members: tuple[str, ...]) -> None:
    """DynamoDB's null-member error for top-level ``members`` the service model leaves optional
    but an operation still needs (CreateTable's KeySchema and AttributeDefinitions)."""
    errors: list[str] = []
    for member in members:
        if member not in request:
            _violation(errors, None, (None, _lower_first(member)), "Member must not be null")
    _raise_errors(errors)


def _raise_errors(errors: list[str]) -> None:
    if errors:
        noun = "error" if len(errors) == 1 else "errors"
        raise ValidationException(f"{len(errors)} validation {noun} detected: {'; '.join(errors)}")
