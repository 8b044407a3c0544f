"""Unit tests of the expression language: every construct and every DynamoDB error message
the package promises, checked word for word."""
import pytest

from dynstore.api.errors import ValidationException
from dynstore.api.expressions import (
    ExpressionContext, attribute_updates, attributes_to_get, check_parameters,
    compile_condition, compile_key_condition, compile_projection, compile_update, expected,
    key_conditions, query_filter, scan_filter,
)

N = lambda n: {"N": str(n)}  # noqa: E731
S = lambda s: {"S": s}  # noqa: E731

ITEM = {
    "id": S("k"),
    "n": N("5"),
    "s": S("hello"),
    "b": {"B": "aGVsbG8="},  # b"hello"
    "ss": {"SS": ["x", "y"]},
    "ns": {"NS": ["1", "2.50"]},
    "l": {"L": [N(1), S("x"), {"M": {"deep": S("d")}}]},
    "m": {"M": {"a": {"M": {"b": N(3)}}, "s": S("in")}},
    "t": {"BOOL": True},
    "z": {"NULL": True},
}


def cond(text, values=None, names=None, item=ITEM, kind="ConditionExpression"):
    ctx = ExpressionContext(names, values)
    result = compile_condition(text, ctx, kind).evaluate(item)
    ctx.check_unused()
    return result


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValidationException) as info:
        fn(*args, **kwargs)
    return info.value.message


def update(text, values=None, names=None, item=ITEM):
    ctx = ExpressionContext(names, values)
    result = compile_update(text, ctx).apply(item)
    ctx.check_unused()
    return result


# --- conditions ---------------------------------------------------------------------


@pytest.mark.parametrize("text,values,want", [
    ("n = :v", {":v": N("5.00")}, True),
    ("n <> :v", {":v": N("5")}, False),
    ("n < :v", {":v": N("10")}, True),
    ("n <= :v", {":v": N("5")}, True),
    ("n > :v", {":v": N("-1E+3")}, True),
    ("n >= :v", {":v": N("5.1")}, False),
    ("s < :v", {":v": S("help")}, True),
    ("b > :v", {":v": {"B": "aGVs"}}, True),
    ("n < :v", {":v": S("9")}, False),  # different types compare false
    ("n = :v", {":v": S("5")}, False),
    ("gone = :v", {":v": S("5")}, False),
    ("gone <> :v", {":v": S("5")}, True),
    ("l < :v", {":v": N("1")}, False),  # lists are not ordered
    ("ss = :v", {":v": {"SS": ["y", "x"]}}, True),  # sets compare unordered
    ("ns = :v", {":v": {"NS": ["2.5", "1"]}}, True),
    ("m.a = :v", {":v": {"M": {"b": N("3.0")}}}, True),
    ("l[2].deep = :v", {":v": S("d")}, True),
    ("l[7] = :v", {":v": S("d")}, False),
    ("m.a.b BETWEEN :lo AND :hi", {":lo": N(1), ":hi": N(3)}, True),
    ("s BETWEEN :lo AND :hi", {":lo": N(1), ":hi": N(3)}, False),
    ("s IN (:a, :b)", {":a": S("x"), ":b": S("hello")}, True),
    ("n IN (:a)", {":a": S("5")}, False),
    ("attribute_exists(m.s)", None, True),
    ("attribute_not_exists(m.q)", None, True),
    ("attribute_type(t, :t)", {":t": S("BOOL")}, True),
    ("attribute_type(z, :t)", {":t": S("S")}, False),
    ("begins_with(s, :p)", {":p": S("he")}, True),
    ("begins_with(b, :p)", {":p": {"B": "aGU="}}, True),
    ("begins_with(n, :p)", {":p": S("5")}, False),
    ("contains(s, :p)", {":p": S("ell")}, True),
    ("contains(ss, :p)", {":p": S("y")}, True),
    ("contains(ns, :p)", {":p": N("2.5")}, True),
    ("contains(l, :p)", {":p": S("x")}, True),
    ("contains(n, :p)", {":p": N("5")}, False),
    ("size(s) = :v", {":v": N(5)}, True),
    ("size(b) = :v", {":v": N(5)}, True),
    ("size(l) = :v", {":v": N(3)}, True),
    ("size(m) > :v", {":v": N(1)}, True),
    ("size(n) = :v", {":v": N(1)}, False),
    ("size(gone) = :v", {":v": N(0)}, False),
    ("n = :v OR n = :w AND s = :w", {":v": N(5), ":w": S("no")}, True),  # AND binds tighter
    ("(n = :v OR n = :w) AND s = :w", {":v": N(5), ":w": S("no")}, False),
    ("NOT n = :v", {":v": N(5)}, False),
    ("NOT NOT n = :v", {":v": N(5)}, True),
    ("not (n = :v) or (s) = :w", {":v": N(5), ":w": S("hello")}, True),
    ("(size(s)) = :v", {":v": N(5)}, True),
    ("(contains(s, :p) and n = (:n))", {":p": S("h"), ":n": N(5)}, True),
])
def test_condition(text, values, want):
    assert cond(text, values) is want


