"""Cost of conditions per request and per item: parse + bind + evaluate with the parse
cache cold and warm, and evaluation alone (what a Scan filter pays per item).

    pytest bench/bench_expressions.py --benchmark-only -p no:cacheprovider
"""
from dynstore.api.expressions import ExpressionContext, compile_condition, compile_update
from dynstore.api.expressions.parser import parse

CONDITION = ("attribute_exists(#id) AND #st = :active AND (price BETWEEN :lo AND :hi "
             "OR contains(tags, :tag)) AND size(#n) > :zero")
NAMES = {"#id": "id", "#st": "status", "#n": "name"}
VALUES = {":active": {"S": "active"}, ":lo": {"N": "10"}, ":hi": {"N": "99.5"},
          ":tag": {"S": "sale"}, ":zero": {"N": "0"}}
ITEM = {"id": {"S": "item-1"}, "status": {"S": "active"}, "price": {"N": "42.5"},
        "tags": {"SS": ["new", "sale"]}, "name": {"S": "widget"}}
UPDATE = "SET price = price + :d, #n = :name, tags = if_not_exists(tags, :empty) ADD hits :one"
UPDATE_VALUES = {":d": {"N": "1"}, ":name": {"S": "gadget"}, ":empty": {"SS": ["x"]}, ":one": {"N": "1"}}


def run_condition():
    ctx = ExpressionContext(NAMES, VALUES)
    result = compile_condition(CONDITION, ctx).evaluate(ITEM)
    ctx.check_unused()
    return result


def test_condition_uncached(benchmark):
    def uncached():
        parse.cache_clear()
        return run_condition()
    assert benchmark(uncached)


def test_condition_cached(benchmark):
    run_condition()
    assert benchmark(run_condition)


def test_condition_evaluate_only(benchmark):
    condition = compile_condition(CONDITION, ExpressionContext(NAMES, VALUES))
    assert benchmark(condition.evaluate, ITEM)


def test_update_cached(benchmark):
    def run():
        ctx = ExpressionContext({"#n": "name"}, UPDATE_VALUES)
        return compile_update(UPDATE, ctx).apply(ITEM)
    run()
    assert benchmark(run)["hits"] == {"N": "1"}
