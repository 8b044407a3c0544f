"""Primary keys: DynamoDB's key checks and the byte encoding of storage keys.

Storage key format (memcmp order is the order the storage layer keeps)::

    hash(8) ‖ component(partition key) ‖ component(sort key, if the table has one)

* ``hash`` is BLAKE2b with an 8-byte digest of the encoded partition key
  component. Partitions split on ranges of it, so items spread evenly whatever
  the keys look like, and all items of one partition key are contiguous.
* A component is order-preserving (memcmp order of components is DynamoDB's
  order of the values) and prefix-free (no component is a prefix of another of
  the same type), so components can be concatenated and decoded back:

  - S (UTF-8 bytes) and B (raw bytes) are cut into groups of 8 bytes; each
    group is followed by a marker byte, 0xFF if more groups follow, otherwise
    0xFF - (zero bytes padding this last group). There is always a last group
    with at least one byte of padding, so an empty value is 8 zeros and 0xF7.
    Growth is 9/8 plus at most 9 bytes, which keeps the largest key (2048-byte
    partition key, 1024-byte sort key) within the B-tree's 4096-byte keys;
    escaping 0x00 as two bytes could double a binary key and would not.
  - N: a sign byte (0x01 negative, 0x02 zero, 0x03 positive), then for non-zero
    numbers the exponent byte and the significant digits as ASCII, ending with
    0x00. For ``0.d1d2...dn x 10^E`` the exponent byte is E + 129 (E is within
    -129..126). Negative numbers store 255 - (E + 129), each digit d as
    ``'9' - d``, and end with 0xFF, so larger magnitudes sort first. At most
    2 + 38 + 1 bytes.

Keys travel in the canonical DynamoDB JSON of values.py (N canonical text, B
canonical base64) and ``decode`` returns exactly that form.

Faults: ``decode`` checks the hash against the partition key it decodes and
refuses a key whose components do not parse, so a corrupted or foreign key is
never turned into a wrong item key.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.values import (
    binary_bytes,
    binary_size,
    binary_text,
    plain_number,
    string_size,
    validate_value,
)

_SCHEMA_MISMATCH = "The provided key element does not match the schema"
_INVALID = "One or more parameter values were invalid: "
_HASH_TOO_LARGE = (
    _INVALID + f"Size of hashkey has exceeded the maximum size limit of{limits.PARTITION_KEY_BYTES_MAX} bytes"
)
_RANGE_TOO_LARGE = (
    _INVALID + f"Aggregated size of all range keys has exceeded the size limit of {limits.SORT_KEY_BYTES_MAX} bytes"
)
_CONDITION_TYPE = _INVALID + "Condition parameter type does not match schema type"

_GROUP = 8
_MORE = 0xFF  # marker of a full group that more groups follow
_NEGATIVE, _ZERO, _POSITIVE = 1, 2, 3
_EXPONENT_BIAS = 129  # E = adjusted exponent + 1 lies within -129..126
_INVERT_DIGITS = bytes.maketrans(b"0123456789", b"9876543210")
_HASH_BYTES = limits.STORAGE_KEY_HASH_BYTES


# The end of a component: ``pad`` zero bytes and the marker that says how many there are.
_TAILS = [bytes(pad) + bytes((_MORE - pad,)) for pad in range(_GROUP + 1)]


def _encode_bytes(data: bytes) -> bytes:
    size = len(data)
    full = size - size % _GROUP  # bytes in full groups; the last group always has padding
    tail = data[full:] + _TAILS[_GROUP - (size - full)]
    if not full:
        return tail
    return b"".join([data[i : i + _GROUP] + b"\xff" for i in range(0, full, _GROUP)]) + tail


def _decode_bytes(buf: bytes, at: int) -> tuple[bytes, int]:
    parts = []
    while True:
        marker_at = at + _GROUP
        if marker_at >= len(buf):
            raise ValueError("storage key: truncated string component")
        marker = buf[marker_at]
        if marker == _MORE:
            parts.append(buf[at:marker_at])
            at = marker_at + 1
            continue
        pad = _MORE - marker
        if not 1 <= pad <= _GROUP or any(buf[marker_at - pad : marker_at]):
            raise ValueError("storage key: bad group marker")
        parts.append(buf[at : marker_at - pad])
        return b"".join(parts), marker_at + 1


def _encode_number(text: str) -> bytes:
    """Encode a canonical number (values.canonical_number form)."""
    if text == "0":
        return b"\x02"
    negative = text[0] == "-"
    if negative:
        text = text[1:]
    point = text.find(".")
    if point < 0:
        digits = text.rstrip("0")
        exponent = len(text)
    elif text[0] == "0":  # 0.000ddd
        fraction = text[2:]
        digits = fraction.lstrip("0")
        exponent = len(digits) - len(fraction)
    else:
        digits = text[:point] + text[point + 1 :]
        exponent = point
    head = exponent + _EXPONENT_BIAS
    if negative:
        return bytes((_NEGATIVE, 255 - head)) + digits.encode().translate(_INVERT_DIGITS) + b"\xff"
    return bytes((_POSITIVE, head)) + digits.encode() + b"\x00"


def _decode_number(buf: bytes, at: int) -> tuple[str, int]:
    sign = buf[at]
    if sign == _ZERO:
        return "0", at + 1
    if sign == _POSITIVE:
        end = buf.index(b"\x00", at + 2)
        exponent = buf[at + 1] - _EXPONENT_BIAS
        digits = buf[at + 2 : end].decode("ascii")
    elif sign == _NEGATIVE:
        end = buf.index(b"\xff", at + 2)
        exponent = 255 - buf[at + 1] - _EXPONENT_BIAS
        digits = buf[at + 2 : end].translate(_INVERT_DIGITS).decode("ascii")
    else:
        raise ValueError("storage key: bad number sign byte")
    if not digits.isdigit() or digits[0] == "0" or digits[-1] == "0":
        raise ValueError("storage key: bad number digits")
    return plain_number(sign == _NEGATIVE, digits, exponent - 1), end + 1


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("no successor of an all-0xFF prefix")
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def _raw(kind: str, value) -> bytes:
    return value.encode("utf-8", "surrogatepass") if kind == "S" else binary_bytes(value)


def _component(kind: str, value) -> bytes:
    if kind == "N":
        return _encode_number(value)
    return _encode_bytes(_raw(kind, value))


def _decode_component(kind: str, buf: bytes, at: int) -> tuple[object, int]:
    if kind == "N":
        return _decode_number(buf, at)
    raw, at = _decode_bytes(buf, at)
    if kind == "S":
        return raw.decode("utf-8", "surrogatepass"), at
    return binary_text(raw), at


def _hash(component: bytes) -> bytes:
    return hashlib.blake2b(component, digest_size=_HASH_BYTES).digest()


def _key_size(kind: str, value) -> int:
    if kind == "S":
        return string_size(value)
    if kind == "B":
        return binary_size(value)
    return 0  # numbers are at most 21 bytes, always within both limits


def _empty_key(name: str, kind: str) -> ValidationException:
    what = "string" if kind == "S" else "binary"
    return ValidationException(
        "One or more parameter values are not valid. The AttributeValue for a key attribute "
        f"cannot contain an empty {what} value. Key: {name}"
    )


_SORT_OPERATORS = {
    "=": "EQ", "EQ": "EQ",
    "<": "LT", "LT": "LT",
    "<=": "LE", "LE": "LE",
    ">": "GT", "GT": "GT",
    ">=": "GE", "GE": "GE",
    "BETWEEN": "BETWEEN",
    "begins_with": "BEGINS_WITH", "BEGINS_WITH": "BEGINS_WITH",
}


@dataclass(frozen=True, slots=True)
class KeySchema:
    """A table's (or index's) primary key: partition key and optional sort key."""

    hash_name: str  # partition key attribute name
    hash_type: str  # "S", "N" or "B"
    range_name: str | None = None  # sort key attribute name, None for a partition-key-only table
    range_type: str | None = None
    # (name, type, size limit, message if over it) per key attribute, partition key first.
    _attributes: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        attributes = [(self.hash_name, self.hash_type, limits.PARTITION_KEY_BYTES_MAX, _HASH_TOO_LARGE)]
        if self.range_name is not None:
            attributes.append((self.range_name, self.range_type, limits.SORT_KEY_BYTES_MAX, _RANGE_TOO_LARGE))
        object.__setattr__(self, "_attributes", tuple(attributes))

    @classmethod
    def from_table(cls, key_schema: list, attribute_definitions: list) -> "KeySchema":
        """Build from CreateTable's KeySchema and AttributeDefinitions (already validated)."""
        types = {d["AttributeName"]: d["AttributeType"] for d in attribute_definitions}
        names = {k["KeyType"]: k["AttributeName"] for k in key_schema}
        hash_name = names["HASH"]
        range_name = names.get("RANGE")
        return cls(hash_name, types[hash_name], range_name, types[range_name] if range_name else None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(attribute[0] for attribute in self._attributes)

    # --- DynamoDB's checks ----------------------------------------------------------

    def validate_key(self, key: dict, *, older: bool = False) -> dict:
        """Check the Key of GetItem, DeleteItem, UpdateItem, ...; return it canonical.

        Values are checked first (a bad number or set is reported as such), then
        the schema: exactly the key attributes, each of its declared type; then
        empty and oversized key values.
        """
        if type(key) is not dict:
            raise ValidationException(_SCHEMA_MISMATCH)
        canonical = {name: validate_value(av, older=older) for name, av in key.items()}
        if len(canonical) != len(self._attributes):
            raise ValidationException(_SCHEMA_MISMATCH)
        for name, kind, _, _ in self._attributes:
            if kind not in canonical.get(name, ()):
                raise ValidationException(_SCHEMA_MISMATCH)
        return self._checked(canonical)

    def key_of(self, item: dict) -> dict:
        """The key of a canonical item (values.validate_item), with PutItem's messages."""
        for name, kind, _, _ in self._attributes:
            av = item.get(name)
            if av is None:
                raise ValidationException(f"{_INVALID}Missing the key {name} in the item")
            if kind not in av:
                actual = next(iter(av))
                raise ValidationException(
                    f"{_INVALID}Type mismatch for key {name} expected: {kind} actual: {actual}"
                )
        return self._checked(item)

    def _checked(self, values: dict) -> dict:
        """The key attributes of ``values`` (present, of the right type), refusing empty or oversized ones."""
        key = {}
        for name, kind, limit, message in self._attributes:
            av = values[name]
            value = av[kind]
            if kind != "N" and not value:
                raise _empty_key(name, kind)
            if _key_size(kind, value) > limit:
                raise ValidationException(message)
            key[name] = av
        return key

    # --- storage keys ---------------------------------------------------------------

    def _prefix(self, pk_av: dict) -> bytes:
        component = _component(self.hash_type, pk_av[self.hash_type])
        return _hash(component) + component

    def encode(self, key: dict) -> bytes:
        """The storage key of a canonical key dict."""
        out = self._prefix(key[self.hash_name])
        if self.range_name is not None:
            out += _component(self.range_type, key[self.range_name][self.range_type])
        return out

    def decode(self, storage_key: bytes) -> dict:
        """The canonical key dict of a storage key made by ``encode``."""
        at = _HASH_BYTES
        pk, at = _decode_component(self.hash_type, storage_key, at)
        if _hash(storage_key[_HASH_BYTES:at]) != storage_key[:_HASH_BYTES]:
            raise ValueError("storage key: hash does not match the partition key")
        key = {self.hash_name: {self.hash_type: pk}}
        if self.range_name is not None:
            sk, at = _decode_component(self.range_type, storage_key, at)
            key[self.range_name] = {self.range_type: sk}
        if at != len(storage_key):
            raise ValueError("storage key: trailing bytes")
        return key

    def partition_prefix(self, storage_key: bytes) -> bytes:
        """The leading ``hash ‖ partition key`` of a storage key: the first storage key of its partition key."""
        _, at = _decode_component(self.hash_type, storage_key, _HASH_BYTES)
        return storage_key[:at]

    def partition_range(self, pk_av: dict) -> tuple[bytes, bytes]:
        """[start, end) covering every item of one partition key."""
        prefix = self._prefix(pk_av)
        return prefix, _successor(prefix)

    def sort_range(self, pk_av: dict, op: str, values: list) -> tuple[bytes, bytes]:
        """[start, end) of the items of one partition key whose sort key satisfies ``op``.

        ``op`` is a key condition operator (=, <, <=, >, >=, BETWEEN, begins_with, or
        the KeyConditions names EQ, LT, ...); ``values`` its canonical operands, of the
        sort key's type. begins_with applies to S and B sort keys only.
        """
        kind = self.range_type
        if kind is None:
            raise ValueError("sort_range on a table without a sort key")
        for av in values:
            if kind not in av:
                raise ValidationException(_CONDITION_TYPE)
        operator = _SORT_OPERATORS[op]
        prefix = self._prefix(pk_av)
        end_all = _successor(prefix)
        if operator == "BEGINS_WITH":
            if kind == "N":
                raise ValueError("begins_with on a number sort key")
            raw = _raw(kind, values[0][kind])
            start = prefix + _encode_bytes(raw)
            if not raw.rstrip(b"\xff"):
                return start, end_all
            return start, prefix + _encode_bytes(_successor(raw))
        first = prefix + _component(kind, values[0][kind])
        if operator == "EQ":
            return first, _successor(first)
        if operator == "LT":
            return prefix, first
        if operator == "LE":
            return prefix, _successor(first)
        if operator == "GT":
            return _successor(first), end_all
        if operator == "GE":
            return first, end_all
        last = prefix + _component(kind, values[1][kind])  # BETWEEN, both ends inclusive
        return first, _successor(last)