def test_condition_placeholders_and_unicode_order():
    assert cond("#a.#b = :v", {":v": S("in")}, {"#a": "m", "#b": "s"})
    item = {"u": S("\U0001F600"), "w": S("\uffff")}
    # UTF-8 byte order, which is code point order, not UTF-16 order.
    assert cond("u > w", item=item)


def test_condition_name_with_special_characters():
    item = {"a.b": S("dot"), "a": {"M": {"b": S("nested")}}}
    assert cond("#ab = :v", {":v": S("dot")}, {"#ab": "a.b"}, item=item)
    assert cond("a.b = :v", {":v": S("nested")}, item=item)


@pytest.mark.parametrize("text,values,message", [
    ("a-b", None, 'Syntax error; token: "-", near: "a-b"'),
    # A name may hold underscores but not start with one.
    ("_a = :v", {":v": N(1)}, 'Syntax error; token: "_", near: "_a"'),
    ("()", None, 'Syntax error; token: ")", near: "()"'),
    ("n = ", None, 'Syntax error; token: "<EOF>", near: "= "'),
    ("n = 5", None, 'Syntax error; token: "5", near: "= 5"'),
    ("n == :v", {":v": N(1)}, 'Syntax error; token: "=", near: "== :v"'),
    ("n", None, 'Syntax error; token: "<EOF>", near: "n"'),
    ("n = :v and", {":v": N(1)}, 'Syntax error; token: "<EOF>", near: "and"'),
    ("and = :v", {":v": N(1)}, 'Syntax error; token: "and", near: "and ="'),
    ("n = :v $", {":v": N(1)}, 'Syntax error; token: "$", near: ":v $"'),
    ("((n = :v))", {":v": N(1)}, "The expression has redundant parentheses;"),
    ("((n)) = :v", {":v": N(1)}, "The expression has redundant parentheses;"),
    ("status = :v", {":v": N(1)}, "Attribute name is a reserved keyword; reserved keyword: status"),
    ("m.Count = :v", {":v": N(1)}, "Attribute name is a reserved keyword; reserved keyword: Count"),
    ("foo(n)", None, "Invalid function name; function: foo"),
    ("SIZE(n) = :v", {":v": N(1)}, "Invalid function name; function: SIZE"),
    ("size(s)", None, "The function is not allowed to be used this way in an expression; function: size"),
    ("n = attribute_exists(s)", None,
     "The function is not allowed to be used this way in an expression; function: attribute_exists"),
    ("size(s, n) = :v", {":v": N(1)},
     "Incorrect number of operands for operator or function; operator or function: size, number of operands: 2"),
    ("attribute_exists(:v)", {":v": N(1)},
     "Operator or function requires a document path; operator or function: attribute_exists"),
    ("begins_with(s, :v)", {":v": N(1)},
     "Incorrect operand type for operator or function; operator or function: begins_with, operand type: N"),
    ("begins_with(size(s), :v)", {":v": S("1")},
     "Incorrect operand type for operator or function; operator or function: begins_with, operand type: N"),
    ("size(:v) = :v", {":v": N(1)},
     "Incorrect operand type for operator or function; operator or function: size, operand type: N"),
    ("attribute_type(s, :v)", {":v": N(1)},
     "Incorrect operand type for operator or function; operator or function: attribute_type, operand type: N"),
    ("attribute_type(s, :v)", {":v": S("STRING")},
     "Invalid attribute type name found; type: STRING, valid types: {B,NULL,SS,BOOL,L,BS,N,NS,S,M}"),
    ("contains(s, s)", None,
     "The first operand must be distinct from the remaining operands for this operator or function; "
     "operator: contains, first operand: [s]"),
    ("#a = m.s", None, None),  # filled below: undefined name
    ("n BETWEEN :a AND :b", {":a": N(1), ":b": S("x")},
     "The BETWEEN operator requires same data type for lower and upper bounds; lower bound operand: "
     "AttributeValue: {N:1}, upper bound operand: AttributeValue: {S:x}"),
    ("n BETWEEN :a AND :b", {":a": N(9), ":b": N(1)},
     "The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound "
     "operand: AttributeValue: {N:9}, upper bound operand: AttributeValue: {N:1}"),
])
def test_condition_errors(text, values, message):
    if message is None:
        message = "An expression attribute name used in the document path is not defined; attribute name: #a"
    assert error(cond, text, values) == f"Invalid ConditionExpression: {message}"


def test_filter_expression_names_its_kind():
    assert error(cond, "a-b", kind="FilterExpression") == \
        'Invalid FilterExpression: Syntax error; token: "-", near: "a-b"'


