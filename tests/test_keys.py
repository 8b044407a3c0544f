"""keys.py: DynamoDB's key checks, and storage keys that sort as DynamoDB sorts."""
import base64
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings, strategies as st

from conftest import long_mode
from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.keys import KeySchema
from dynstore.api.values import canonical_number, validate_item

EXAMPLES = 1000 if long_mode() else 150
INVALID = "One or more parameter values were invalid: "
MISMATCH = "The provided key element does not match the schema"


def schema(hash_type="S", range_type=None):
    key_schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    definitions = [{"AttributeName": "pk", "AttributeType": hash_type}]
    if range_type:
        key_schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        definitions.append({"AttributeName": "sk", "AttributeType": range_type})
    return KeySchema.from_table(key_schema, definitions)


def message(call, *args, **kwargs):
    with pytest.raises(ValidationException) as info:
        call(*args, **kwargs)
    return info.value.message


# --- DynamoDB's checks --------------------------------------------------------------------


def test_from_table():
    table = KeySchema.from_table(
        [{"AttributeName": "b", "KeyType": "RANGE"}, {"AttributeName": "a", "KeyType": "HASH"}],
        [{"AttributeName": "a", "AttributeType": "N"}, {"AttributeName": "b", "AttributeType": "B"}],
    )
    assert (table.hash_name, table.hash_type, table.range_name, table.range_type) == ("a", "N", "b", "B")
    assert table.names == ("a", "b")
    assert schema().names == ("pk",) and schema().range_name is None


def test_validate_key():
    table = schema("S", "N")
    assert table.validate_key({"sk": {"N": "01.0"}, "pk": {"S": "a"}}) == {"pk": {"S": "a"}, "sk": {"N": "1"}}
    for key in [{"pk": {"S": "a"}}, {"pk": {"S": "a"}, "sk": {"S": "1"}}, {"pk": {"N": "1"}, "sk": {"N": "1"}},
                {"pk": {"S": "a"}, "sk": {"N": "1"}, "x": {"S": "b"}}, {"pk": {"S": "a"}, "x": {"N": "1"}}, {}]:
        assert message(table.validate_key, key) == MISMATCH
    # Values are checked before the schema: a bad value is reported as such.
    assert message(table.validate_key, {"pk": {"SS": ["a", "a"]}}) == INVALID + 'Input collection ["a", "a"] contains duplicates.'
    assert message(table.validate_key, {"pk": {"S": "a"}, "sk": {"N": "abc"}}) == (
        "The parameter cannot be converted to a numeric value: abc"
    )
    assert message(table.validate_key, {"pk": {"S": "a"}, "sk": {"N": ""}}, older=True) == (
        "The parameter cannot be converted to a numeric value"
    )
    assert message(table.validate_key, {"pk": {"S": ""}, "sk": {"N": "1"}}) == (
        "One or more parameter values are not valid. The AttributeValue for a key attribute "
        "cannot contain an empty string value. Key: pk"
    )
    assert message(schema("B").validate_key, {"pk": {"B": ""}}) == (
        "One or more parameter values are not valid. The AttributeValue for a key attribute "
        "cannot contain an empty binary value. Key: pk"
    )


def test_key_of():
    table = schema("S", "S")
    item = validate_item({"x": {"N": "1"}, "sk": {"S": "b"}, "pk": {"S": "a"}})
    assert table.key_of(item) == {"pk": {"S": "a"}, "sk": {"S": "b"}}
    assert message(table.key_of, {"sk": {"S": "b"}}) == INVALID + "Missing the key pk in the item"
    assert message(table.key_of, {"pk": {"S": "a"}}) == INVALID + "Missing the key sk in the item"
    for kind, value in [("N", "1"), ("B", "AA=="), ("SS", ["a"]), ("NS", ["1"]), ("BS", ["AA=="])]:
        assert message(table.key_of, {"pk": {kind: value}, "sk": {"S": "b"}}) == (
            f"{INVALID}Type mismatch for key pk expected: S actual: {kind}"
        )
    assert message(table.key_of, {"pk": {"S": "a"}, "sk": {"S": ""}}) == (
        "One or more parameter values are not valid. The AttributeValue for a key attribute "
        "cannot contain an empty string value. Key: sk"
    )


