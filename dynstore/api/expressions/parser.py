"""Recursive-descent parsers for DynamoDB's condition, update and projection grammars.

    condition  := or
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | primary
    primary    := "(" or ")" | operand [comparator operand
                                       | "BETWEEN" operand "AND" operand
                                       | "IN" "(" operand ("," operand)* ")"]
    operand    := path | :value | function "(" operand ("," operand)* ")" | "(" operand ")"
    path       := element ("." element | "[" digits "]")*      element := identifier | #name
    update     := (("SET" | "REMOVE" | "ADD" | "DELETE") action ("," action)*)+
    projection := path ("," path)*

A parenthesised operand and a parenthesised condition both start with "(", so primary
parses the inside as a condition that may end early on a bare operand, and decides once it
sees what follows the ")".

Errors come in DynamoDB's order: the expression's size before anything, then syntax
errors as met, then (once the whole text parsed) redundant parentheses, unknown
functions, misused functions and reserved words for conditions; reserved words, unknown
functions and repeated clauses for updates. Errors that depend on the request's
placeholders are found when the tree is bound (condition.py, update.py).

Nesting depth is bounded (EXPRESSION_NESTING_MAX) and the interpreter's recursion limit
is raised for the duration of a parse by enough for that depth, so no text of the
allowed size can exhaust the stack.
"""
from __future__ import annotations

import sys
from functools import lru_cache

from dynstore import limits
from dynstore.api.expressions.ast import (
    Action, And, Arith, Between, Call, Compare, Group, In, NameRef, Not, Or, Parsed, Path,
    ValueRef, unwrap,
)
from dynstore.api.expressions.lexer import (
    EOF, IDENT, NAME, NUMBER, PUNCT, VALUE, invalid, syntax_error, tokenize,
)
from dynstore.api.expressions.reserved import RESERVED_WORDS

CONDITION = "condition"
UPDATE = "update"
PROJECTION = "projection"

_KEYWORDS = {
    CONDITION: frozenset({"AND", "OR", "NOT", "BETWEEN", "IN"}),
    UPDATE: frozenset({"SET", "REMOVE", "ADD", "DELETE"}),
    PROJECTION: frozenset(),
}
_COMPARATORS = frozenset({"=", "<>", "<", "<=", ">", ">="})

# Function name -> number of operands.
CONDITION_FUNCTIONS = {
    "attribute_exists": 1,
    "attribute_not_exists": 1,
    "attribute_type": 2,
    "begins_with": 2,
    "contains": 2,
    "size": 1,
}
UPDATE_FUNCTIONS = {"if_not_exists": 2, "list_append": 2}

_DEFERRED_ORDER = {
    CONDITION: ("parens", "function", "misused", "reserved"),
    UPDATE: ("reserved", "function", "section"),
    PROJECTION: ("reserved",),
}
# Python frames one nesting level can take: primary -> or -> and -> not -> primary for a
# parenthesised condition, fewer for operands and calls.
_FRAMES_PER_LEVEL = 6


class _Bare:
    """An operand found where a condition was being parsed, inside parentheses."""

    __slots__ = ("operand",)

    def __init__(self, operand):
        self.operand = operand