def test_undefined_value_and_name():
    assert error(cond, "n = :v") == ("Invalid ConditionExpression: An expression attribute value used in "
                                     "expression is not defined; attribute value: :v")
    # The first undefined placeholder in the text is the one reported.
    assert error(cond, "#x = :v", names={"#y": "n"}) == (
        "Invalid ConditionExpression: An expression attribute name used in the document path is not "
        "defined; attribute name: #x")


def test_unused_and_empty_placeholders():
    assert error(cond, "n = :v", {":v": N(1), ":b": N(2), ":c": N(3)}) == \
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:b, :c}"
    assert error(cond, "n = :v", {":v": N(1)}, {"#a": "x"}) == \
        "Value provided in ExpressionAttributeNames unused in expressions: keys: {#a}"
    assert error(ExpressionContext, {}, None) == "ExpressionAttributeNames must not be empty"
    assert error(ExpressionContext, None, {}) == "ExpressionAttributeValues must not be empty"
    assert error(ExpressionContext, {"a": "x"}, None) == \
        'ExpressionAttributeNames contains invalid key: Syntax error; key: "a"'
    assert error(ExpressionContext, None, {":a-b": N(1)}) == \
        'ExpressionAttributeValues contains invalid key: Syntax error; key: ":a-b"'


def test_one_context_serves_several_expressions():
    ctx = ExpressionContext({"#n": "n"}, {":v": N(5), ":w": N(1)})
    assert compile_condition("#n = :v", ctx).evaluate(ITEM)
    with pytest.raises(ValidationException):
        ctx.check_unused()
    compile_update("SET #n = #n + :w", ctx)
    ctx.check_unused()


def test_limits():
    big = "n = :v AND " + " " * 4090 + "n = :v"
    assert error(cond, big, {":v": N(1)}) == \
        f"Invalid ConditionExpression: Expression size has exceeded the maximum allowed size; expression size: {len(big)}"
    # Size is checked before syntax.
    assert "expression size: 15000" in error(cond, "(" * 15000)
    assert cond("a < b " + "or (a < b " * 149 + ")" * 149, item={"a": N(1), "b": N(2)})
    assert error(cond, "a<b " + "or (a<b " * 454 + ")" * 454) == \
        "Invalid ConditionExpression: The expression contains too many operators; operator count: 301"
    assert error(cond, "not " * 1000 + "a < b") == \
        "Invalid ConditionExpression: The expression contains too many operators; operator count: 301"
    assert error(cond, "(" * 2046 + "a<b" + ")" * 2046) == \
        "Invalid ConditionExpression: The expression has redundant parentheses;"
    assert error(cond, "(" * 4096).startswith("Invalid ConditionExpression: ")
    values = {f":v{i}": N(i) for i in range(101)}
    assert error(cond, f"n IN ({', '.join(values)})", values) == (
        "Invalid ConditionExpression: Too many operands for the operator or function; operator or "
        "function: IN, number of operands: 101")
    del values[":v100"]
    assert cond(f"n IN ({', '.join(values)})", values)
    deep = "a" + ".a" * 32
    assert cond(f"attribute_not_exists({deep})")
    assert error(cond, f"attribute_not_exists({deep}.a)") == \
        "Invalid ConditionExpression: The document path has too many nesting levels; nesting levels: 33"


def test_parse_is_cached_but_binding_is_per_request():
    text = "n = :v"
    first = compile_condition(text, ExpressionContext(None, {":v": N(5)}))
    second = compile_condition(text, ExpressionContext(None, {":v": N(6)}))
    assert first.evaluate(ITEM) and not second.evaluate(ITEM)
    from dynstore.api.expressions.parser import parse
    hits = parse.cache_info().hits
    compile_condition(text, ExpressionContext(None, {":v": N(6)}))
    assert parse.cache_info().hits == hits + 1


# --- updates ------------------------------------------------------------------------


def test_update_set_forms():
    out = update("SET a = :v, n = n + :one, m.a.b = m.a.b - :one, c = if_not_exists(c, :v), "
                 "s = if_not_exists(s, :v), l = list_append(:front, l)",
                 {":v": S("new"), ":one": N(1), ":front": {"L": [S("f")]}})
    assert out["a"] == S("new") and out["n"] == N(6) and out["m"]["M"]["a"]["M"]["b"] == N(2)
    assert out["c"] == S("new") and out["s"] == S("hello")
    assert out["l"]["L"][0] == S("f") and len(out["l"]["L"]) == 4
    assert ITEM["n"] == N(5) and ITEM["m"]["M"]["a"]["M"]["b"] == N(3)  # input untouched


def test_update_right_hand_sides_see_the_old_item():
    out = update("SET a = b, b = a", item={"a": S("1"), "b": S("2")})
    assert out == {"a": S("2"), "b": S("1")}


