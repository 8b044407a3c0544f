"""values.py against DynamoDB's behaviour.

Expected messages and sizes were captured against the real service (dynalite's
and the DynamoDB conformance suites' recorded answers); each case names what it pins.
"""
from decimal import Context, Decimal

import pytest
from hypothesis import given, settings, strategies as st

from conftest import long_mode
from dynstore import limits
from dynstore.api.errors import SerializationException, ValidationException
from dynstore.api.values import (
    canonical_number,
    decimal_text,
    item_size,
    number,
    number_size,
    validate_item,
    validate_value,
    value_size,
)

EXAMPLES = 2000 if long_mode() else 200
_WIDE = Context(prec=400)  # exact arithmetic for the reference computations
INVALID = "One or more parameter values were invalid: "
NOT_NUMERIC = "The parameter cannot be converted to a numeric value"
OVERFLOW = "Number overflow. Attempting to store a number with magnitude larger than supported range"
UNDERFLOW = "Number underflow. Attempting to store a number with magnitude smaller than supported range"
TOO_PRECISE = "Attempting to store more than 38 significant digits in a Number"
NESTING = "Nesting Levels have exceeded supported limits: Attributes in the item have nested levels beyond supported limit"


def refusal(av, older=False, error=ValidationException):
    with pytest.raises(error) as info:
        validate_value(av, older=older)
    return info.value.message


# --- numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("1.0", "1"), ("01", "1"), ("1e2", "100"), ("-0", "0"), ("0.50", "0.5"), ("+3", "3"),
        (".123", "0.123"), ("0001.23", "1.23"), ("1e+5", "100000"), ("5.", "5"),
        ("-17.4E37", "-174" + "0" * 36), ("0042.1200", "42.12"), ("1E125", "1" + "0" * 125),
        ("1E-130", "0." + "0" * 129 + "1"), ("-1E-130", "-0." + "0" * 129 + "1"),
        ("0000012345678901234567890123456789012345678", "12345678901234567890123456789012345678"),
        ("-00001.23456789012345678901234567890123456780000", "-1.2345678901234567890123456789012345678"),
        ("0009.99999999999999999999999999999999999990000e125", "9" * 38 + "0" * 88),
        ("-0.000", "0"), ("0e125", "0"), ("0e1000", "0"), ("-0.0e-1000", "0"), ("1000", "1000"), ("123.4500e-2", "1.2345"),
    ],
)
def test_canonical_number(text, canonical):
    assert canonical_number(text) == canonical
    assert number(text) == Decimal(text)
    assert validate_value({"N": text}) == {"N": canonical}


@pytest.mark.parametrize(
    "text, message",
    [
        # Captured PutItem answers (current wording), the value echoed as sent.
        ("1e99999999999", OVERFLOW), ("-1e99999999999", OVERFLOW), ("1e-99999999999", UNDERFLOW),
        ("1e2147483648", OVERFLOW), ("1e2147483647", OVERFLOW), ("1e-2147483648", UNDERFLOW),
        ("1e126", OVERFLOW), ("-1e126", OVERFLOW), ("11e125", OVERFLOW), ("1e-131", UNDERFLOW),
        ("-1e-131", UNDERFLOW), ("0.9e-130", UNDERFLOW),
        ("1e9223372036854775808", f"{NOT_NUMERIC}: 1e9223372036854775808"),
        ("abc", f"{NOT_NUMERIC}: abc"), ("1.2.3", f"{NOT_NUMERIC}: 1.2.3"), ("", f"{NOT_NUMERIC}: "),
        (" 1", f"{NOT_NUMERIC}:  1"), ("1 ", f"{NOT_NUMERIC}: 1 "), ("0x10", f"{NOT_NUMERIC}: 0x10"),
        ("1e", f"{NOT_NUMERIC}: 1e"), ("NaN", f"{NOT_NUMERIC}: NaN"), ("Infinity", f"{NOT_NUMERIC}: Infinity"),
        ("-Infinity", f"{NOT_NUMERIC}: -Infinity"), (".", f"{NOT_NUMERIC}: ."), ("1_0", f"{NOT_NUMERIC}: 1_0"),
        ("١", f"{NOT_NUMERIC}: ١"), ("²", f"{NOT_NUMERIC}: ²"),
        ("1234567890123456789012345678901234567890", TOO_PRECISE),
        ("123456789012345678901234567890123456789", TOO_PRECISE),
        ("-1.23456789012345678901234567890123456789", TOO_PRECISE),
        ("3.14159265358979323846264338327950288419", TOO_PRECISE),
    ],
)
def test_number_refusals(text, message):
    assert refusal({"N": text}) == message
    with pytest.raises(ValidationException):
        canonical_number(text)


