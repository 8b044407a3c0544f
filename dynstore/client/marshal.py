"""Plain Python values to DynamoDB JSON attribute values and back.

The mapping, to the wire and back::

    str                         -> {"S": s}            -> str
    bool                        -> {"BOOL": b}         -> bool
    None                        -> {"NULL": true}      -> None
    bytes, bytearray, memoryview-> {"B": base64}       -> bytes
    int, decimal.Decimal, float -> {"N": text}         -> int when the value is integral, else Decimal
    list, tuple                 -> {"L": [...]}        -> list
    dict (str keys)             -> {"M": {...}}        -> dict
    set, frozenset of str       -> {"SS": [...]}       -> set[str]
                   of numbers   -> {"NS": [...]}       -> set[int | Decimal]
                   of bytes     -> {"BS": [...]}       -> set[bytes]

Numbers. DynamoDB keeps 38 significant decimal digits, which a float cannot carry, so every
number comes back exact: as ``int`` when its value is integral (``"7"``, ``"7.0"`` and
``"7E+0"`` all read as ``7``), else as ``Decimal``. boto3's deserializer returns ``Decimal``
for every number; an ``int`` is what a Python program means by a count or a timestamp, and it
compares and hashes equal to the ``Decimal`` of the same value. A float is accepted on the way
in and written as the shortest decimal that reads back as the same float (``0.1`` is written
``0.1``, not ``0.1000000000000000055511151231257827``), so it returns as ``Decimal("0.1")``;
boto3 refuses floats outright, which mostly teaches people to write ``Decimal(str(x))``, the
same conversion. NaN and infinities have no DynamoDB form and raise ``TypeError``.

Range and digit limits of numbers, item sizes and nesting are the server's to enforce (it
answers with DynamoDB's ValidationException); this module only refuses what has no wire form
at all: unknown types, non-str map keys, NaN, infinities, and empty or mixed sets.
"""
from __future__ import annotations

import base64
import math
from decimal import Decimal

_b64encode = base64.b64encode
_b64decode = base64.b64decode


def _number_text(value) -> str:
    if type(value) is int:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value!r} has no DynamoDB number form")
        # repr is the shortest text that reads back as the same float; Decimal drops the
        # float's binary tail and str() writes it in DynamoDB's plain notation.
        return str(Decimal(repr(value)))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value!r} has no DynamoDB number form")
        return str(value)
    return str(int(value))  # an int subclass other than bool (IntEnum, ...)


def _binary(value) -> str:
    return _b64encode(value).decode("ascii")


def _set(values) -> dict:
    if not values:
        raise TypeError("an empty set has no DynamoDB form (DynamoDB sets hold at least one element)")
    kinds = {_set_kind(v) for v in values}
    if len(kinds) != 1:
        raise TypeError(f"a DynamoDB set holds one kind of element (str, number or bytes), not {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "SS":
        return {"SS": list(values)}
    if kind == "NS":
        return {"NS": [_number_text(v) for v in values]}
    return {"BS": [_binary(v) for v in values]}


def _set_kind(value) -> str:
    if isinstance(value, str):
        return "SS"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "BS"
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return "NS"
    raise TypeError(f"a DynamoDB set cannot hold {type(value).__name__} values")


def _map(value: dict) -> dict:
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"map keys must be str, not {type(name).__name__} ({name!r})")
    return {"M": {name: to_attribute(v) for name, v in value.items()}}


# Exact types first: one dict lookup decides the common case without isinstance chains.
_ENCODERS = {
    str: lambda v: {"S": v},
    bool: lambda v: {"BOOL": v},
    type(None): lambda v: {"NULL": True},
    int: lambda v: {"N": str(v)},
    Decimal: lambda v: {"N": _number_text(v)},
    float: lambda v: {"N": _number_text(v)},
    bytes: lambda v: {"B": _binary(v)},
    bytearray: lambda v: {"B": _binary(v)},
    memoryview: lambda v: {"B": _binary(v)},
    list: lambda v: {"L": [to_attribute(x) for x in v]},
    tuple: lambda v: {"L": [to_attribute(x) for x in v]},
    dict: _map,
    set: _set,
    frozenset: _set,
}

# Subclasses (IntEnum, OrderedDict, a str subclass, ...) by their first matching base, in an
# order where bool is tried before int.
_BASES = (str, bool, int, float, Decimal, bytes, bytearray, memoryview, dict, list, tuple, set, frozenset)


def to_attribute(value) -> dict:
    """One Python value as a DynamoDB attribute value."""
    encode = _ENCODERS.get(type(value))
    if encode is None:
        for base in _BASES:
            if isinstance(value, base):
                encode = _ENCODERS[base]
                break
        else:
            raise TypeError(f"{type(value).__name__} values have no DynamoDB form ({value!r})")
    return encode(value)


def to_item(values: dict) -> dict:
    """A dict of Python values as a DynamoDB item (or key, or ExpressionAttributeValues)."""
    return {name: to_attribute(value) for name, value in values.items()}


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        value = Decimal(text)
        return int(value) if value == value.to_integral_value() else value


_DECODERS = {
    "S": lambda v: v,
    "N": _number,
    "BOOL": lambda v: v,
    "NULL": lambda v: None,
    "B": _b64decode,
    "M": lambda v: {name: from_attribute(av) for name, av in v.items()},
    "L": lambda v: [from_attribute(av) for av in v],
    "SS": set,
    "NS": lambda v: {_number(x) for x in v},
    "BS": lambda v: {_b64decode(x) for x in v},
}


def from_attribute(av: dict):
    """One DynamoDB attribute value as a Python value."""
    for tag, value in av.items():
        return _DECODERS[tag](value)
    raise ValueError("an attribute value names no type: {}")


def from_item(item: dict) -> dict:
    """A DynamoDB item as a dict of Python values."""
    return {name: from_attribute(av) for name, av in item.items()}