def test_update_lists():
    item = {"l": {"L": [N(0), N(1), N(2), N(3)]}}
    assert update("SET l[1] = :v", {":v": S("x")}, item=item)["l"]["L"][1] == S("x")
    assert update("SET l[10] = :v", {":v": S("x")}, item=item)["l"]["L"] == [N(0), N(1), N(2), N(3), S("x")]
    assert update("REMOVE l[0], l[2]", item=item)["l"]["L"] == [N(1), N(3)]
    assert update("REMOVE l[9]", item=item) == item
    assert update("SET l[1] = :v REMOVE l[0]", {":v": S("x")}, item=item)["l"]["L"] == [S("x"), N(2), N(3)]


def test_update_add_delete_remove():
    out = update("ADD n :one, ss :ss, newn :one, newss :ss DELETE ns :ns REMOVE s, m.s, nothing",
                 {":one": N("1.5"), ":ss": {"SS": ["y", "z"]}, ":ns": {"NS": ["2.5"]}})
    assert out["n"] == N("6.5") and out["newn"] == N("1.5")
    assert out["ss"] == {"SS": ["x", "y", "z"]} and out["newss"] == {"SS": ["y", "z"]}
    assert out["ns"] == {"NS": ["1"]}
    assert "s" not in out and out["m"]["M"] == {"a": ITEM["m"]["M"]["a"]}
    assert "ns" not in update("DELETE ns :ns", {":ns": {"NS": ["1", "2.5"]}})
    assert update("DELETE gone :ns", {":ns": {"NS": ["1"]}}) == ITEM


def test_update_numbers():
    assert update("SET n = n + :v", {":v": N("-5")})["n"] == N("0")
    assert update("SET n = :a - :b", {":a": N("0.1"), ":b": N("0.3")})["n"] == N("-0.2")
    assert update("SET n = :a + :b", {":a": N("1E+100"), ":b": N("1E+99")})["n"]["N"] == "11" + "0" * 99
    assert error(update, "SET n = :a + :b", {":a": N("9.9E+125"), ":b": N("9.9E+125")}) == \
        "Number overflow. Attempting to store a number with magnitude larger than supported range"
    assert error(update, "SET n = :a - :b", {":a": N("1.1E-130"), ":b": N("1E-130")}) == \
        "Number underflow. Attempting to store a number with magnitude smaller than supported range"
    # A result needing more than 38 digits is an overflow to DynamoDB, in range or not.
    assert error(update, "SET n = :a + :b", {":a": N("1E+40"), ":b": N("1")}) == \
        "Number overflow. Attempting to store a number with magnitude larger than supported range"
    assert error(update, "ADD n :v", {":v": N("1E+50")}) == \
        "Number overflow. Attempting to store a number with magnitude larger than supported range"


@pytest.mark.parametrize("text,values,message", [
    ("SET a = :v SET b = :v", {":v": N(1)},
     'Invalid UpdateExpression: The "SET" section can only be used once in an update expression;'),
    ("SET a = :v, a.b = :v", {":v": N(1)},
     "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one "
     "of these paths; path one: [a], path two: [a, b]"),
    ("SET a = :v REMOVE a", {":v": N(1)},
     "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one "
     "of these paths; path one: [a], path two: [a]"),
    ("SET a[1] = :v REMOVE a.b", {":v": N(1)},
     "Invalid UpdateExpression: Two document paths conflict with each other; must remove or rewrite one "
     "of these paths; path one: [a, [1]], path two: [a, b]"),
    ("SET status = :v", {":v": N(1)},
     "Invalid UpdateExpression: Attribute name is a reserved keyword; reserved keyword: status"),
    ("INVALID SYNTAX HERE", {":v": N(1)},
     'Invalid UpdateExpression: Syntax error; token: "INVALID", near: "INVALID SYNTAX"'),
    ("SET a = ", None, 'Invalid UpdateExpression: Syntax error; token: "<EOF>", near: "= "'),
    ("SET a = b +", None, 'Invalid UpdateExpression: Syntax error; token: "<EOF>", near: "+"'),
    ("SET", None, 'Invalid UpdateExpression: Syntax error; token: "<EOF>", near: "SET"'),
    ("SET a = :v", None,
     "Invalid UpdateExpression: An expression attribute value used in expression is not defined; "
     "attribute value: :v"),
    ("SET a = size(b)", None, "Invalid UpdateExpression: Invalid function name; function: size"),
    ("SET a = b + :v", {":v": S("x")},
     "Invalid UpdateExpression: Incorrect operand type for operator or function; operator or function: +, "
     "operand type: S"),
    ("SET a = list_append(b, :v)", {":v": N(1)},
     "Invalid UpdateExpression: Incorrect operand type for operator or function; operator or function: "
     "list_append, operand type: N"),
    ("SET a = if_not_exists(:v, b)", {":v": N(1)},
     "Invalid UpdateExpression: Operator or function requires a document path; operator or function: "
     "if_not_exists"),
    ("SET a = list_append(b)", None,
     "Invalid UpdateExpression: Incorrect number of operands for operator or function; operator or "
     "function: list_append, number of operands: 1"),
    ("ADD a :v", {":v": S("x")},
     "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand "
     "type: STRING"),
    ("DELETE a :v", {":v": N(1)},
     "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: DELETE, operand "
     "type: NUMBER"),
    ("", None, "Invalid UpdateExpression: The expression can not be empty;"),
])
def test_update_errors(text, values, message):
    assert error(update, text, values) == message