@pytest.mark.parametrize(
    "text, message",
    [
        # The older wording (BatchWriteItem, transactions, Scan): no colon for an empty
        # number, and a 32-bit exponent that wraps.
        ("abc", f"{NOT_NUMERIC}: abc"), ("", NOT_NUMERIC), ("1e126", OVERFLOW), ("1e2147483647", UNDERFLOW),
    ],
)
def test_number_refusals_older(text, message):
    assert refusal({"N": text}, older=True) == message


def test_number_edges_accepted():
    for text in ["9.9999999999999999999999999999999999999E+125", "-9.9999999999999999999999999999999999999E+125",
                 "1E-130", "-1E-130", "31415926535897932384626433832795028841e30"]:
        assert Decimal(canonical_number(text)) == Decimal(text)


def test_decimal_text():
    assert decimal_text(Decimal("1.50")) == "1.5"
    assert decimal_text(Decimal("-0E+5")) == "0"
    assert decimal_text(Decimal("1E+3")) == "1000"
    for value, message in [(Decimal("9e125") * 2, OVERFLOW), (Decimal("1e-131"), UNDERFLOW),
                           (Decimal("1" + "0" * 49 + "1"), OVERFLOW), (Decimal("NaN"), f"{NOT_NUMERIC}: NaN")]:
        with pytest.raises(ValidationException) as info:
            decimal_text(value)
        assert info.value.message == message


@st.composite
def number_texts(draw):
    sign = draw(st.sampled_from(["", "-", "+"]))
    whole = draw(st.text("0123456789", max_size=20))
    fraction = draw(st.none() | st.text("0123456789", max_size=20))
    if not whole and not fraction:
        whole = "0"
    exponent = draw(st.none() | st.integers(-150, 150))
    text = sign + whole + ("" if fraction is None else "." + fraction)
    if exponent is not None:
        text += draw(st.sampled_from("eE")) + str(exponent)
    return text


@settings(max_examples=EXAMPLES, deadline=None)
@given(number_texts())
def test_canonical_number_matches_decimal(text):
    value = Decimal(text)
    try:
        canonical = canonical_number(text)
    except ValidationException as error:
        significant = len(value.copy_abs().normalize(_WIDE).as_tuple().digits)
        magnitude = value.adjusted()
        assert (
            error.message == OVERFLOW and magnitude > 125 and significant <= 38
            or error.message == UNDERFLOW and magnitude < -130 and significant <= 38
            or error.message == TOO_PRECISE and significant > 38
        ), (text, error.message)
        return
    assert Decimal(canonical) == value
    assert "e" not in canonical.lower() and canonical == canonical.strip()
    assert canonical_number(canonical) == canonical  # idempotent
    if "." in canonical:
        assert not canonical.endswith("0")
    assert canonical == "0" or not canonical.lstrip("-").startswith("00")




# --- sizes -------------------------------------------------------------------------------

# Measured against real DynamoDB to the byte by accepting an item of exactly 409,600 bytes
# and refusing one of 409,601 (the conformance suite's capture of 2026-08-18).
CAPTURED_NUMBER_BYTES = [
    ("0", 1), ("1", 2), ("12", 2), ("123", 3), ("1234", 3), ("12345678901234567890123456789012345678", 20),
    ("0042", 2), ("100", 2), ("1010", 3), ("0.0000001", 2), ("1E125", 2), ("1E-100", 2), ("1.5", 3),
    ("15", 2), ("1.2", 3), ("1.200", 3), ("1.234", 4), ("3.14159", 5), ("123456", 4), ("100.5", 4),
    ("0.15", 2), ("-42", 3), ("-0", 1),
    # dynalite's boundary items (38 ones then 88 zeros is 20 bytes; 1, 11, 11111, 1111111 then zeros).
    ("1" * 38 + "0" * 88, 20), ("1" + "0" * 125, 2), ("11" + "0" * 124, 2), ("11111" + "0" * 121, 4),
    ("111111" + "0" * 120, 4), ("1111111" + "0" * 119, 5),
]


@pytest.mark.parametrize("text, size", CAPTURED_NUMBER_BYTES)
def test_number_size_captured(text, size):
    assert number_size(canonical_number(text)) == size


def _base100_length(value: Decimal) -> int:
    """An independent model: length of the base-100 encoding (exponent byte, digit pairs, terminator)."""
    if value == 0:
        return 1
    digits = "".join(map(str, value.copy_abs().normalize(_WIDE).as_tuple().digits))
    exponent = value.adjusted()
    if exponent % 2 == 0:  # pairs are (10^(2k+1), 10^2k): a leading even power is a low half
        digits = "0" + digits
    pairs = (len(digits) + 1) // 2
    return 1 + pairs + (1 if value < 0 and pairs < 20 else 0)