def test_key_size_limits():
    table = schema("S", "B")
    at_limit = {"pk": {"S": "é" * 1024}, "sk": {"B": base64.b64encode(b"x" * 1024).decode()}}
    assert table.key_of(at_limit) == at_limit
    assert len(table.encode(at_limit)) <= limits.BTREE_KEY_BYTES_MAX
    assert message(table.key_of, {"pk": {"S": "é" * 1024 + "a"}, "sk": at_limit["sk"]}) == (
        INVALID + "Size of hashkey has exceeded the maximum size limit of2048 bytes"
    )
    assert message(table.validate_key, {"pk": {"S": "a"}, "sk": {"B": base64.b64encode(b"x" * 1025).decode()}}) == (
        INVALID + "Aggregated size of all range keys has exceeded the size limit of 1024 bytes"
    )
    # The largest possible storage key (all-zero binary keys) still fits the B-tree.
    widest = schema("B", "B")
    key = {"pk": {"B": base64.b64encode(bytes(2048)).decode()}, "sk": {"B": base64.b64encode(bytes(1024)).decode()}}
    assert len(widest.encode(widest.validate_key(key))) == limits.STORAGE_KEY_BYTES_MAX


# --- storage keys ---------------------------------------------------------------------------

texts = st.text(max_size=40)
binaries = st.binary(max_size=40)


@st.composite
def numbers(draw):
    """Canonical numbers across the whole range, concentrated where encodings are tricky."""
    digits = draw(st.text("0123456789", min_size=1, max_size=38).filter(lambda d: d.strip("0")))
    exponent = draw(st.integers(-130, 125) | st.integers(-3, 3))
    sign = draw(st.sampled_from(["", "-"]))
    text = f"{sign}{digits[0]}.{digits[1:] or '0'}e{exponent}"
    try:
        return canonical_number(text)
    except ValidationException:
        return "0"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def av(kind, value):
    return {kind: b64(value) if kind == "B" else value}


def order_value(kind, value):
    """DynamoDB's order: numbers numerically, strings by UTF-8 bytes, binaries by bytes."""
    if kind == "N":
        return Decimal(value)
    if kind == "S":
        return value.encode("utf-8", "surrogatepass")
    return value


VALUES = {"S": texts, "N": numbers(), "B": binaries}


@pytest.mark.parametrize("kind", ["S", "N", "B"])
def test_sort_key_order_and_round_trip(kind):
    table = schema("S", kind)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.lists(VALUES[kind], min_size=2, max_size=8), texts.filter(bool))
    def check(values, pk):
        keys = [{"pk": {"S": pk}, "sk": av(kind, v)} for v in values]
        encoded = [table.encode(key) for key in keys]
        for key, raw in zip(keys, encoded):
            assert table.decode(raw) == key
        by_storage = sorted(range(len(values)), key=lambda i: encoded[i])
        by_dynamodb = sorted(range(len(values)), key=lambda i: order_value(kind, values[i]))
        assert [order_value(kind, values[i]) for i in by_storage] == [order_value(kind, values[i]) for i in by_dynamodb]
        # Equal values encode equally, different values differently.
        for i in range(len(values)):
            for j in range(len(values)):
                same = order_value(kind, values[i]) == order_value(kind, values[j])
                assert (encoded[i] == encoded[j]) == same

    check()


@pytest.mark.parametrize("kind", ["S", "N", "B"])
def test_partition_key_round_trip_and_range(kind):
    table = schema(kind, "S")

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(VALUES[kind], VALUES[kind], st.lists(texts, max_size=4))
    def check(pk, other, sort_keys):
        assume(kind != "S" or pk)
        start, end = table.partition_range(av(kind, pk))
        assert start < end
        for sk in sort_keys:
            key = {"pk": av(kind, pk), "sk": {"S": sk}}
            raw = table.encode(key)
            assert table.decode(raw) == key
            assert start <= raw < end
            if order_value(kind, other) != order_value(kind, pk):
                outside = table.encode({"pk": av(kind, other), "sk": {"S": sk}})
                assert not start <= outside < end

    check()