@pytest.mark.parametrize("text,values,message", [
    ("SET q.r = :v", {":v": N(1)}, "The document path provided in the update expression is invalid for update"),
    ("SET s.r = :v", {":v": N(1)}, "The document path provided in the update expression is invalid for update"),
    ("SET s[0] = :v", {":v": N(1)}, "The document path provided in the update expression is invalid for update"),
    ("SET l[5].x = :v", {":v": N(1)}, "The document path provided in the update expression is invalid for update"),
    ("SET a = q", None, "The provided expression refers to an attribute that does not exist in the item"),
    ("SET a = s + :v", {":v": N(1)}, "An operand in the update expression has an incorrect data type"),
    ("SET a = list_append(s, :v)", {":v": {"L": []}}, "An operand in the update expression has an incorrect data type"),
    ("ADD s :v", {":v": N(1)}, "An operand in the update expression has an incorrect data type"),
    ("ADD ss :v", {":v": {"NS": ["1"]}}, "An operand in the update expression has an incorrect data type"),
    ("DELETE s :v", {":v": {"SS": ["h"]}}, "An operand in the update expression has an incorrect data type"),
])
def test_update_runtime_errors(text, values, message):
    assert error(update, text, values) == message


# --- projections --------------------------------------------------------------------


def test_projection():
    def project(text, names=None):
        return compile_projection(text, ExpressionContext(names, None)).apply(ITEM)
    assert project("s, n, nope") == {"s": ITEM["s"], "n": ITEM["n"]}
    assert project("m.a.b, l[2].deep, l[0], l[9]") == {
        "m": {"M": {"a": {"M": {"b": N(3)}}}},
        "l": {"L": [N(1), {"M": {"deep": S("d")}}]},
    }
    assert project("#m.s", {"#m": "m"}) == {"m": {"M": {"s": S("in")}}}
    assert project("m.nope") == {}
    assert error(project, "s, s.x") == (
        "Invalid ProjectionExpression: Two document paths overlap with each other; must remove or rewrite "
        "one of these paths; path one: [s], path two: [s, x]")
    assert error(project, "l[0], l.x") == (
        "Invalid ProjectionExpression: Two document paths conflict with each other; must remove or rewrite "
        "one of these paths; path one: [l, [0]], path two: [l, x]")
    assert error(project, "!!") == 'Invalid ProjectionExpression: Syntax error; token: "!", near: "!!"'
    assert error(project, "a,") == 'Invalid ProjectionExpression: Syntax error; token: "<EOF>", near: ","'
    assert error(project, "a b") == 'Invalid ProjectionExpression: Syntax error; token: "b", near: "a b"'
    assert error(project, "a.abORt") == \
        "Invalid ProjectionExpression: Attribute name is a reserved keyword; reserved keyword: abORt"


# --- key conditions -----------------------------------------------------------------


def key(text, values, names=None, schema=("pk", "sk")):
    ctx = ExpressionContext(names, values)
    result = compile_key_condition(text, ctx, schema)
    ctx.check_unused()
    return result


def test_key_condition_forms():
    v = {":p": S("a"), ":s": S("b"), ":t": S("c")}
    assert key("pk = :p", {":p": S("a")}) == (S("a"), None, ())
    assert key("pk = :p AND sk < :s", {":p": S("a"), ":s": S("b")}) == (S("a"), "LT", (S("b"),))
    assert key(":s > sk AND pk = :p", {":p": S("a"), ":s": S("b")}) == (S("a"), "LT", (S("b"),))
    assert key("(pk = :p) AND (sk BETWEEN :s AND :t)", v) == (S("a"), "BETWEEN", (S("b"), S("c")))
    assert key("#k = :p AND begins_with(#r, :s)", {":p": S("a"), ":s": S("b")},
               {"#k": "pk", "#r": "sk"}) == (S("a"), "BEGINS_WITH", (S("b"),))
    assert key("pk = :p", {":p": N(1)}, schema=("pk", None)).partition_value == N(1)


