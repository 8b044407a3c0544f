"""One request's ExpressionAttributeNames and ExpressionAttributeValues.

Every expression of a request is compiled against the same context; each placeholder an
expression uses is marked used, and once all of them are compiled ``check_unused`` raises
DynamoDB's error for any placeholder that none of them used.
"""
from __future__ import annotations

import re

from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.expressions.lexer import invalid

_NAME_KEY = re.compile(r"#[0-9A-Za-z_]+")
_VALUE_KEY = re.compile(r":[0-9A-Za-z_]+")


class ExpressionContext:
    __slots__ = ("names", "values", "_unused_names", "_unused_values")

    def __init__(self, names: dict | None = None, values: dict | None = None):
        _check_keys("ExpressionAttributeNames", names, _NAME_KEY)
        _check_keys("ExpressionAttributeValues", values, _VALUE_KEY)
        self.names = names or {}
        self.values = values or {}
        # Dicts as ordered sets, so that errors list keys in request order.
        self._unused_names = dict.fromkeys(self.names)
        self._unused_values = dict.fromkeys(self.values)

    def name(self, kind: str, placeholder: str) -> str:
        try:
            name = self.names[placeholder]
        except KeyError:
            raise invalid(kind, "An expression attribute name used in the document path is not "
                                f"defined; attribute name: {placeholder}") from None
        self._unused_names.pop(placeholder, None)
        return name

    def value(self, kind: str, placeholder: str) -> dict:
        try:
            value = self.values[placeholder]
        except KeyError:
            raise invalid(kind, "An expression attribute value used in expression is not "
                                f"defined; attribute value: {placeholder}") from None
        self._unused_values.pop(placeholder, None)
        return value

    def resolve(self, kind: str, refs: tuple) -> tuple[dict, dict]:
        """Placeholder -> name and placeholder -> value for ``refs`` (from ast.Parsed),
        failing on the first undefined one in the order the expression uses them."""
        names, values = {}, {}
        for ref in refs:
            if ref[0] == "#":
                names[ref] = self.name(kind, ref)
            else:
                values[ref] = self.value(kind, ref)
        return names, values

    def check_unused(self) -> None:
        if self._unused_names:
            raise ValidationException("Value provided in ExpressionAttributeNames unused in "
                                      f"expressions: keys: {{{', '.join(self._unused_names)}}}")
        if self._unused_values:
            raise ValidationException("Value provided in ExpressionAttributeValues unused in "
                                      f"expressions: keys: {{{', '.join(self._unused_values)}}}")


def _check_keys(parameter: str, mapping: dict | None, pattern: re.Pattern) -> None:
    if mapping is None:
        return
    if not mapping:
        raise ValidationException(f"{parameter} must not be empty")
    for key in mapping:
        if not pattern.fullmatch(key) or len(key.encode()) > limits.EXPRESSION_PLACEHOLDER_BYTES_MAX:
            raise ValidationException(f'{parameter} contains invalid key: Syntax error; key: "{key}"')

