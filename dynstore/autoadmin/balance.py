"""Which partition's lead to hand to which node, so that the nodes lead alike.

Writes and strongly consistent reads run at a partition's leader, so where the leads are
decides where the work is. A node's led load is the request rate its replicas took, over the
last window, in the partitions they lead. Two rules, one hand-over a round:

1. Load. When a node, the most loaded first, leads more than ``rate_min`` and ``share`` of its
   load above a member of one of its partitions (the least loaded such member), the lead of
   one of those partitions is handed to it: of the partitions whose move at least halves the gap
   (a move that only swaps the two nodes' places would be undone next), the one whose move
   leaves the smallest gap. One partition taking most of a node's requests is not moved (it
   would only take the load along); it is split for heat (heat.py).
2. Count. Otherwise, once a node leads ``count_min`` partitions more than a member of one of
   them (a node that restarted leads nothing: every election was won by the others), its
   coldest such partition is handed to the member leading the fewest, unless that would open
   a load gap rule 1 acts on.

They settle: each move of rule 1 lowers the sum of the squares of the nodes' loads (it moves
less than the gap), and rule 2 never moves a lead whose rate would open a gap rule 1 acts on.

Pure: leads and rates come in; no clock, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lead:
    table: str
    group: int
    leader: int
    members: tuple[int, ...]  # the storage members (a log replica cannot lead)
    rate: float  # requests a second its leader took over the window
    movable: bool = True  # every member answered lately: a group short of one has no slack for a change


@dataclass(frozen=True)
class Move:
    lead: Lead
    to: int
    why: str  # "load" or "count": the rule that moves it


def plan(leads: list[Lead], *, rate_min: float, share: float, count_min: int) -> Move | None:
    """The lead to hand over and the node to hand it to, or None when the nodes lead alike."""
    load: dict[int, float] = {}
    count: dict[int, int] = {}
    for lead in leads:
        for member in lead.members:
            load.setdefault(member, 0.0)
            count.setdefault(member, 0)
        load[lead.leader] = load.get(lead.leader, 0.0) + lead.rate
        count[lead.leader] = count.get(lead.leader, 0) + 1

    def threshold(a: int, b: int) -> float:
        return max(rate_min, share * max(load[a], load[b]))

    def others(lead: Lead, key) -> int | None:
        return min((m for m in lead.members if m != lead.leader), key=lambda m: (key(m), m), default=None)

    for node in sorted(load, key=lambda n: (-load[n], n)):
        best: tuple[float, int, Lead, int] | None = None
        for lead in leads:
            to = others(lead, lambda m: (load[m], count[m]))
            if lead.leader != node or not lead.movable or to is None:
                continue
            gap = load[node] - load[to]
            left = abs(gap - 2 * lead.rate)
            if gap >= threshold(node, to) and lead.rate > 0 and left <= gap / 2 and (
                    best is None or (left, lead.group) < best[:2]):
                best = (left, lead.group, lead, to)
        if best is not None:
            return Move(best[2], best[3], "load")

    for lead in sorted(leads, key=lambda lead: (-count[lead.leader], lead.rate, lead.group)):
        to = others(lead, lambda m: (count[m], load[m]))
        if not lead.movable or to is None or count[lead.leader] - count[to] < count_min:
            continue
        after = abs(load[lead.leader] - load[to] - 2 * lead.rate)
        if after < threshold(lead.leader, to) or after <= abs(load[lead.leader] - load[to]):
            return Move(lead, to, "count")
    return None
