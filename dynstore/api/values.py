"""DynamoDB attribute values: validation, canonical form, and size.

Items and values are DynamoDB JSON everywhere inside the server::

    {"id": {"S": "x"}, "n": {"N": "1.50"}, "b": {"B": "AAE="}, "m": {"M": {...}}}

``validate_item`` and ``validate_value`` check a value exactly as DynamoDB does
and return its *canonical form*, which is what is stored and returned:

* N is a decimal string in plain notation with no exponent, no leading or
  trailing zeros and no ``+``: ``"01.50"`` -> ``"1.5"``, ``"1e2"`` -> ``"100"``,
  ``"-0"`` -> ``"0"``, ``"1E-130"`` -> ``"0.000...01"``. DynamoDB returns numbers
  in exactly this form. Number sets hold canonical members, in the order sent.
* B stays a base64 string (the wire form), checked to decode and to be in the
  canonical encoding, so equal bytes are always equal strings. Keys decode it
  (``keys.py``); sizes are computed from its length without decoding.
* S, BOOL, NULL, M, L, SS, BS are kept as sent (maps and lists rebuilt with
  canonical members). Set order is not significant and is not changed.
* Duplicate set members are an error, never silently merged.

Canonical values share unchanged members with the input (values are never
mutated in place anywhere in the server).

Bad input raises ``ValidationException`` (or ``SerializationException`` where
DynamoDB's JSON layer would refuse the shape) with DynamoDB's message. The
``"1 validation error detected: "`` envelope that PutItem, UpdateItem and
DeleteItem put around these messages is added by the operation, not here.

DynamoDB words a few messages in two ways depending on the operation (captured
against real DynamoDB, see tests/test_values.py): PutItem, UpdateItem,
DeleteItem, GetItem, BatchGetItem and Query use the *current* wording;
BatchWriteItem, TransactWriteItems, TransactGetItems and Scan the *older* one
(``older=True``), which differs for an empty number, exponents past a 32-bit
integer and duplicate set members.

Item size follows DynamoDB's rules ("Item sizes and formats",
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html):
attribute name UTF-8 bytes + value; S UTF-8 bytes; B raw bytes; BOOL and NULL 1;
M and L 3 bytes plus 1 per element plus the elements (map keys count their
UTF-8 length); sets the sum of their members. The documented number size ("1
byte per two significant digits plus 1") is approximate; the exact size is the
length of DynamoDB's base-100 number encoding: one exponent byte, one byte per
pair of digits aligned on the decimal point, and one terminator byte for a
negative number of fewer than 20 pairs (zero is 1 byte). This matches every
number size measured against real DynamoDB ("1" 2, "1.5" 3, "3.14159" 5,
"123456" 4, "-42" 3, "1E125" 2, 38 digits 20).
"""
from __future__ import annotations

import binascii
import re
from decimal import Decimal

from dynstore import limits
from dynstore.api.errors import SerializationException, ValidationException

_INVALID = "One or more parameter values were invalid: "
_NOT_NUMERIC = "The parameter cannot be converted to a numeric value"
_OVERFLOW = "Number overflow. Attempting to store a number with magnitude larger than supported range"
_UNDERFLOW = "Number underflow. Attempting to store a number with magnitude smaller than supported range"
_TOO_PRECISE = "Attempting to store more than 38 significant digits in a Number"
ITEM_NESTING_MESSAGE = (
    "Nesting Levels have exceeded supported limits: "
    "Attributes in the item have nested levels beyond supported limit"
)
_ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"
_EMPTY_VALUE = "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
_MULTI_VALUE = (
    "Supplied AttributeValue has more than one datatypes set, "
    "must contain exactly one of the supported datatypes"
)
_EMPTY_NAME = "Empty attribute name"
_NAME_TOO_LARGE = "Attribute name is too large, must be less than 65536 bytes"

# What Java's BigDecimal accepts (ASCII digits only), which is what DynamoDB parses
# numbers with. Python's Decimal would also take "NaN", "Infinity", " 1", "1_0".
_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# The order DynamoDB examines the members of an AttributeValue: the first bad
# member found is the one reported, and "more than one datatype" comes last.
_TYPE_ORDER = ("S", "SS", "N", "NS", "B", "BS", "M", "L", "BOOL", "NULL")


# --- numbers --------------------------------------------------------------------------


def _not_numeric(text: str, older: bool) -> ValidationException:
    # The current wording always echoes the value after ": ", even when it is empty.
    if older and text == "":
        return ValidationException(_NOT_NUMERIC)
    return ValidationException(f"{_NOT_NUMERIC}: {text}")


