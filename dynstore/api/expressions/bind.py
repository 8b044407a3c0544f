"""What every kind of expression does when its cached tree meets one request's placeholders:
resolve paths and values, and check that document paths neither overlap nor conflict."""
from __future__ import annotations

from dynstore.api.expressions.ast import Literal, NameRef, Path, ValueRef
from dynstore.api.expressions.lexer import invalid


class Binder:
    """Resolves placeholders of one expression; ``names``/``values`` come from
    ExpressionContext.resolve, so every placeholder the tree holds is present."""

    __slots__ = ("kind", "names", "values")

    def __init__(self, kind: str, names: dict, values: dict):
        self.kind = kind
        self.names = names
        self.values = values

    def path(self, node: Path) -> tuple:
        names = self.names
        return tuple(names[e] if e.__class__ is NameRef else e for e in node.elements)

    def value(self, node) -> dict:
        if type(node) is ValueRef:
            return self.values[node.name]
        assert type(node) is Literal, node
        return node.value

    def error(self, message: str):
        return invalid(self.kind, message)

    def check_disjoint(self, paths: list[tuple]) -> None:
        """DynamoDB refuses two paths of which one is a prefix of the other (overlap), or
        that index the same document once as a map and once as a list (conflict)."""
        for i, second in enumerate(paths):
            for first in paths[:i]:
                for a, b in zip(first, second):
                    if (a.__class__ is int) != (b.__class__ is int):
                        raise self.error("Two document paths conflict with each other; must remove "
                                         "or rewrite one of these paths; path one: "
                                         f"{path_text(first)}, path two: {path_text(second)}")
                    if a != b:
                        break
                else:
                    raise self.error("Two document paths overlap with each other; must remove or "
                                     "rewrite one of these paths; path one: "
                                     f"{path_text(first)}, path two: {path_text(second)}")


def path_text(path: tuple) -> str:
    """A resolved path as DynamoDB prints it in errors: [a, b, [3]]."""
    return "[" + ", ".join(f"[{e}]" if e.__class__ is int else e for e in path) + "]"
