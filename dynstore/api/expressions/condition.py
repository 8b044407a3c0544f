"""Conditions (ConditionExpression, FilterExpression, legacy Expected/QueryFilter/ScanFilter)
bound to one request and turned into a predicate over items.

Semantics are DynamoDB's: a comparison between values of different types, or with a
missing attribute, is false rather than an error (``<>`` is then true); ``<``, ``<=``, ``>``,
``>=`` and BETWEEN order only numbers, strings and binaries; functions of a missing
attribute are false, except attribute_not_exists. Errors that the request's values decide
(a literal of the wrong type for a function, BETWEEN bounds out of order) are raised when
binding, before any item is read, in DynamoDB's order: operand counts, distinct operands,
operand types.
"""
from __future__ import annotations

from dynstore.api.expressions import operands
from dynstore.api.expressions.ast import (
    And, Between, Call, Compare, Group, In, Literal, Not, Or, Path, ValueRef, unwrap,
)
from dynstore.api.expressions.bind import Binder, path_text
from dynstore.api.expressions.parser import CONDITION_FUNCTIONS

ATTRIBUTE_TYPES = ("S", "N", "B", "NULL", "SS", "BOOL", "L", "BS", "NS", "M")
_TYPE_LIST = "{B,NULL,SS,BOOL,L,BS,N,NS,S,M}"


class Condition:
    """A bound condition: ``evaluate(item) -> bool``; ``attributes`` are the top-level
    attribute names it reads (a Query refuses filters that read key attributes)."""

    __slots__ = ("evaluate", "attributes")

    def __init__(self, evaluate, attributes: frozenset = frozenset()):
        self.evaluate = evaluate
        self.attributes = attributes


class ConditionBinder(Binder):
    __slots__ = ("attributes",)

    def __init__(self, kind: str, names: dict, values: dict):
        super().__init__(kind, names, values)
        self.attributes = set()

    def path(self, node: Path) -> tuple:
        path = super().path(node)
        self.attributes.add(path[0])
        return path

    # --- operands: (getter(item) -> value or None, static type or None) -----------------
    def operand(self, node):
        node = unwrap(node)
        kind = type(node)
        if kind is Path:
            path = self.path(node)
            if len(path) == 1:
                name = path[0]
                return (lambda item: item.get(name)), None
            return (lambda item: operands.get_path(item, path)), None
        if kind is ValueRef or kind is Literal:
            value = self.value(node)
            return (lambda item: value), operands.type_of(value)
        assert kind is Call and node.name == "size", node
        self.check_call(node)
        get = self.operand(node.args[0])[0]

        def size(item):
            value = get(item)
            n = None if value is None else operands.size(value)
            return None if n is None else {"N": str(n)}
        return size, "N"

    def static_type(self, node):
        node = unwrap(node)
        if type(node) is Path:
            return None
        if type(node) is Call:
            return "N"
        return operands.type_of(self.value(node))

    # --- checks -------------------------------------------------------------------------
    def check_distinct(self, operator: str, first, second) -> None:
        first, second = unwrap(first), unwrap(second)
        if type(first) is Path and type(second) is Path:
            path = self.path(first)
            if path == self.path(second):
                raise self.error("The first operand must be distinct from the remaining operands "
                                 f"for this operator or function; operator: {operator}, "
                                 f"first operand: {path_text(path)}")

    def check_call(self, node: Call) -> None:
        name, args = node.name, node.args
        if len(args) != CONDITION_FUNCTIONS[name]:
            raise self.error("Incorrect number of operands for operator or function; operator or "
                             f"function: {name}, number of operands: {len(args)}")
        if len(args) == 2:
            self.check_distinct(name, *args)
        # attribute_type() also accepts a value as its first operand; the other two do not.
        if name in ("attribute_exists", "attribute_not_exists") and type(unwrap(args[0])) is not Path:
            raise self.error(f"Operator or function requires a document path; operator or function: {name}")
        if name == "begins_with":
            for arg in args:
                self.check_type(name, self.static_type(arg), ("S", "B"))
        elif name == "size":
            kind = self.static_type(args[0])
            if kind in ("N", "BOOL", "NULL"):
                self.type_error(name, kind)
        elif name == "attribute_type":
            kind = self.static_type(args[1])
            if kind != "S":
                self.type_error(name, kind or "{NS,SS,L,BS,N,M,B,BOOL,NULL,S}")
            wanted = self.value(unwrap(args[1]))["S"]
            if wanted not in ATTRIBUTE_TYPES:
                raise self.error(f"Invalid attribute type name found; type: {wanted}, "
                                 f"valid types: {_TYPE_LIST}")

    def check_type(self, name: str, kind, allowed) -> None:
        if kind is not None and kind not in allowed:
            self.type_error(name, kind)

    def type_error(self, name: str, kind: str):
        raise self.error("Incorrect operand type for operator or function; operator or function: "
                         f"{name}, operand type: {kind}")

    def check_orderable(self, operator: str, nodes) -> None:
        """A value of the request that cannot be ordered is the request's error; one read
        from the item only makes the comparison false."""
        for node in nodes:
            if type(unwrap(node)) is not Path:
                self.check_type(operator, self.static_type(node), ("N", "S", "B"))

    def check_between(self, low, high) -> None:
        low, high = unwrap(low), unwrap(high)
        if type(low) is Path or type(high) is Path or type(low) is Call or type(high) is Call:
            return
        a, b = self.value(low), self.value(high)
        ta, tb = operands.type_of(a), operands.type_of(b)
        bounds = f"lower bound operand: AttributeValue: {{{ta}:{a[ta]}}}, " \
                 f"upper bound operand: AttributeValue: {{{tb}:{b[tb]}}}"
        if ta != tb:
            raise self.error(f"The BETWEEN operator requires same data type for lower and upper bounds; {bounds}")
        ka, kb = operands.ordering_key(a), operands.ordering_key(b)
        if ka is not None and kb is not None and ka[1] > kb[1]:
            raise self.error("The BETWEEN operator requires upper bound to be greater than or "
                             f"equal to lower bound; {bounds}")

    # --- conditions -> predicates -------------------------------------------------------
    def condition(self, node):
        kind = type(node)
        if kind is Group:
            return self.condition(node.inner)
        if kind is And:
            return _all([self.condition(item) for item in node.items])
        if kind is Or:
            return _any([self.condition(item) for item in node.items])
        if kind is Not:
            inner = self.condition(node.item)
            return lambda item: not inner(item)
        if kind is Compare:
            self.check_distinct(node.op, node.left, node.right)
            if node.op in _ORDER:
                self.check_orderable(node.op, (node.left, node.right))
            return _compare(node.op, self.operand(node.left)[0], self.operand(node.right)[0])
        if kind is Between:
            get = self.operand(node.operand)[0]
            get_low, get_high = self.operand(node.low)[0], self.operand(node.high)[0]
            self.check_orderable("BETWEEN", (node.operand, node.low, node.high))
            self.check_between(node.low, node.high)
            return _between(get, get_low, get_high)
        if kind is In:
            get = self.operand(node.operand)[0]
            choices = [self.operand(choice)[0] for choice in node.choices]
            return _in(get, choices)
        assert kind is Call, node
        return self.function(node)

    def function(self, node: Call):
        self.check_call(node)
        name = node.name
        first = self.operand(node.args[0])[0]
        if name == "attribute_exists":
            return lambda item: first(item) is not None
        if name == "attribute_not_exists":
            return lambda item: first(item) is None
        second = self.operand(node.args[1])[0]
        if name == "attribute_type":
            wanted = self.value(unwrap(node.args[1]))["S"]

            def attribute_type(item):
                value = first(item)
                return value is not None and wanted in value
            return attribute_type
        test = operands.begins_with if name == "begins_with" else operands.contains

        def function(item):
            a = first(item)
            if a is None:
                return False
            b = second(item)
            return b is not None and test(a, b)
        return function


