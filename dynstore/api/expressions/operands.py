"""Operations on attribute values that expressions need: reading a document path,
equality, ordering, size, and number arithmetic within DynamoDB's range.

Values are DynamoDB JSON (``{"N": "1.5"}``, ``{"M": {...}}``); numbers are compared and
computed as Decimal with 38 significant digits, binaries (base64 text on the wire, bytes
once decoded) by their bytes, strings by code point, which is the same order as their
UTF-8 bytes, as DynamoDB orders them.
"""
from __future__ import annotations

import decimal
from decimal import Decimal

from dynstore.api.values import binary_bytes, decimal_text

SCALAR_TYPES = frozenset({"S", "N", "B"})
SET_TYPES = frozenset({"SS", "NS", "BS"})


def type_of(av: dict) -> str:
    for key in av:
        return key
    raise AssertionError("an attribute value has exactly one type")


# Wide enough that a sum or difference of any two DynamoDB numbers (exponents -130 to 125,
# 38 digits each) is exact; values.decimal_text then refuses results beyond 38 digits.
_EXACT = decimal.Context(prec=400, traps=[decimal.InvalidOperation, decimal.Inexact])


def get_path(item: dict, path: tuple):
    """The value at ``path`` (names and list indexes) in ``item``, or None."""
    av = item.get(path[0])
    for element in path[1:]:
        if av is None:
            return None
        if element.__class__ is int:
            values = av.get("L")
            if values is None or element >= len(values):
                return None
            av = values[element]
        else:
            members = av.get("M")
            if members is None:
                return None
            av = members.get(element)
    return av


def to_bytes(data) -> bytes:
    return data if isinstance(data, (bytes, bytearray)) else binary_bytes(data)


def add_numbers(left: str, right: str, subtract: bool = False) -> str:
    """``left + right`` (or ``-``) exactly, in canonical text; DynamoDB's error when the
    result needs more than 38 digits or leaves the number range."""
    a, b = Decimal(left), Decimal(right)
    return decimal_text(_EXACT.subtract(a, b) if subtract else _EXACT.add(a, b))


def ordering_key(av: dict):
    """(type, comparable) for the scalar types that ``<`` and friends order, else None."""
    if "N" in av:
        return "N", Decimal(av["N"])
    if "S" in av:
        return "S", av["S"]
    if "B" in av:
        return "B", to_bytes(av["B"])
    return None


def equal(a: dict, b: dict) -> bool:
    kind = type_of(a)
    if kind not in b:
        return False
    x, y = a[kind], b[kind]
    if kind == "N":
        return Decimal(x) == Decimal(y)
    if kind == "B":
        return to_bytes(x) == to_bytes(y)
    if kind == "SS":
        return set(x) == set(y)
    if kind == "NS":
        return {Decimal(n) for n in x} == {Decimal(n) for n in y}
    if kind == "BS":
        return {to_bytes(v) for v in x} == {to_bytes(v) for v in y}
    if kind == "L":
        return len(x) == len(y) and all(equal(p, q) for p, q in zip(x, y))
    if kind == "M":
        return x.keys() == y.keys() and all(equal(v, y[k]) for k, v in x.items())
    return x == y


def size(av: dict) -> int | None:
    """DynamoDB's size(): string length in UTF-8 bytes, binary length, element count of a
    set, list or map; None for types that have no size (N, BOOL, NULL)."""
    kind = type_of(av)
    value = av[kind]
    if kind == "S":
        return len(value.encode("utf-8", "surrogatepass"))
    if kind == "B":
        return len(to_bytes(value))
    if kind in ("SS", "NS", "BS", "L", "M"):
        return len(value)
    return None


def set_members(av: dict) -> tuple:
    """The members of a set value in a form that compares by value (numbers numerically)."""
    kind = type_of(av)
    if kind == "NS":
        return tuple(Decimal(n) for n in av["NS"])
    if kind == "BS":
        return tuple(to_bytes(b) for b in av["BS"])
    return tuple(av[kind])


def contains(haystack: dict, needle: dict) -> bool:
    kind = type_of(haystack)
    if kind == "S":
        return "S" in needle and needle["S"] in haystack["S"]
    if kind == "B":
        return "B" in needle and to_bytes(needle["B"]) in to_bytes(haystack["B"])
    if kind in SET_TYPES:
        element = kind[0]
        if element not in needle:
            return False
        wanted = set_members({kind: [needle[element]]})[0]
        return wanted in set_members(haystack)
    if kind == "L":
        return any(equal(member, needle) for member in haystack["L"])
    return False


def begins_with(value: dict, prefix: dict) -> bool:
    if "S" in value and "S" in prefix:
        return value["S"].startswith(prefix["S"])
    if "B" in value and "B" in prefix:
        return to_bytes(value["B"]).startswith(to_bytes(prefix["B"]))
    return False