def _to_int32(value: int) -> int:
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _check_range(significant: str, adjusted: int, older: bool) -> None:
    """Precision first, then magnitude; ``adjusted`` is the power of ten of the leading digit."""
    if len(significant) > limits.NUMBER_DIGITS_MAX:
        raise ValidationException(_TOO_PRECISE)
    if older:
        # The older layer computes the exponent in 32-bit arithmetic, so a huge
        # exponent wraps: 1e2147483647 is reported as an underflow there.
        adjusted = _to_int32(adjusted + 1) - 1
    if adjusted > limits.NUMBER_EXPONENT_MAX:
        raise ValidationException(_OVERFLOW)
    if adjusted < limits.NUMBER_EXPONENT_MIN:
        raise ValidationException(_UNDERFLOW)


def plain_number(negative: bool, significant: str, adjusted: int) -> str:
    """Canonical text of 0.<significant> x 10^(adjusted+1): plain notation, no exponent."""
    if not significant:
        return "0"
    whole = adjusted + 1  # digits before the decimal point
    count = len(significant)
    if whole >= count:
        text = significant + "0" * (whole - count)
    elif whole > 0:
        text = significant[:whole] + "." + significant[whole:]
    else:
        text = "0." + "0" * -whole + significant
    return "-" + text if negative else text


def _canonical(text, older: bool = False) -> str:
    if type(text) is not str:
        raise _serialization(text, "String")
    # Fast path: plain non-negative integers, by far the most common numbers.
    if text.isdigit() and text.isascii():
        stripped = text.lstrip("0")
        if not stripped:
            return "0"
        _check_range(stripped.rstrip("0"), len(stripped) - 1, older)
        return stripped
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise _not_numeric(text, older)
    sign, whole, fraction, exponent_text = match.groups()
    fraction = fraction or ""
    if not whole and not fraction:
        raise _not_numeric(text, older)
    exponent = int(exponent_text) if exponent_text else 0
    if not _INT64_MIN <= exponent <= _INT64_MAX:
        raise _not_numeric(text, older)
    digits = whole + fraction
    significant = digits.lstrip("0")
    if not significant:
        # Zero is in range whatever exponent it is written with (DynamoDB accepts 0e1000):
        # the range applies to the number, and zero has no magnitude to check.
        return "0"
    adjusted = len(whole) - 1 - (len(digits) - len(significant)) + exponent
    significant = significant.rstrip("0")
    _check_range(significant, adjusted, older)
    return plain_number(sign == "-", significant, adjusted)


def canonical_number(text: str) -> str:
    """The form DynamoDB stores and returns ``text`` in; raises ValidationException."""
    return _canonical(text)


def number(text: str) -> Decimal:
    """``text`` as an exact Decimal (at most 38 significant digits); raises ValidationException."""
    return Decimal(_canonical(text))


def decimal_text(value: Decimal) -> str:
    """The canonical text of a computed Decimal, with DynamoDB's range and precision checks."""
    if not value.is_finite():
        raise ValidationException(f"{_NOT_NUMERIC}: {value}")
    sign, digit_tuple, exponent = value.as_tuple()
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return "0"
    adjusted = len(digits) - 1 + exponent
    significant = digits.rstrip("0")
    if len(significant) > limits.NUMBER_DIGITS_MAX:
        # DynamoDB reports a sum or difference that needs more than 38 digits as an
        # overflow, even when its magnitude is in range (1e50 + 1); only a number sent
        # in a request gets the significant-digits message.
        raise ValidationException(_OVERFLOW)
    _check_range(significant, adjusted, False)
    return plain_number(bool(sign), significant, adjusted)


def number_size(text: str) -> int:
    """Bytes DynamoDB counts for a canonical number (see the module docstring)."""
    negative = text[0] == "-"
    if negative:
        text = text[1:]
    if text == "0":
        return 1
    point = text.find(".")
    if point < 0:
        significant = text.rstrip("0")
        high = len(text) - 1
    elif point == 1 and text[0] == "0":
        fraction = text[2:]
        significant = fraction.lstrip("0")
        high = len(significant) - len(fraction) - 1
    else:
        significant = text[:point] + text[point + 1 :]
        high = point - 1
    low = high - len(significant) + 1
    # Digits are grouped in pairs aligned on the decimal point: 10^(2k+1) and 10^2k.
    pairs = (high >> 1) - (low >> 1) + 1
    return 1 + pairs + (1 if negative and pairs < 20 else 0)


# --- binary ---------------------------------------------------------------------------


