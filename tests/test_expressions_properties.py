"""Property tests of the expression language: no input text makes it fail other than with
a ValidationException, and updates agree with a plain model of their semantics.
Failures print a reproduction blob (print_blob) to rerun the exact case."""
import copy
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynstore.api.errors import ValidationException
from dynstore.api.expressions import (
    ExpressionContext, compile_condition, compile_key_condition, compile_projection, compile_update,
)

PROFILE = settings(max_examples=300, deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["a", "b", "#n", ":v", ":w", "(", ")", "[", "]", "0", "1", ".", ",", "=", "<>", "<", "<=",
          ">", ">=", "+", "-", "AND", "OR", "NOT", "BETWEEN", "IN", "SET", "REMOVE", "ADD", "DELETE",
          "size", "contains", "begins_with", "attribute_exists", "if_not_exists", "list_append",
          "status", "!", "$", " ", "\u00e9"]
VALUES = {":v": {"N": "1"}, ":w": {"L": [{"S": "x"}]}}
ITEM = {"a": {"N": "1"}, "b": {"L": [{"N": "2"}]}, "n": {"M": {"a": {"S": "s"}}}}


def attempt(compile_, text):
    ctx = ExpressionContext({"#n": "n"}, dict(VALUES))
    try:
        compiled = compile_(text, ctx)
    except ValidationException:
        return
    # Whatever compiles must also run on an item without crashing.
    try:
        if hasattr(compiled, "evaluate"):
            assert compiled.evaluate(ITEM) in (True, False)
        elif hasattr(compiled, "apply"):
            compiled.apply(ITEM)
    except ValidationException:
        pass


@PROFILE
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_token_soup_only_raises_validation_errors(text):
    attempt(compile_condition, text)
    attempt(compile_update, text)
    attempt(compile_projection, text)
    attempt(lambda t, c: compile_key_condition(t, c, ("a", "b")), text)


@PROFILE
@given(st.text(max_size=60))
def test_arbitrary_text_only_raises_validation_errors(text):
    attempt(compile_condition, text)
    attempt(compile_update, text)
    attempt(compile_projection, text)


scalars = st.one_of(
    st.integers(-10**6, 10**6).map(lambda n: {"N": str(n)}),
    st.text(max_size=5).map(lambda s: {"S": s}),
    st.booleans().map(lambda b: {"BOOL": b}),
)
names = st.sampled_from(["a", "b", "c", "d", "e"])
items = st.dictionaries(names, scalars, max_size=5)


@PROFILE
@given(items, st.dictionaries(names, st.one_of(st.none(), scalars), min_size=1, max_size=5))
def test_set_and_remove_match_a_dict_model(item, changes):
    """SET x = :vi for values, REMOVE x for None; the input item is never modified."""
    sets = [(name, value) for name, value in changes.items() if value is not None]
    removes = [name for name, value in changes.items() if value is None]
    clauses = []
    if sets:
        clauses.append("SET " + ", ".join(f"{name} = :v{i}" for i, (name, _) in enumerate(sets)))
    if removes:
        clauses.append("REMOVE " + ", ".join(removes))
    values = {f":v{i}": value for i, (_, value) in enumerate(sets)} or None
    before = copy.deepcopy(item)
    out = compile_update(" ".join(clauses), ExpressionContext(None, values)).apply(item)
    model = dict(item)
    model.update(sets)
    for name in removes:
        model.pop(name, None)
    assert out == model
    assert item == before


@PROFILE
@given(st.integers(-10**30, 10**30), st.integers(-10**30, 10**30))
def test_add_and_arithmetic_are_exact(start, delta):
    item = {"n": {"N": str(start)}, "m": {"N": str(start)}}
    values = {":d": {"N": str(delta)}}
    out = compile_update("ADD n :d SET m = m - :d", ExpressionContext(None, values)).apply(item)
    assert Decimal(out["n"]["N"]) == start + delta
    assert Decimal(out["m"]["N"]) == start - delta


@PROFILE
@given(scalars, scalars)
def test_comparisons_agree_with_python(left, right):
    item = {"x": left}
    ctx = ExpressionContext(None, {":v": right})

    def check(op):
        return compile_condition(f"x {op} :v", ExpressionContext(None, {":v": right})).evaluate(item)
    (kind_l, value_l), (kind_r, value_r) = next(iter(left.items())), next(iter(right.items()))
    same = kind_l == kind_r
    if same and kind_l == "N":
        value_l, value_r = Decimal(value_l), Decimal(value_r)
    assert check("=") == (same and value_l == value_r)
    assert check("<>") == (not (same and value_l == value_r))
    if kind_r not in ("N", "S", "B"):
        # A request value that has no order cannot be ordered against anything.
        for op in ("<", ">="):
            with pytest.raises(ValidationException, match="Incorrect operand type"):
                check(op)
    else:
        ordered = same and kind_l in ("N", "S")
        assert check("<") == (ordered and value_l < value_r)
        assert check(">=") == (ordered and value_l >= value_r)
    assert compile_condition("x = :v", ctx).evaluate(item) == check("=")