@pytest.mark.parametrize("text,message", [
    ("sk = :s", "Query condition missed key schema element: pk"),
    ("attr1 = :s", "Query condition missed key schema element: pk"),
    ("pk = :p AND attr1 = :s", "Query condition missed key schema element: sk"),
    ("pk < :p", "Query key condition not supported"),
    ("pk = :p AND pk = :s", "Invalid KeyConditionExpression: KeyConditionExpressions must only contain one condition per key"),
    ("pk = :p OR sk = :s", "Invalid KeyConditionExpression: Invalid operator used in KeyConditionExpression: OR"),
    ("pk = :p AND sk <> :s", "Invalid KeyConditionExpression: Invalid operator used in KeyConditionExpression: <>"),
    ("pk = :p AND sk IN (:s)", "Invalid KeyConditionExpression: Invalid operator used in KeyConditionExpression: IN"),
    ("pk = :p AND NOT sk = :s", "Invalid KeyConditionExpression: Invalid operator used in KeyConditionExpression: NOT"),
    ("pk = :p AND contains(sk, :s)",
     "Invalid KeyConditionExpression: Invalid operator used in KeyConditionExpression: contains"),
    ("pk = :p AND size(sk) = :s", "Invalid KeyConditionExpression: KeyConditionExpressions cannot contain nested operations"),
    ("pk = :p AND sk.x = :s",
     "Invalid KeyConditionExpression: KeyConditionExpressions cannot have conditions on nested attributes"),
    ("pk = :p AND sk = pk",
     "Invalid KeyConditionExpression: Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition"),
    ("pk = :p AND :s = :p",
     "Invalid KeyConditionExpression: Invalid condition in KeyConditionExpression: No key attribute specified"),
    ("pk = :p AND begins_with(:s, sk)",
     "Invalid KeyConditionExpression: Invalid condition in KeyConditionExpression: begins_with operator must have the key attribute as its first operand"),
    ("", "Invalid KeyConditionExpression: The expression can not be empty;"),
    ("()", 'Invalid KeyConditionExpression: Syntax error; token: ")", near: "()"'),
])
def test_key_condition_errors(text, message):
    ctx = ExpressionContext(None, {":p": S("a"), ":s": S("b")})
    assert error(compile_key_condition, text, ctx, ("pk", "sk")) == message


# --- legacy forms -------------------------------------------------------------------


def test_expected():
    assert expected({"n": {"Value": N(5)}, "q": {"Exists": False}}).evaluate(ITEM)
    assert not expected({"n": {"Value": N(6)}, "q": {"Exists": False}}).evaluate(ITEM)
    assert expected({"n": {"Value": N(6)}, "q": {"Exists": False}}, "OR").evaluate(ITEM)
    checks = [
        ("EQ", [N(5)], True), ("NE", [N(5)], False), ("LT", [N(6)], True), ("GE", [N(6)], False),
        ("NOT_NULL", [], True), ("NULL", [], False), ("IN", [N(1), N(5)], True),
        ("BETWEEN", [N(1), N(5)], True),
    ]
    for op, values, want in checks:
        got = expected({"n": {"ComparisonOperator": op, "AttributeValueList": list(values)}}).evaluate(ITEM)
        assert got is want, op
    assert expected({"s": {"ComparisonOperator": "BEGINS_WITH", "Value": S("he")}}).evaluate(ITEM)
    assert expected({"ss": {"ComparisonOperator": "CONTAINS", "AttributeValueList": [S("x")]}}).evaluate(ITEM)
    assert not expected({"ss": {"ComparisonOperator": "NOT_CONTAINS", "AttributeValueList": [S("x")]}}).evaluate(ITEM)
    assert not expected({"q": {"ComparisonOperator": "NOT_CONTAINS", "AttributeValueList": [S("x")]}}).evaluate(ITEM)
    assert expected({"q": {"ComparisonOperator": "NE", "AttributeValueList": [S("x")]}}).evaluate(ITEM)


@pytest.mark.parametrize("conditions,message", [
    ({"a": {"Exists": True}}, "One or more parameter values were invalid: Value must be provided when Exists is true for Attribute: a"),
    ({"a": {}}, "One or more parameter values were invalid: Value must be provided when Exists is null for Attribute: a"),
    ({"a": {"Exists": False, "Value": N(1)}}, "One or more parameter values were invalid: Value cannot be used when Exists is false for Attribute: a"),
    ({"a": {"ComparisonOperator": "EQ", "Exists": True}}, "One or more parameter values were invalid: Exists and ComparisonOperator cannot be used together for Attribute: a"),
    ({"a": {"AttributeValueList": [N(1)]}}, "One or more parameter values were invalid: AttributeValueList can only be used with a ComparisonOperator for Attribute: a"),
    ({"a": {"ComparisonOperator": "EQ"}}, "One or more parameter values were invalid: Value or AttributeValueList must be used with ComparisonOperator: EQ for Attribute: a"),
    ({"a": {"ComparisonOperator": "EQ", "AttributeValueList": [N(1), N(2)]}}, "One or more parameter values were invalid: Invalid number of argument(s) for the EQ ComparisonOperator"),
    ({"a": {"ComparisonOperator": "IN", "AttributeValueList": [N(1), S("2")]}}, "One or more parameter values were invalid: AttributeValues inside AttributeValueList must be of same type"),
    ({"a": {"ComparisonOperator": "LT", "AttributeValueList": [{"SS": ["x"]}]}}, "One or more parameter values were invalid: ComparisonOperator LT is not valid for SS AttributeValue type"),
    ({"a": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [N(5), N(1)]}}, "The BETWEEN condition was provided a range where the lower bound is greater than the upper bound"),
])
def test_expected_errors(conditions, message):
    assert error(expected, conditions) == message


