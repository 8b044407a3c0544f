"""UpdateExpression (and legacy AttributeUpdates) bound to one request and applied to items.

DynamoDB's semantics: every right-hand side is computed from the item as it was before the
update, so ``SET a = b, b = a`` swaps; then SET, REMOVE, ADD and DELETE take effect. List
indexes name positions in the old list: ``REMOVE l[0], l[2]`` removes two of the old
elements, and ``SET l[n]`` past the end appends, several such appends in order of their
indexes (not of the actions). A nested path whose parent is missing or
of the wrong type cannot be written ("The document path provided in the update expression
is invalid for update"); DELETE that empties a set removes the attribute.

``apply`` never mutates its input: containers on written paths are copied once each, the
rest of the new item shares structure with the old one.
"""
from __future__ import annotations

from dynstore.api.errors import ValidationException
from dynstore.api.expressions import operands
from dynstore.api.expressions.ast import Arith, Call, Literal, Path, ValueRef, unwrap
from dynstore.api.expressions.bind import Binder
from dynstore.api.expressions.parser import UPDATE_FUNCTIONS

_TYPE_NAMES = {"S": "STRING", "N": "NUMBER", "B": "BINARY", "NULL": "NULL", "BOOL": "BOOLEAN",
               "L": "LIST", "M": "MAP"}


def _invalid_path() -> ValidationException:
    return ValidationException("The document path provided in the update expression is invalid for update")


class OperandTypeError(ValidationException):
    """An operand of the wrong type met at apply time; legacy AttributeUpdates words it differently."""

    name = "ValidationException"  # what the client sees: the subclass only lets AttributeUpdates catch it


def _wrong_type() -> ValidationException:
    return OperandTypeError("An operand in the update expression has an incorrect data type")


def _missing() -> ValidationException:
    return ValidationException("The provided expression refers to an attribute that does not exist in the item")


class Update:
    """A bound update: ``apply(item) -> new item``; ``paths`` are the document paths it writes."""

    __slots__ = ("paths", "_steps")

    def __init__(self, paths: tuple, steps: tuple):
        self.paths = paths
        self._steps = steps  # (clause, path, getter or value)

    @property
    def only_removes(self) -> bool:
        """True when every action removes (REMOVE, DELETE): such an update never creates an item."""
        return bool(self._steps) and all(clause in ("REMOVE", "DELETE") for clause, _, _ in self._steps)

    def apply(self, item: dict) -> dict:
        # Right-hand sides first, all from the old item.
        planned = [(clause, path, get(item) if clause == "SET" else get)
                   for clause, path, get in self._steps]
        writer = _Writer(item)
        for clause, path, value in planned:
            if clause == "SET":
                writer.set(path, value)
            elif clause == "REMOVE":
                writer.remove(path)
            elif clause == "ADD":
                writer.add(path, operands.get_path(item, path), value)
            else:
                writer.delete(path, operands.get_path(item, path), value)
        return writer.finish()


class _Writer:
    """Copy-on-write edits of one item."""

    __slots__ = ("root", "copies", "removals", "appends")

    def __init__(self, item: dict):
        self.root = dict(item)
        self.copies = {}  # path prefix -> copied container value ({"M": dict} or {"L": list})
        self.removals = {}  # id(list) -> (list, set of old indexes to remove)
        self.appends = {}  # id(list) -> (list, [(index past the old end, value)])

    def parent(self, path: tuple):
        """The (copied) dict or list that holds ``path[-1]``."""
        container = self.root
        for depth in range(len(path) - 1):
            element = path[depth]
            if container.__class__ is dict:
                child = container.get(element)
            else:
                child = container[element] if element < len(container) else None
            if child is None:
                raise _invalid_path()
            prefix = path[:depth + 1]
            copy = self.copies.get(prefix)
            if copy is None:
                if path[depth + 1].__class__ is int:
                    if "L" not in child:
                        raise _invalid_path()
                    copy = {"L": list(child["L"])}
                else:
                    if "M" not in child:
                        raise _invalid_path()
                    copy = {"M": dict(child["M"])}
                container[element] = copy
                self.copies[prefix] = copy
            container = copy["L"] if "L" in copy else copy["M"]
        return container

    def set(self, path: tuple, value: dict) -> None:
        container = self.parent(path)
        last = path[-1]
        if container.__class__ is list and last >= len(container):
            self.appends.setdefault(id(container), (container, []))[1].append((last, value))
        else:
            container[last] = value

    def remove(self, path: tuple) -> None:
        container = self.parent(path)
        last = path[-1]
        if container.__class__ is dict:
            container.pop(last, None)
        elif last < len(container):
            self.removals.setdefault(id(container), (container, set()))[1].add(last)

    def add(self, path: tuple, current, value: dict) -> None:
        if current is None:
            self.set(path, value)
        elif "N" in current and "N" in value:
            self.set(path, {"N": operands.add_numbers(current["N"], value["N"])})
        else:
            kind = operands.type_of(value)
            if kind not in operands.SET_TYPES or kind not in current:
                raise _wrong_type()
            have = operands.set_members(current)
            seen = set(have)
            merged = list(current[kind])
            for text, member in zip(value[kind], operands.set_members(value)):
                if member not in seen:
                    seen.add(member)
                    merged.append(text)
            self.set(path, {kind: merged})

    def delete(self, path: tuple, current, value: dict) -> None:
        if current is None:
            return
        kind = operands.type_of(value)
        if kind not in current:
            raise _wrong_type()
        gone = set(operands.set_members(value))
        kept = [text for text, member in zip(current[kind], operands.set_members(current))
                if member not in gone]
        if kept:
            self.set(path, {kind: kept})
        else:
            self.remove(path)

    def finish(self) -> dict:
        # Appends go after every old element, so the old indexes removals name stay valid.
        for values, pending in self.appends.values():
            values.extend(value for _, value in sorted(pending, key=lambda entry: entry[0]))
        for values, indexes in self.removals.values():
            for index in sorted(indexes, reverse=True):
                del values[index]
        return self.root


