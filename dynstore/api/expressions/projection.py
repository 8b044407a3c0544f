"""ProjectionExpression (and legacy AttributesToGet) bound to one request.

The result keeps the shape of the item along each projected path: ``a.b`` gives
``{"a": {"M": {"b": ...}}}``, and list elements picked by index come back as a shorter
list in index order (``l[1], l[3]`` gives ``{"l": {"L": [l1, l3]}}``). Paths that are
missing from the item are left out.
"""
from __future__ import annotations

from dynstore.api.expressions.bind import Binder


class Projection:
    """A bound projection: ``apply(item) -> projected item``; ``paths`` as resolved."""

    __slots__ = ("paths", "_tree", "_top")

    def __init__(self, paths: tuple):
        self.paths = paths
        # A trie of the paths: element -> subtree, None at a projected path's end. Paths
        # never overlap (checked when binding), so a leaf is never also an inner node.
        tree = {}
        for path in paths:
            node = tree
            for element in path[:-1]:
                node = node.setdefault(element, {})
            node[path[-1]] = None
        self._tree = tree
        self._top = all(len(path) == 1 for path in paths)

    def apply(self, item: dict) -> dict:
        if self._top:
            return {name: item[name] for name in self._tree if name in item}
        return _project_map(item, self._tree)


def _project_map(members: dict, tree: dict) -> dict:
    out = {}
    for key, subtree in tree.items():
        value = members.get(key)
        if value is None:
            continue
        if subtree is None:
            out[key] = value
        else:
            picked = _project(value, subtree)
            if picked is not None:
                out[key] = picked
    return out


def _project(value: dict, tree: dict):
    first = next(iter(tree))
    if first.__class__ is int:
        elements = value.get("L")
        if elements is None:
            return None
        picked = []
        for index in sorted(tree):
            if index < len(elements):
                subtree = tree[index]
                element = elements[index] if subtree is None else _project(elements[index], subtree)
                if element is not None:
                    picked.append(element)
        return {"L": picked} if picked else None
    members = value.get("M")
    if members is None:
        return None
    picked = _project_map(members, tree)
    return {"M": picked} if picked else None


def bind_projection(paths: tuple, kind: str, names: dict, values: dict) -> Projection:
    binder = Binder(kind, names, values)
    resolved = [binder.path(path) for path in paths]
    binder.check_disjoint(resolved)
    return Projection(tuple(resolved))