@settings(max_examples=EXAMPLES, deadline=None)
@given(number_texts())
def test_number_size_model(text):
    try:
        canonical = canonical_number(text)
    except ValidationException:
        return
    assert number_size(canonical) == _base100_length(Decimal(canonical))
    assert number_size(canonical) <= 21


def test_value_sizes():
    assert value_size({"S": "héllo"}) == 6
    assert value_size({"B": "AAE="}) == 2 and value_size({"B": ""}) == 0 and value_size({"B": "AAEC"}) == 3
    assert value_size({"BOOL": False}) == 1 and value_size({"NULL": True}) == 1
    assert value_size({"M": {}}) == 3 and value_size({"L": []}) == 3
    assert value_size({"M": {"ab": {"S": "xyz"}}}) == 3 + 2 + 3 + 1
    assert value_size({"L": [{"N": "1"}, {"BOOL": True}]}) == 3 + (2 + 1) + (1 + 1)
    assert value_size({"SS": ["a", "bc"]}) == 3 and value_size({"NS": ["1", "-42"]}) == 5
    assert value_size({"BS": ["AAE=", "AA=="]}) == 3
    item = {"id": {"S": "k"}, "n": {"N": "3.14159"}, "m": {"M": {"x": {"L": [{"NULL": True}]}}}}
    assert item_size(item) == (2 + 1) + (1 + 5) + (1 + 3 + 1 + (3 + 1 + 1) + 1)


def _padded(total, base):
    """``base`` plus attribute "p" so that the item is exactly ``total`` bytes."""
    item = dict(base)
    item["p"] = {"S": "x" * (total - item_size(base) - 1)}
    assert item_size(item) == total
    return item


def test_item_size_limit_to_the_byte():
    for base in [{"a": {"S": "key"}}, {"a": {"S": "key"}, "n": {"N": "3.14159"}, "l": {"L": [{"M": {}}]}}]:
        at_limit = _padded(limits.ITEM_BYTES_MAX, base)
        assert validate_item(at_limit) == at_limit
        with pytest.raises(ValidationException) as info:
            validate_item(_padded(limits.ITEM_BYTES_MAX + 1, base))
        assert info.value.message == "Item size has exceeded the maximum allowed size"


def test_size_counted_before_later_attributes():
    # An item already over the limit is refused before a later bad value is read.
    item = {"p": {"S": "x" * limits.ITEM_BYTES_MAX}, "n": {"N": "abc"}}
    with pytest.raises(ValidationException) as info:
        validate_item(item)
    assert info.value.message == "Item size has exceeded the maximum allowed size"


# --- shapes, types and sets ---------------------------------------------------------------


def test_attribute_value_shape():
    assert refusal({}) == "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
    assert refusal({"a": ""}) == "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
    assert refusal({"S": None}) == "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
    many = "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes"
    assert refusal({"S": "a", "N": "1"}) == many
    # Members are checked in DynamoDB's order before the count: the bad number wins.
    assert refusal({"S": "a", "N": "x"}) == f"{NOT_NUMERIC}: x"
    assert refusal({"NULL": False}) == INVALID + "Null attribute value types must have the value of true"
    assert validate_value({"S": "a", "junk": 1}) == {"S": "a"}
    for av in [{"S": 1}, {"N": 123}, {"BOOL": "true"}, {"NULL": "true"}, {"SS": "a"}, {"SS": [1]}, {"M": []},
               {"L": {}}, {"B": 5}, "S", None]:
        with pytest.raises(SerializationException):
            validate_value(av)


def test_empty_values_allowed_outside_keys():
    # Since May 2020 empty strings and binaries are allowed, also inside sets.
    for av in [{"S": ""}, {"B": ""}, {"SS": [""]}, {"BS": [""]}, {"L": []}, {"M": {}}, {"M": {"a": {"S": ""}}}]:
        assert validate_value(av) == av


def test_empty_sets():
    assert refusal({"SS": []}) == INVALID + "An string set  may not be empty"
    assert refusal({"NS": []}) == INVALID + "An number set  may not be empty"
    assert refusal({"BS": []}) == INVALID + "Binary sets should not be empty"
    assert refusal({"M": {"x": {"L": [{"NS": []}]}}}) == INVALID + "An number set  may not be empty"