class UpdateBinder(Binder):
    __slots__ = ()

    def bind(self, actions: tuple, update_class: type = Update) -> Update:
        paths = [self.path(action.path) for action in actions]
        self.check_disjoint(paths)
        steps = []
        for action, path in zip(actions, paths):
            if action.clause == "SET":
                steps.append(("SET", path, self.operand(action.value)[0]))
            elif action.clause == "REMOVE":
                steps.append(("REMOVE", path, None))
            else:
                value = self.value(action.value)
                kind = operands.type_of(value)
                allowed = operands.SET_TYPES | ({"N"} if action.clause == "ADD" else set())
                if kind not in allowed:
                    raise self.error("Incorrect operand type for operator or function; operator: "
                                     f"{action.clause}, operand type: {_TYPE_NAMES[kind]}")
                steps.append((action.clause, path, value))
        return update_class(tuple(paths), tuple(steps))

    def operand(self, node):
        """(getter(item) -> value, static type or None) of a SET right-hand side."""
        node = unwrap(node)
        kind = type(node)
        if kind is Path:
            path = self.path(node)

            def read(item):
                value = operands.get_path(item, path)
                if value is None:
                    raise _missing()
                return value
            return read, None
        if kind is ValueRef or kind is Literal:
            value = self.value(node)
            return (lambda item: value), operands.type_of(value)
        if kind is Arith:
            return self.arithmetic(node)
        assert kind is Call, node
        if len(node.args) != UPDATE_FUNCTIONS[node.name]:
            raise self.error("Incorrect number of operands for operator or function; operator or "
                             f"function: {node.name}, number of operands: {len(node.args)}")
        if node.name == "if_not_exists":
            return self.if_not_exists(node)
        return self.list_append(node)

    def check_types(self, name: str, bound: list, wanted: str) -> None:
        for _, kind in bound:
            if kind is not None and kind != wanted:
                raise self.error("Incorrect operand type for operator or function; operator or "
                                 f"function: {name}, operand type: {kind}")

    def arithmetic(self, node: Arith):
        bound = [self.operand(node.left), self.operand(node.right)]
        self.check_types(node.op, bound, "N")
        (left, _), (right, _) = bound
        subtract = node.op == "-"

        def arithmetic(item):
            a, b = left(item), right(item)
            if "N" not in a or "N" not in b:
                raise _wrong_type()
            return {"N": operands.add_numbers(a["N"], b["N"], subtract)}
        return arithmetic, "N"

    def if_not_exists(self, node: Call):
        target = unwrap(node.args[0])
        if type(target) is not Path:
            raise self.error("Operator or function requires a document path; operator or function: if_not_exists")
        path = self.path(target)
        fallback, kind = self.operand(node.args[1])

        def if_not_exists(item):
            value = operands.get_path(item, path)
            return fallback(item) if value is None else value
        return if_not_exists, kind

    def list_append(self, node: Call):
        for arg in node.args:
            arg = unwrap(arg)
            if type(arg) is Call and arg.name == "list_append":
                raise self.error("The function is not allowed to be used this way in an expression; "
                                 "function: list_append")
        bound = [self.operand(arg) for arg in node.args]
        self.check_types("list_append", bound, "L")
        (first, _), (second, _) = bound

        def list_append(item):
            a, b = first(item), second(item)
            if "L" not in a or "L" not in b:
                raise _wrong_type()
            return {"L": a["L"] + b["L"]}
        return list_append, "L"


def bind_update(actions: tuple, kind: str, names: dict, values: dict) -> Update:
    return UpdateBinder(kind, names, values).bind(actions)