def test_hash_only_table():
    table = schema("N")
    key = {"pk": {"N": "-12.5"}}
    raw = table.encode(key)
    assert table.decode(raw) == key
    start, end = table.partition_range({"N": "-12.5"})
    assert start == raw < end


def test_encoding_format():
    # hash(8) then the component: 8-byte groups with a marker, numbers sign/exponent/digits.
    table = schema("S", "N")
    raw = table.encode({"pk": {"S": "a"}, "sk": {"N": "123.45"}})
    assert raw[8:] == b"a" + bytes(7) + b"\xf8" + b"\x03" + bytes((3 + 129,)) + b"12345\x00"
    raw = table.encode({"pk": {"S": "abcdefgh"}, "sk": {"N": "0"}})
    assert raw[8:] == b"abcdefgh\xff" + bytes(8) + b"\xf7" + b"\x02"
    raw = table.encode({"pk": {"S": ""}, "sk": {"N": "-0.05"}})
    assert raw[8:] == bytes(8) + b"\xf7" + b"\x01" + bytes((255 - (-1 + 129),)) + b"4\xff"


def test_decode_refuses_damage():
    table = schema("S", "N")
    raw = table.encode({"pk": {"S": "abc"}, "sk": {"N": "7"}})
    for damaged in [raw[:-1], raw + b"\x00", raw[:3] + bytes((raw[3] ^ 1,)) + raw[4:], raw[:8] + b"abd" + raw[11:]]:
        with pytest.raises(ValueError):
            table.decode(damaged)


OPS = ["=", "<", "<=", ">", ">=", "BETWEEN", "begins_with", "EQ", "LT", "LE", "GT", "GE", "BEGINS_WITH"]


def holds(kind, op, value, operands):
    v = order_value(kind, value)
    a = order_value(kind, operands[0])
    if op in ("=", "EQ"):
        return v == a
    if op in ("<", "LT"):
        return v < a
    if op in ("<=", "LE"):
        return v <= a
    if op in (">", "GT"):
        return v > a
    if op in (">=", "GE"):
        return v >= a
    if op == "BETWEEN":
        return a <= v <= order_value(kind, operands[1])
    return v.startswith(a)


@pytest.mark.parametrize("kind", ["S", "N", "B"])
def test_sort_range_bounds(kind):
    table = schema("B", kind)
    small = {"S": st.text("ab\x00\xff\U0001f600", max_size=4), "N": numbers(), "B": st.binary(max_size=3)}[kind]

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.sampled_from(OPS), st.lists(small, min_size=2, max_size=2), st.lists(small, max_size=12),
           st.binary(max_size=3))
    def check(op, operands, values, pk):
        assume(kind != "N" or op.lower() != "begins_with")
        start, end = table.sort_range(av("B", pk), op, [av(kind, o) for o in operands])
        neighbour = b"\x00" + pk if pk != b"\x00" else b"\x01"
        for value in values:
            raw = table.encode({"pk": av("B", pk), "sk": av(kind, value)})
            assert (start <= raw < end) == holds(kind, op, value, operands), (op, operands, value)
            # Other partitions' items never fall inside.
            other = table.encode({"pk": av("B", neighbour), "sk": av(kind, value)})
            assert not start <= other < end

    check()


def test_sort_range_refusals():
    table = schema("S", "N")
    assert message(table.sort_range, {"S": "a"}, "=", [{"S": "1"}]) == (
        INVALID + "Condition parameter type does not match schema type"
    )
    with pytest.raises(ValueError):
        table.sort_range({"S": "a"}, "begins_with", [{"N": "1"}])
    with pytest.raises(ValueError):
        schema("S").sort_range({"S": "a"}, "=", [{"S": "1"}])