def test_duplicate_set_members():
    # Current wording: members in byte order up to the first repeat, then the repeat, then the rest.
    assert refusal({"SS": ["b", "a", "b"]}) == INVALID + 'Input collection ["a", "b", "b"] contains duplicates.'
    assert refusal({"SS": ["a", "a"]}) == INVALID + 'Input collection ["a", "a"] contains duplicates.'
    assert refusal({"SS": ["", ""]}) == INVALID + 'Input collection ["", ""] contains duplicates.'
    assert refusal({"BS": ["/w==", "AA==", "AA=="]}) == (
        INVALID + 'Input collection ["AA==","/w==","AA=="]of type BS contains duplicates.'
    )
    assert refusal({"NS": ["2", "1", "2"]}) == INVALID + "Input collection contains duplicates."
    assert refusal({"NS": ["1", "1.0"]}) == INVALID + "Input collection contains duplicates."
    # Older wording: as sent, unquoted; the number set message bare.
    assert refusal({"SS": ["b", "a", "b"]}, older=True) == INVALID + "Input collection [b, a, b] contains duplicates."
    assert refusal({"BS": ["/w==", "AA==", "AA=="]}, older=True) == (
        INVALID + "Input collection [/w==, AA==, AA==]of type BS contains duplicates."
    )
    assert refusal({"NS": ["2", "1", "2"]}, older=True) == "Input collection contains duplicates"


def test_number_set_members():
    assert validate_value({"NS": ["1.0", "-0", "1e2"]}) == {"NS": ["1", "0", "100"]}
    assert refusal({"NS": ["1", ""]}) == f"{NOT_NUMERIC}: "
    assert refusal({"NS": ["1", "b", "a"]}) == f"{NOT_NUMERIC}: b"
    assert refusal({"NS": ["1", "1e126"]}) == OVERFLOW


def test_binary():
    assert validate_value({"B": "Yg=="}) == {"B": "Yg=="}
    for text, error in [
        ("abc", "'abc' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: 3"),
        ("ab!d", "'ab!d' can not be converted to a Blob: Invalid Base64 character: '!'"),
        ("Yh==", "'Yh==' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"),
        ("Y===", "'Y===' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"),
    ]:
        assert refusal({"B": text}, error=SerializationException) == error
        assert refusal({"BS": ["AA==", text]}, error=SerializationException) == error


def _deep(levels):
    value = {"S": "leaf"}
    for _ in range(levels):
        value = {"M": {"n": value}}
    return value


def test_nesting_limit():
    # Captured: 31 nested maps (leaf at level 32) are accepted, 32 refused; lists alike,
    # whatever the innermost value, and expression values get the same limit.
    assert validate_item({"a": _deep(31)}) == {"a": _deep(31)}
    assert validate_value(_deep(31)) == _deep(31)
    empty_at_32 = {"M": {}}
    for _ in range(31):
        empty_at_32 = {"L": [empty_at_32]}
    for value in [_deep(32), empty_at_32]:
        with pytest.raises(ValidationException) as info:
            validate_item({"a": value})
        assert info.value.message == NESTING
        assert refusal(value) == NESTING
    # Far deeper input is refused without exhausting the stack.
    assert refusal(_deep(5000)) == NESTING


def test_attribute_names():
    with pytest.raises(ValidationException) as info:
        validate_item({"": {"S": "a"}})
    assert info.value.message == "Empty attribute name"
    name = "x" * limits.ATTRIBUTE_NAME_BYTES_MAX
    assert validate_item({name: {"S": "a"}}) == {name: {"S": "a"}}
    with pytest.raises(ValidationException) as info:
        validate_item({name + "x": {"S": "a"}})
    assert info.value.message == "Attribute name is too large, must be less than 65536 bytes"
    with pytest.raises(ValidationException):
        validate_value({"M": {"": {"S": "a"}}})


def test_validate_item_canonical():
    item = {
        "a": {"S": "k"}, "b": {"N": "-56.7890"}, "c": {"B": "Yg=="}, "d": {"BOOL": False}, "e": {"NULL": True},
        "f": {"SS": ["a"]}, "g": {"NS": ["-056.789"]}, "h": {"BS": ["Yg=="]},
        "i": {"L": [{"N": "01"}, {"L": []}, {"M": {}}]}, "j": {"M": {"x": {"NS": ["1e1", "2"]}}},
    }
    canonical = validate_item(item)
    assert canonical["b"] == {"N": "-56.789"} and canonical["g"] == {"NS": ["-56.789"]}
    assert canonical["i"] == {"L": [{"N": "1"}, {"L": []}, {"M": {}}]}
    assert canonical["j"] == {"M": {"x": {"NS": ["10", "2"]}}}
    assert validate_item(canonical) == canonical
    assert list(canonical) == list(item)