def _canonical_binary(text) -> str:
    """Check a base64 string the way DynamoDB's JSON layer does; return it unchanged."""
    if type(text) is not str:
        raise _serialization(text, "Blob")
    if len(text) % 4:
        raise SerializationException(
            f"'{text}' can not be converted to a Blob: "
            f"Base64 encoded length is expected a multiple of 4 bytes but found: {len(text)}"
        )
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        bad = next((c for c in text if not (c.isascii() and (c.isalnum() or c in "+/="))), None)
        if bad is not None:
            raise SerializationException(
                f"'{text}' can not be converted to a Blob: Invalid Base64 character: '{bad}'"
            ) from None
        raise SerializationException(
            f"'{text}' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"
        ) from None
    if binary_text(raw) != text:
        raise SerializationException(
            f"'{text}' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"
        )
    return text


def binary_size(text: str) -> int:
    """Raw byte length of a canonical base64 string, without decoding it."""
    return len(text) // 4 * 3 - (text[-2:].count("=") if text else 0)


def binary_bytes(text: str) -> bytes:
    """The raw bytes of a canonical base64 string."""
    return binascii.a2b_base64(text)


def binary_text(raw: bytes) -> str:
    """The canonical base64 string of raw bytes."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


# --- shapes the JSON layer refuses -----------------------------------------------------


def _serialization(value, expected: str) -> SerializationException:
    if isinstance(value, dict):
        return SerializationException("Start of structure or map found where not expected")
    if isinstance(value, list):
        return SerializationException("Start of list found where not expected")
    if isinstance(value, bool):
        kind = "TRUE_VALUE" if value else "FALSE_VALUE"
    elif isinstance(value, (int, float)):
        kind = "NUMBER_VALUE"
    else:
        kind = "STRING_VALUE"
    return SerializationException(f"{kind} cannot be converted to {expected}")


def _members(value, expected: str) -> list:
    if type(value) is not list:
        raise _serialization(value, "List")
    for member in value:
        if type(member) is not str:
            raise _serialization(member, expected)
    return value


# --- sets -----------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def string_size(text: str) -> int:
    """UTF-8 bytes of a string, what DynamoDB counts for names, strings and string keys."""
    return len(text) if text.isascii() else len(_utf8(text))


def _duplicates(sent: list, index: int, order, quote: str, separator: str, older: bool) -> str:
    """Render a collection with a repeat at ``index`` the way DynamoDB's message does."""
    if older:
        return "[" + ", ".join(sent) + "]"
    # The current wording lists the members in byte order up to the first repeat,
    # then the repeat, then the rest as sent.
    shown = sorted(sent[:index], key=order) + sent[index:]
    return "[" + separator.join(f"{quote}{m}{quote}" for m in shown) + "]"


def _string_set(value, older: bool) -> tuple[list, int]:
    members = _members(value, "String")
    if not members:
        raise ValidationException(_INVALID + "An string set  may not be empty")
    seen = set()
    size = 0
    for index, member in enumerate(members):
        if member in seen:
            shown = _duplicates(members, index, _utf8, '"', ", ", older)
            raise ValidationException(f"{_INVALID}Input collection {shown} contains duplicates.")
        seen.add(member)
        size += string_size(member)
    return members, size


def _number_set(value, older: bool) -> tuple[list, int]:
    members = _members(value, "String")
    if not members:
        raise ValidationException(_INVALID + "An number set  may not be empty")
    canonical = []
    seen = set()
    size = 0
    for member in members:
        text = _canonical(member, older)
        if text in seen:
            if older:
                raise ValidationException("Input collection contains duplicates")
            raise ValidationException(_INVALID + "Input collection contains duplicates.")
        seen.add(text)
        canonical.append(text)
        size += number_size(text)
    return canonical, size


def _binary_set(value, older: bool) -> tuple[list, int]:
    members = _members(value, "Blob")
    if not members:
        raise ValidationException(_INVALID + "Binary sets should not be empty")
    seen = set()
    size = 0
    for index, member in enumerate(members):
        _canonical_binary(member)
        if member in seen:
            shown = _duplicates(members, index, binary_bytes, '"', ",", older)
            raise ValidationException(f"{_INVALID}Input collection {shown}of type BS contains duplicates.")
        seen.add(member)
        size += binary_size(member)
    return members, size


# --- values and items -------------------------------------------------------------------


def _name_size(name) -> int:
    if type(name) is not str:
        raise _serialization(name, "String")
    if not name:
        raise ValidationException(_EMPTY_NAME)
    size = string_size(name)
    if size > limits.ATTRIBUTE_NAME_BYTES_MAX:
        raise ValidationException(_NAME_TOO_LARGE)
    return size