def _all(predicates):
    if len(predicates) == 2:
        p, q = predicates
        return lambda item: p(item) and q(item)
    return lambda item: all(p(item) for p in predicates)


def _any(predicates):
    if len(predicates) == 2:
        p, q = predicates
        return lambda item: p(item) or q(item)
    return lambda item: any(p(item) for p in predicates)


def _compare(op: str, left, right):
    if op == "=":
        def eq(item):
            a = left(item)
            if a is None:
                return False
            b = right(item)
            return b is not None and operands.equal(a, b)
        return eq
    if op == "<>":
        def ne(item):
            a = left(item)
            if a is None:
                return True
            b = right(item)
            return b is None or not operands.equal(a, b)
        return ne
    test = _ORDER[op]

    def order(item):
        a = left(item)
        if a is None:
            return False
        b = right(item)
        if b is None:
            return False
        ka, kb = operands.ordering_key(a), operands.ordering_key(b)
        return ka is not None and kb is not None and ka[0] == kb[0] and test(ka[1], kb[1])
    return order


_ORDER = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _between(get, get_low, get_high):
    def between(item):
        value, low, high = get(item), get_low(item), get_high(item)
        if value is None or low is None or high is None:
            return False
        k, lo, hi = operands.ordering_key(value), operands.ordering_key(low), operands.ordering_key(high)
        return (k is not None and lo is not None and hi is not None
                and k[0] == lo[0] == hi[0] and lo[1] <= k[1] <= hi[1])
    return between


def _in(get, choices):
    def in_(item):
        value = get(item)
        if value is None:
            return False
        for choice in choices:
            other = choice(item)
            if other is not None and operands.equal(value, other):
                return True
        return False
    return in_


def bind_condition(tree, kind: str, names: dict, values: dict) -> Condition:
    binder = ConditionBinder(kind, names, values)
    evaluate = binder.condition(tree)
    return Condition(evaluate, frozenset(binder.attributes))