def test_filters():
    assert query_filter({"n": {"ComparisonOperator": "GT", "AttributeValueList": [N(1)]}}).evaluate(ITEM)
    assert scan_filter({"n": {"ComparisonOperator": "LT", "AttributeValueList": [N(1)]},
                        "s": {"ComparisonOperator": "NOT_NULL"}}, "OR").evaluate(ITEM)


def test_attribute_updates():
    out = attribute_updates({
        "a": {"Value": S("x")},
        "n": {"Action": "ADD", "Value": N(2)},
        "l": {"Action": "ADD", "Value": {"L": [S("y")]}},
        "nl": {"Action": "ADD", "Value": {"L": [S("y")]}},
        "ss": {"Action": "DELETE", "Value": {"SS": ["x"]}},
        "s": {"Action": "DELETE"},
    }).apply(ITEM)
    assert out["a"] == S("x") and out["n"] == N(7) and out["ss"] == {"SS": ["y"]} and "s" not in out
    assert out["l"]["L"][-1] == S("y") and out["nl"] == {"L": [S("y")]}
    prefix = "One or more parameter values were invalid: "
    assert error(attribute_updates, {"a": {"Action": "PUT"}}) == \
        prefix + "Only DELETE action is allowed when no attribute value is specified"
    assert error(attribute_updates, {"a": {"Action": "DELETE", "Value": S("x")}}) == \
        prefix + "DELETE action with value is not supported for the type S"
    assert error(attribute_updates, {"a": {"Action": "ADD", "Value": S("x")}}) == \
        prefix + "ADD action is not supported for the type S"


def test_attribute_updates_check_values_and_word_type_mismatches_their_own_way():
    prefix = "One or more parameter values were invalid: "
    # The Value is an AttributeValue like any other: an empty set is refused before anything runs.
    assert error(attribute_updates, {"a": {"Action": "PUT", "Value": {"NS": []}}}) == \
        prefix + "An number set  may not be empty"
    # A set of the wrong kind for the stored attribute is a "type mismatch" in the legacy form...
    mismatches = [
        ({"Action": "ADD", "Value": {"SS": ["x"]}}, "ns"),
        ({"Action": "ADD", "Value": N(1)}, "ss"),
        ({"Action": "ADD", "Value": {"L": [N(1)]}}, "n"),
        ({"Action": "DELETE", "Value": {"NS": ["1"]}}, "s"),
    ]
    for update, name in mismatches:
        assert error(attribute_updates({name: update}).apply, ITEM) == prefix + "Type mismatch for attribute to update"
    # (UpdateExpression keeps its own wording for the same mistake: test_update_runtime_errors.)


def test_update_that_only_removes_is_marked_so():
    ctx = ExpressionContext(None, {":v": {"SS": ["x"]}, ":n": N(1)})
    assert compile_update("REMOVE a, b DELETE ss :v", ctx).only_removes
    assert not compile_update("REMOVE a ADD n :n", ExpressionContext(None, {":n": N(1)})).only_removes
    assert not attribute_updates({}).only_removes
    assert attribute_updates({"a": {"Action": "DELETE"}}).only_removes


def test_attributes_to_get_and_key_conditions():
    assert attributes_to_get(["s", "nope", "n"]).apply(ITEM) == {"s": ITEM["s"], "n": ITEM["n"]}
    assert error(attributes_to_get, ["s", "s"]) == \
        "One or more parameter values were invalid: Duplicate value in attribute name: s"
    got = key_conditions({"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [S("a")]},
                          "sk": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [S("b")]}},
                         ("pk", "sk"))
    assert got == (S("a"), "BEGINS_WITH", (S("b"),))
    assert error(key_conditions, {"pk": {"ComparisonOperator": "NE", "AttributeValueList": [S("a")]}},
                 ("pk", None)) == "Attempted conditional constraint is not an indexable operation"
    assert error(key_conditions, {"sk": {"ComparisonOperator": "EQ", "AttributeValueList": [S("a")]}},
                 ("pk", "sk")) == "Query condition missed key schema element: pk"


