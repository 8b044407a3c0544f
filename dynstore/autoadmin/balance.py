"""What to move so that the nodes work alike: a partition's lead, or a table's replica.

Two things a node holds decide its work:

* a partition's lead: writes and strongly consistent reads run at the leader. A lead can go
  to another storage member of its group (the Transfer call);
* a table's replica (each node of a table's placement holds a replica of every partition of
  it): every write runs at every replica, and eventually consistent reads at the one asked.
  A replica can go to another live node of its zone that does not hold the table (the table
  is placed there instead, and its groups move one change a round, as in healing).

A holding's rate is the requests a second it took over the last window: a lead's, the
requests at its leader; a replica's, the requests of its table at all its replicas. A node's
load is the sum of the rates of what it holds. Two rules, one move a round:

1. Load. When a node, the most loaded first, holds more than ``rate_min`` and ``share`` of its
   load above a node its holdings could go to (the least loaded such node), one of those
   holdings goes there: of the ones whose move at least halves the gap (a move that only swaps
   the two nodes' places would be undone next), the one whose move leaves the smallest gap.
   One holding taking most of a node's load is not moved (it would only take the load along);
   a partition that hot is split for heat (heat.py).
2. Count. Otherwise, once a node holds ``count_min`` more than a node one of its holdings
   could go to (a node that restarted leads nothing: every election was won by the others; a
   node added holds no table), its coldest such holding goes to the one holding the fewest,
   unless that would open a load gap rule 1 acts on.

They settle: each move of rule 1 lowers the sum of the squares of the nodes' loads (it moves
less than the gap), and rule 2 never moves a holding whose rate would open a gap rule 1 acts
on.

Pure: holdings and rates come in; no clock, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Holding:
    name: str  # the table, for the log
    key: int  # tells holdings apart and orders ties: the partition's group, or the table's index
    holder: int
    nodes: tuple[int, ...]  # the holder and the nodes it could go to
    rate: float  # requests a second it took over the window
    movable: bool = True  # every node concerned answered lately: a group short of one has no slack for a change


@dataclass(frozen=True)
class Move:
    holding: Holding
    to: int
    why: str  # "load" or "count": the rule that moves it


def plan(holdings: list[Holding], *, rate_min: float, share: float, count_min: int) -> Move | None:
    """The holding to move and the node to move it to, or None when the nodes work alike."""
    load: dict[int, float] = {}
    count: dict[int, int] = {}
    for holding in holdings:
        for node in holding.nodes:
            load.setdefault(node, 0.0)
            count.setdefault(node, 0)
        load[holding.holder] = load.get(holding.holder, 0.0) + holding.rate
        count[holding.holder] = count.get(holding.holder, 0) + 1

    def threshold(a: int, b: int) -> float:
        return max(rate_min, share * max(load[a], load[b]))

    def others(holding: Holding, key) -> int | None:
        return min((n for n in holding.nodes if n != holding.holder), key=lambda n: (key(n), n), default=None)

    for node in sorted(load, key=lambda n: (-load[n], n)):
        best: tuple[float, int, Holding, int] | None = None
        for holding in holdings:
            to = others(holding, lambda n: (load[n], count[n]))
            if holding.holder != node or not holding.movable or to is None:
                continue
            gap = load[node] - load[to]
            left = abs(gap - 2 * holding.rate)
            if gap >= threshold(node, to) and holding.rate > 0 and left <= gap / 2 and (
                    best is None or (left, holding.key) < best[:2]):
                best = (left, holding.key, holding, to)
        if best is not None:
            return Move(best[2], best[3], "load")

    for holding in sorted(holdings, key=lambda h: (-count[h.holder], h.rate, h.key)):
        to = others(holding, lambda n: (count[n], load[n]))
        if not holding.movable or to is None or count[holding.holder] - count[to] < count_min:
            continue
        after = abs(load[holding.holder] - load[to] - 2 * holding.rate)
        if after < threshold(holding.holder, to) or after <= abs(load[holding.holder] - load[to]):
            return Move(holding, to, "count")
    return None


def table_replicas(tables: list[tuple[str, list[int], float]], zone: dict[int, str], lost: set[int]) -> list[Holding]:
    """The replicas of ``tables`` (name, the nodes it is placed on, its rate) as holdings, each
    movable to the live nodes of its node's zone (``zone``: node -> zone, for every node) that
    do not hold the table, and only while no node of its table is ``lost``."""
    replicas = []
    for index, (name, hosts, rate) in enumerate(tables):
        for host in hosts:
            free = tuple(n for n in sorted(zone) if zone[n] == zone[host] and n not in hosts and n not in lost)
            replicas.append(Holding(name, index, host, (host, *free), rate, not set(hosts) & lost))
    return replicas
