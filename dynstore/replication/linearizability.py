"""Linearizability of a key-value history, checked per key.

A history is a list of operations, each with a call time and a return time (None
when the client never learned the outcome: the operation may have taken effect at
any point after its call, or never). Keys are independent objects, so the history is
split by key (linearizability is compositional) and each part is searched alone.

The search is Wing & Gong's, with Lowe's memoization as in Porcupine: walk the
calls and returns in time order; at a call, try to linearize that operation now
(the model must accept it in the current state), remembering (set of linearized
operations, state) pairs already explored; at a return whose operation is not yet
linearized, backtrack. The history is linearizable iff every operation that
returned can be placed. Calls sort before returns at equal times, so operations
that touch are treated as concurrent: the checker never reports a violation that
the timestamps cannot prove.

The model is a register that also takes appends: ``put`` sets the value, ``append``
concatenates to it (an absent value counts as empty), ``get`` returns it (None when
absent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

_INF = float("inf")


class Op(NamedTuple):
    kind: str  # "put" | "append" | "get"
    key: str
    value: str | None  # the argument of put/append, or what get returned
    call: float
    ret: float | None  # None: outcome unknown (writes only; unanswered reads are left out)


@dataclass
class Result:
    ok: bool
    key: str | None = None  # the first key found not linearizable
    explored: int = 0  # search steps taken, over all keys
    unknown: int = 0  # keys whose search exceeded the budget (neither proved nor refuted)


def _step(state, op: Op):
    """(accepted, new state) of the register model."""
    if op.kind == "put":
        return True, op.value
    if op.kind == "append":
        return True, (state or "") + op.value
    return op.value == state, state


class _Node:
    __slots__ = ("op", "index", "is_call", "match", "prev", "next")

    def __init__(self, op, index, is_call):
        self.op, self.index, self.is_call = op, index, is_call
        self.match = self.prev = self.next = None


def check_key(ops: list[Op], budget: int | None = None) -> tuple[bool | None, int]:
    """(True/False, steps) for one key's operations; None for the verdict if over budget."""
    events = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((_INF if op.ret is None else op.ret, 1, i))
    events.sort()
    head = _Node(None, -1, False)
    prev = head
    calls: dict[int, _Node] = {}
    for _, is_ret, i in events:
        node = _Node(ops[i], i, not is_ret)
        if is_ret:
            node.match = calls[i]
            calls[i].match = node
        else:
            calls[i] = node
        node.prev = prev
        prev.next = node
        prev = node

    def lift(call: _Node) -> None:
        call.prev.next = call.next
        if call.next:
            call.next.prev = call.prev
        ret = call.match
        ret.prev.next = ret.next
        if ret.next:
            ret.next.prev = ret.prev

    def unlift(call: _Node) -> None:
        ret = call.match
        ret.prev.next = ret
        if ret.next:
            ret.next.prev = ret
        call.prev.next = call
        if call.next:
            call.next.prev = call

    state = None
    linearized = 0
    seen: set = set()
    stack: list = []
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if budget is not None and steps > budget:
            return None, steps
        if entry.is_call:
            ok, new_state = _step(state, entry.op)
            if ok:
                key = (linearized | (1 << entry.index), new_state)
                if key not in seen:
                    seen.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= 1 << entry.index
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if entry.op.ret is None:
                # Only unknown outcomes are left: leave them out (they never took effect).
                return True, steps
            if not stack:
                return False, steps
            entry, state = stack.pop()
            linearized &= ~(1 << entry.index)
            unlift(entry)
            entry = entry.next
    return True, steps


def check(history: list[Op], budget_per_key: int | None = None) -> Result:
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    result = Result(ok=True)
    for key in sorted(by_key):
        verdict, steps = check_key(by_key[key], budget_per_key)
        result.explored += steps
        if verdict is None:
            result.unknown += 1
        elif not verdict:
            result.ok = False
            result.key = key
            return result
    return result