def test_mixing_parameters():
    assert error(check_parameters, "PutItem", {"Expected": {}, "ConditionExpression": "x"}) == (
        "Can not use both expression and non-expression parameters in the same request: "
        "Non-expression parameters: {Expected} Expression parameters: {ConditionExpression}")
    assert error(check_parameters, "UpdateItem", {"AttributeUpdates": {}, "UpdateExpression": "x"}) == (
        "Can not use both expression and non-expression parameters in the same request: "
        "Non-expression parameters: {AttributeUpdates} Expression parameters: {UpdateExpression}")
    assert error(check_parameters, "Query", {"QueryFilter": {}, "KeyConditionExpression": "x"}) == (
        "Can not use both expression and non-expression parameters in the same request: "
        "Non-expression parameters: {QueryFilter} Expression parameters: {KeyConditionExpression}")
    check_parameters("Query", {"KeyConditions": {}, "FilterExpression": "x"})
    assert error(check_parameters, "GetItem", {"ExpressionAttributeNames": {"#a": "a"}}) == \
        "ExpressionAttributeNames can only be specified when using expressions"
    assert error(check_parameters, "PutItem", {"ExpressionAttributeValues": {":a": N(1)}}) == \
        "ExpressionAttributeValues can only be specified when using expressions: ConditionExpression is null"


# --- behaviours checked against DynamoDB's own results -------------------------------


def test_ordering_a_request_value_that_has_no_order_is_the_requests_error():
    for text in ("n < :v", ":v >= n", "n BETWEEN :v AND :w", ":v BETWEEN n AND n"):
        message = error(cond, text, {":v": {"L": [N(1)]}, ":w": {"L": [N(2)]}} if ":w" in text
                        else {":v": {"L": [N(1)]}})
        assert message.startswith("Invalid ConditionExpression: Incorrect operand type for operator or "
                                  "function; operator or function: "), message
        assert message.endswith("operand type: L"), message
    # The same list read from the item only makes the comparison false.
    assert cond("l < :v", {":v": N(1)}) is False
    assert cond("n BETWEEN l AND :v", {":v": N(9)}) is False


def test_attribute_type_accepts_a_value_as_its_first_operand():
    assert cond("attribute_type(:v, :t)", {":v": N(0), ":t": S("N")}) is True
    assert cond("attribute_type(:v, :t)", {":v": N(0), ":t": S("S")}) is False
    assert error(cond, "attribute_exists(:v)", {":v": N(0)}) == (
        "Invalid ConditionExpression: Operator or function requires a document path; operator or function: "
        "attribute_exists")


def test_update_functions_are_not_allowed_in_conditions():
    for name in ("if_not_exists", "list_append"):
        assert error(cond, f"{name}(s, s) = :v", {":v": S("x")}, kind="FilterExpression") == (
            "Invalid FilterExpression: The function is not allowed to be used this way in an expression; "
            f"function: {name}")
    assert error(cond, "dog(s) = :v", {":v": S("x")}) == \
        "Invalid ConditionExpression: Invalid function name; function: dog"


def test_condition_reports_the_top_level_attributes_it_reads():
    ctx = ExpressionContext({"#k": "key"}, {":v": N(1)})
    condition = compile_condition("m.a.b < :v OR (attribute_exists(#k) AND size(l[1]) = :v)", ctx)
    assert condition.attributes == {"m", "key", "l"}


def test_list_append_may_not_take_list_append():
    values = {":a": {"L": [S("a")]}, ":b": {"L": [S("b")]}, ":c": {"L": [S("c")]}}
    assert error(update, "SET x = list_append(list_append(:a, :b), :c)", values) == (
        "Invalid UpdateExpression: The function is not allowed to be used this way in an expression; "
        "function: list_append")
    # if_not_exists() inside list_append() is the usual way to append to a list that may be missing.
    out = update("SET x = list_append(if_not_exists(x, :a), :b)", {":a": {"L": [S("a")]}, ":b": {"L": [S("b")]}})
    assert out["x"] == {"L": [S("a"), S("b")]}


def test_set_past_the_end_appends_in_index_order():
    item = {"id": S("k"), "l": {"L": [S("0"), S("1"), S("2")]}}
    values = {":a": S("a"), ":b": S("b"), ":c": S("c"), ":d": S("d")}
    out = update("SET l[84] = :a, l[37] = :b, l[17] = :c, l[50] = :d", values, item=item)
    assert out["l"] == {"L": [S("0"), S("1"), S("2"), S("c"), S("b"), S("d"), S("a")]}
    # Removals still name old positions when appends happen in the same update.
    out = update("REMOVE l[0] SET l[9] = :a, l[1] = :b", {":a": S("a"), ":b": S("b")}, item=item)
    assert out["l"] == {"L": [S("b"), S("2"), S("a")]}
    assert item["l"] == {"L": [S("0"), S("1"), S("2")]}