def _check(av, level: int, older: bool) -> tuple[dict, int]:
    """Validate one AttributeValue at nesting ``level``; return (canonical, size)."""
    if type(av) is not dict:
        raise _serialization(av, "AttributeValue")
    if len(av) == 1:
        # One member, the usual case: dispatch on it directly.
        (kind, value), = av.items()
        if kind == "S" and type(value) is str:
            return av, string_size(value)
        if value is not None and kind in _CHECKERS:
            canonical, size = _CHECKERS[kind](value, level, older)
            return ({kind: canonical} if canonical is not value else av), size
    found = None
    for kind in _TYPE_ORDER:
        value = av.get(kind)
        if value is None:
            continue
        canonical, size = _CHECKERS[kind](value, level, older)
        if found is not None:
            raise ValidationException(_MULTI_VALUE)
        found = ({kind: canonical}, size)
    if found is None:
        raise ValidationException(_EMPTY_VALUE)
    return found


def _string(value, level, older):
    if type(value) is not str:
        raise _serialization(value, "String")
    return value, string_size(value)


def _number(value, level, older):
    text = _canonical(value, older)
    return text, number_size(text)


def _binary(value, level, older):
    text = _canonical_binary(value)
    return text, binary_size(text)


def _boolean(value, level, older):
    if type(value) is not bool:
        raise _serialization(value, "Boolean")
    return value, 1


def _null(value, level, older):
    if type(value) is not bool:
        raise _serialization(value, "Boolean")
    if not value:
        raise ValidationException(_INVALID + "Null attribute value types must have the value of true")
    return True, 1


def _map(value, level, older):
    if type(value) is not dict:
        raise _serialization(value, "Map")
    if level >= limits.NESTING_LEVELS_MAX:
        raise ValidationException(ITEM_NESTING_MESSAGE)
    canonical = {}
    size = 3 + len(value)  # document overhead, plus one byte per element
    for name, member in value.items():
        size += _name_size(name)
        canonical[name], member_size = _check(member, level + 1, older)
        size += member_size
    return canonical, size


def _list(value, level, older):
    if type(value) is not list:
        raise _serialization(value, "List")
    if level >= limits.NESTING_LEVELS_MAX:
        raise ValidationException(ITEM_NESTING_MESSAGE)
    canonical = []
    size = 3 + len(value)  # document overhead, plus one byte per element
    for member in value:
        member, member_size = _check(member, level + 1, older)
        canonical.append(member)
        size += member_size
    return canonical, size


_CHECKERS = {
    "S": _string,
    "N": _number,
    "B": _binary,
    "BOOL": _boolean,
    "NULL": _null,
    "M": _map,
    "L": _list,
    "SS": lambda value, level, older: _string_set(value, older),
    "NS": lambda value, level, older: _number_set(value, older),
    "BS": lambda value, level, older: _binary_set(value, older),
}


def validate_value(av: dict, *, older: bool = False) -> dict:
    """Validate an AttributeValue (an expression value, a key member, ...); return it canonical.

    It is checked as a top-level attribute would be: nesting counts it as level 1.
    """
    return _check(av, 1, older)[0]


def validate_item(item: dict, *, older: bool = False) -> dict:
    """Validate an item for storage; return its canonical form (see the module docstring).

    Attributes are checked in the order sent and the size is added up as they are,
    so an item that is already too large is refused before later attributes are read.
    """
    if type(item) is not dict:
        raise _serialization(item, "Map")
    canonical = {}
    size = 0
    for name, av in item.items():
        size += _name_size(name)
        canonical[name], value_size = _check(av, 1, older)
        size += value_size
        if size > limits.ITEM_BYTES_MAX:
            raise ValidationException(_ITEM_TOO_LARGE)
    return canonical


def value_size(av: dict) -> int:
    """Bytes DynamoDB counts for a canonical AttributeValue."""
    for kind, value in av.items():
        return _SIZES[kind](value)


def _map_size(value: dict) -> int:
    size = 3 + len(value)  # document overhead, plus one byte per element
    for name, member in value.items():
        size += string_size(name) + value_size(member)
    return size


def _list_size(value: list) -> int:
    size = 3 + len(value)
    for member in value:
        size += value_size(member)
    return size


_SIZES = {
    "S": string_size,
    "N": number_size,
    "B": binary_size,
    "BOOL": lambda value: 1,
    "NULL": lambda value: 1,
    "M": _map_size,
    "L": _list_size,
    "SS": lambda value: sum(map(string_size, value)),
    "NS": lambda value: sum(map(number_size, value)),
    "BS": lambda value: sum(map(binary_size, value)),
}


def attribute_value_size(name: str, av: dict) -> int:
    """Bytes one attribute of a canonical item counts for: its name plus its value."""
    return string_size(name) + value_size(av)


def item_size(item: dict) -> int:
    """Bytes DynamoDB counts for a canonical item (capacity units, the 400 KB limit)."""
    size = 0
    for name, av in item.items():
        size += string_size(name) + value_size(av)
    return size