class _Parser:
    def __init__(self, grammar: str, kind: str, text: str):
        self.grammar = grammar
        self.kind = kind
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.keywords = _KEYWORDS[grammar]
        self.functions = CONDITION_FUNCTIONS if grammar == CONDITION else UPDATE_FUNCTIONS
        self.operators = 0
        self.depth = 0
        self.deferred = {}  # error category -> first message of that category
        self.refs = {}  # placeholders in order of first use (a dict as an ordered set)

    # --- tokens ---------------------------------------------------------------------
    def peek(self):
        return self.tokens[self.pos]

    def fail(self):
        raise syntax_error(self.kind, self.text, self.tokens, self.pos)

    def at(self, text: str) -> bool:
        token = self.tokens[self.pos]
        return token.kind == PUNCT and token.text == text

    def at_keyword(self, word: str | None = None) -> bool:
        token = self.tokens[self.pos]
        if token.kind != IDENT:
            return False
        upper = token.text.upper()
        return upper in self.keywords and (word is None or upper == word)

    def expect(self, text: str) -> None:
        if not self.at(text):
            self.fail()
        self.pos += 1

    def end(self) -> None:
        if self.peek().kind != EOF:
            self.fail()

    def defer(self, category: str, message: str) -> None:
        self.deferred.setdefault(category, message)

    def count_operator(self) -> None:
        self.operators += 1
        if self.operators > limits.EXPRESSION_OPERATORS_MAX:
            raise invalid(self.kind, "The expression contains too many operators; "
                                     f"operator count: {self.operators}")

    def enter(self) -> None:
        """Called on an opening parenthesis, before consuming it."""
        self.depth += 1
        if self.depth > limits.EXPRESSION_NESTING_MAX:
            if self.tokens[self.pos - 1].text == "(":
                raise invalid(self.kind, "The expression has redundant parentheses;")
            self.fail()
        self.pos += 1

    def leave(self) -> None:
        self.expect(")")
        self.depth -= 1

    # --- shared pieces ----------------------------------------------------------------
    def path(self) -> Path:
        elements = [self.path_element()]
        while True:
            if self.at("."):
                self.pos += 1
                elements.append(self.path_element())
            elif self.at("["):
                self.pos += 1
                token = self.peek()
                if token.kind != NUMBER:
                    self.fail()
                self.pos += 1
                self.expect("]")
                elements.append(int(token.text))
            else:
                break
        levels = len(elements) - 1
        if levels > limits.EXPRESSION_PATH_DEPTH_MAX:
            raise invalid(self.kind, "The document path has too many nesting levels; "
                                     f"nesting levels: {levels}")
        return Path(tuple(elements))

    def path_element(self):
        token = self.peek()
        if token.kind == NAME:
            self.pos += 1
            ref = NameRef(token.text)
            self.refs[ref] = None
            return ref
        if token.kind == IDENT and not self.at_keyword():
            self.pos += 1
            if token.text.upper() in RESERVED_WORDS:
                self.defer("reserved", "Attribute name is a reserved keyword; "
                                       f"reserved keyword: {token.text}")
            return token.text
        self.fail()

    def operand(self):
        token = self.peek()
        if token.kind == IDENT and not self.at_keyword():
            following = self.tokens[self.pos + 1]
            if self.grammar != PROJECTION and following.kind == PUNCT and following.text == "(":
                return self.call()
            return self.path()
        if token.kind == NAME:
            return self.path()
        if token.kind == VALUE:
            self.pos += 1
            self.refs[token.text] = None
            return ValueRef(token.text)
        if token.kind == PUNCT and token.text == "(":
            self.enter()
            inner = self.set_value() if self.grammar == UPDATE else self.operand()
            self.leave()
            return self.group(inner)
        self.fail()

    def call(self) -> Call:
        name = self.peek().text
        self.pos += 1
        self.enter()
        args = [self.operand()]
        while self.at(","):
            self.pos += 1
            args.append(self.operand())
        self.leave()
        if name not in self.functions:
            if self.grammar == CONDITION and name in UPDATE_FUNCTIONS:
                self.defer("function", "The function is not allowed to be used this way in an "
                                       f"expression; function: {name}")
            else:
                self.defer("function", f"Invalid function name; function: {name}")
        for arg in args:
            self.check_operand(arg)
        return Call(name, tuple(args))

    def group(self, inner) -> Group:
        if type(inner) is Group:
            self.defer("parens", "The expression has redundant parentheses;")
        return Group(inner)

    def check_operand(self, node) -> None:
        """Condition functions other than size() yield no value, so cannot be operands."""
        core = unwrap(node)
        if self.grammar == CONDITION and type(core) is Call and core.name != "size":
            self.defer("misused", "The function is not allowed to be used this way in an "
                                  f"expression; function: {core.name}")

    # --- conditions -------------------------------------------------------------------
    def condition(self):
        node = self.or_(False)
        self.end()
        return node

    def as_condition(self, node):
        """``node`` is followed by AND/OR: it must be a condition, not a bare operand."""
        if type(node) is _Bare:
            if type(unwrap(node.operand)) is not Call:
                self.fail()
            return self.function_condition(node.operand)
        return node

    def or_(self, bare_ok: bool):
        first = self.and_(bare_ok)
        if not self.at_keyword("OR"):
            return first
        items = [self.as_condition(first)]
        while self.at_keyword("OR"):
            self.count_operator()
            self.pos += 1
            items.append(self.and_(False))
        return Or(tuple(items))

    def and_(self, bare_ok: bool):
        first = self.not_(bare_ok)
        if not self.at_keyword("AND"):
            return first
        items = [self.as_condition(first)]
        while self.at_keyword("AND"):
            self.count_operator()
            self.pos += 1
            items.append(self.not_(False))
        return And(tuple(items))

    def not_(self, bare_ok: bool):
        if self.at_keyword("NOT"):
            self.count_operator()
            self.pos += 1
            return Not(self.not_(False))
        return self.primary(bare_ok)

    def primary(self, bare_ok: bool):
        if self.at("("):
            self.enter()
            inner = self.or_(True)
            self.leave()
            if type(inner) is _Bare:
                return self.comparison(self.group(inner.operand), bare_ok)
            return self.group(inner)
        return self.comparison(self.operand(), bare_ok)

    def comparison(self, left, bare_ok: bool):
        token = self.peek()
        if token.kind == PUNCT and token.text in _COMPARATORS:
            self.count_operator()
            self.pos += 1
            right = self.operand()
            self.check_operand(left)
            self.check_operand(right)
            return Compare(token.text, left, right)
        if self.at_keyword("BETWEEN"):
            self.count_operator()
            self.pos += 1
            low = self.operand()
            if not self.at_keyword("AND"):
                self.fail()
            self.pos += 1
            high = self.operand()
            for node in (left, low, high):
                self.check_operand(node)
            return Between(left, low, high)
        if self.at_keyword("IN"):
            self.count_operator()
            self.pos += 1
            self.expect("(")
            choices = [self.operand()]
            while self.at(","):
                self.pos += 1
                choices.append(self.operand())
            self.expect(")")
            if len(choices) > limits.EXPRESSION_IN_OPERANDS_MAX:
                raise invalid(self.kind, "Too many operands for the operator or function; "
                                         f"operator or function: IN, number of operands: {len(choices)}")
            for node in (left, *choices):
                self.check_operand(node)
            return In(left, tuple(choices))
        if bare_ok:
            return _Bare(left)
        if type(unwrap(left)) is Call:
            return self.function_condition(left)
        self.fail()

    def function_condition(self, node):
        if unwrap(node).name == "size":
            self.defer("misused", "The function is not allowed to be used this way in an "
                                  "expression; function: size")
        return node

    # --- updates ----------------------------------------------------------------------
    def update(self) -> tuple:
        actions = []
        seen = set()
        while True:
            if not self.at_keyword():
                self.fail()
            clause = self.peek().text.upper()
            self.pos += 1
            if clause in seen:
                self.defer("section", f'The "{clause}" section can only be used once in an '
                                      "update expression;")
            seen.add(clause)
            while True:
                path = self.path()
                if clause == "SET":
                    self.expect("=")
                    value = self.set_value()
                elif clause == "REMOVE":
                    value = None
                else:
                    token = self.peek()
                    if token.kind != VALUE:
                        self.fail()
                    self.pos += 1
                    self.refs[token.text] = None
                    value = ValueRef(token.text)
                actions.append(Action(clause, path, value))
                if not self.at(","):
                    break
                self.pos += 1
            if self.peek().kind == EOF:
                return tuple(actions)

    def set_value(self):
        left = self.operand()
        token = self.peek()
        if token.kind == PUNCT and token.text in ("+", "-"):
            self.count_operator()
            self.pos += 1
            return Arith(token.text, left, self.operand())
        return left

    # --- projections ------------------------------------------------------------------
    def projection(self) -> tuple:
        paths = [self.path()]
        while self.at(","):
            self.pos += 1
            paths.append(self.path())
        self.end()
        return tuple(paths)


@lru_cache(maxsize=limits.EXPRESSION_CACHE_ENTRIES_MAX)
def parse(grammar: str, kind: str, text: str) -> Parsed:
    """Parse ``text`` as ``grammar`` (CONDITION, UPDATE or PROJECTION); errors name ``kind``.

    Results are cached by (grammar, kind, text); failures are not, and raise a fresh
    ValidationException each time.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.EXPRESSION_BYTES_MAX:
        raise invalid(kind, "Expression size has exceeded the maximum allowed size; "
                            f"expression size: {size}")
    if not text.strip():
        raise invalid(kind, "The expression can not be empty;")
    parser = _Parser(grammar, kind, text)
    recursion_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(recursion_limit + limits.EXPRESSION_NESTING_MAX * _FRAMES_PER_LEVEL)
    try:
        tree = getattr(parser, grammar)()
    finally:
        sys.setrecursionlimit(recursion_limit)
    for category in _DEFERRED_ORDER[grammar]:
        if category in parser.deferred:
            raise invalid(kind, parser.deferred[category])
    return Parsed(tree, tuple(parser.refs))
