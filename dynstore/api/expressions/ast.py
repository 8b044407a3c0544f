"""The syntax trees the parser builds and the legacy converters build directly.

A tree holds placeholders unresolved (``NameRef("#n")`` inside paths, ``ValueRef(":v")``)
so that one tree, cached by expression text, serves every request; binding it to a
request's ExpressionAttributeNames/Values turns it into closures (see condition.py,
update.py, projection.py). Legacy parameters carry no placeholders: their trees hold
plain attribute names and ``Literal`` values.
"""
from __future__ import annotations

from dataclasses import dataclass


class NameRef(str):
    """A ``#name`` placeholder inside a document path."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Path:
    elements: tuple  # str (attribute or map key), int (list index) or NameRef


@dataclass(frozen=True, slots=True)
class ValueRef:
    name: str  # ":value"


@dataclass(frozen=True, slots=True)
class Literal:
    value: dict  # an attribute value given directly (legacy parameters)


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # as written: function names are case-sensitive
    args: tuple


@dataclass(frozen=True, slots=True)
class Group:
    inner: object  # a parenthesised condition or operand; kept to detect redundant parentheses


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # = <> < <= > >=
    left: object
    right: object


@dataclass(frozen=True, slots=True)
class Between:
    operand: object
    low: object
    high: object


@dataclass(frozen=True, slots=True)
class In:
    operand: object
    choices: tuple


@dataclass(frozen=True, slots=True)
class And:
    items: tuple


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple


@dataclass(frozen=True, slots=True)
class Not:
    item: object


@dataclass(frozen=True, slots=True)
class Arith:
    op: str  # + or -
    left: object
    right: object


@dataclass(frozen=True, slots=True)
class Action:
    clause: str  # SET, REMOVE, ADD or DELETE
    path: Path
    value: object  # SET: operand or Arith; ADD/DELETE: ValueRef or Literal; REMOVE: None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed expression: its tree and its placeholders in the order they appear."""

    tree: object  # condition node, tuple of Actions (update) or tuple of Paths (projection)
    refs: tuple  # NameRef and ":value" strings, first use first, each once


def unwrap(node):
    while type(node) is Group:
        node = node.inner
    return node
