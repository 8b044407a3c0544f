"""Exhaustive exploration of a small replication group over the real core.

    python -m dynstore.replication.explore                 CI bound
    python -m dynstore.replication.explore --long          a deeper bound (also DYNSTORE_LONG=1)

Three replicas (two storage, one log replica) and every interleaving, breadth first up
to a depth, of these steps: deliver any message in flight, lose any message in flight,
advance the common clock by one tick (every replica ticks), a client proposal at the
leader, a crash and restart of any replica from its durable state, and the leader
removing the log replica from the group and adding it back. Clocks are exact here (the
simulator covers drift), election jitter is zero, so competing candidates and split
votes come up at once. States are hashed (cores, messages in flight, clock, budgets,
chosen log) so each is expanded once.

Checked in every state: at most one replica holds a valid lease; every replica's
committed prefix agrees with every slot ever seen committed (a committed entry is
never lost or changed).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import sys
import time
from collections import deque
from dataclasses import dataclass

from dynstore.replication.errors import Busy, NotLeader
from dynstore.replication.messages import LOG, STORAGE, ZERO_BALLOT, SnapshotMeta, decode, encode
from dynstore.replication.paxos import LEADER, Paxos, Store, Timing

TIMING = Timing(election_timeout=2.0, heartbeat_interval=1.0, drift_max=0.01)
MEMBERS = ((0, STORAGE), (1, STORAGE), (2, LOG))
NET_MAX = 6  # messages in flight beyond which no new work (tick, proposal) starts
DEPTH_CI = 5
DEPTH_LONG = 7


class NoJitter:
    """The explorer's randomness: none, so states that differ only in jitter do not multiply."""

    def random(self) -> float:
        return 0.0


class Violation(AssertionError):
    pass


@dataclass
class World:
    cores: dict  # replica -> Paxos (its store is its durable state: persisting is immediate here)
    net: tuple  # sorted frames in flight
    clock: int
    proposals: int  # proposals left
    losses: int  # message losses left
    crashes: int  # crash-restarts left
    changes: int  # membership changes left
    chosen: tuple  # (slot, kind, data) seen committed, sorted


def collect(w: World, rid: int) -> None:
    """Put what replica rid has to send on the network (its records are durable at once here)."""
    core = w.cores[rid]
    rd = core.ready()
    out = []
    while rd:
        out += rd.send_first + rd.messages
        core.persisted(rd.durable)  # may commit more, for the next Ready
        rd = core.ready()
    w.net = tuple(sorted(w.net + tuple(encode(m) for m in out)))


def _check(w: World) -> None:
    holders = [r for r, c in w.cores.items() if c.lease_valid(float(w.clock))]
    if len(holders) > 1:
        raise Violation(f"replicas {holders} hold a valid lease at once")
    chosen = dict((s, (k, d)) for s, k, d in w.chosen)
    for rid, core in w.cores.items():
        store = core.store
        for slot in range(store.first_slot, store.commit + 1):
            e = store.entry(slot)
            seen = chosen.setdefault(slot, (e.kind, e.data))
            if seen != (e.kind, e.data):
                raise Violation(f"replica {rid} committed {e.kind, e.data} at slot {slot}, chosen was {seen}")
    w.chosen = tuple(sorted((s, k, d) for s, (k, d) in chosen.items()))


def initial(*, proposals: int = 1, losses: int = 1, crashes: int = 1, changes: int = 1) -> World:
    cores = {}
    for rid, _ in MEMBERS:
        store = Store.replay([SnapshotMeta(0, ZERO_BALLOT, MEMBERS)])
        cores[rid] = Paxos(rid, store, now=0.0, rng=NoJitter(), timing=TIMING)
    return World(cores, (), 0, proposals, losses, crashes, changes, ())


def successors(blob: bytes):
    """(label, world) for every step possible from the pickled world."""
    w = pickle.loads(blob)
    for i, frame in enumerate(w.net):
        if i and frame == w.net[i - 1]:
            continue  # the same message twice: one choice
        for lose in (False, True) if w.losses else (False,):
            n = pickle.loads(blob)
            n.net = n.net[:i] + n.net[i + 1:]
            n.losses -= lose
            m = decode(frame)
            if not lose:
                n.cores[m.dst].step(m, float(n.clock))
                collect(n, m.dst)
            yield (f"{'lose' if lose else 'deliver'} {type(m).__name__} {m.src}->{m.dst} {tuple(m.ballot)}", n)
    if len(w.net) <= NET_MAX:
        n = pickle.loads(blob)
        n.clock += 1
        for rid, core in n.cores.items():
            core.tick(float(n.clock))
            collect(n, rid)
        yield (f"tick to {n.clock}", n)
    leaders = [r for r, c in w.cores.items() if c.role == LEADER]
    if w.proposals and leaders and len(w.net) <= NET_MAX:
        n = pickle.loads(blob)
        n.proposals -= 1
        n.cores[leaders[0]].propose(b"v%d" % n.proposals, float(n.clock))
        collect(n, leaders[0])
        yield (f"propose at {leaders[0]}", n)
    if w.changes and leaders:
        n = pickle.loads(blob)
        core = n.cores[leaders[0]]
        members = dict(core.members)
        if 2 in members:
            del members[2]
        else:
            members[2] = LOG
        try:
            core.propose_members(tuple(sorted(members.items())), float(n.clock))
        except (Busy, NotLeader):
            pass
        else:
            n.changes -= 1
            collect(n, leaders[0])
            yield (f"leader {leaders[0]} changes members to {sorted(members)}", n)
    if w.crashes:
        for rid in w.cores:
            n = pickle.loads(blob)
            n.crashes -= 1
            # Everything persisted is durable here; volatile state (role, lease, votes) is lost.
            n.cores[rid] = Paxos(rid, n.cores[rid].store, now=float(n.clock), rng=NoJitter(), timing=TIMING)
            yield (f"crash and restart {rid}", n)


def settle(w: World, clock_max: int, cut: int | None = None) -> World:
    """Run w in order (every message delivered, except to and from the replica cut off; ticks
    when the network is idle) up to clock_max: a starting point deep into a history."""
    while w.clock < clock_max:
        if w.net:
            m = decode(w.net[0])
            w.net = w.net[1:]
            if cut not in (m.src, m.dst):
                w.cores[m.dst].step(m, float(w.clock))
                collect(w, m.dst)
        else:
            w.clock += 1
            for rid, core in w.cores.items():
                core.tick(float(w.clock))
                collect(w, rid)
        _check(w)
    return w


def starts() -> list[tuple[str, World]]:
    """The states explored from: the moment both storage replicas campaign at once; and a
    group whose leader, holding a committed proposal and a lease, was cut off until the
    other storage replica's election timer fired (the leader is back, its old messages
    and the challenger's campaign race); and the same leader handing the lead to the other
    storage replica (its Abdicate messages in flight)."""
    election = settle(initial(), 2)
    led = settle(initial(), 5)
    leader = next(r for r, c in led.cores.items() if c.role == LEADER)
    led.cores[leader].propose(b"settled", float(led.clock))
    collect(led, leader)
    led = settle(led, 7)
    challenger = 1 - leader
    deadline = math.ceil(led.cores[challenger].election_deadline)
    handover = pickle.loads(pickle.dumps(led))
    failover = settle(led, deadline, cut=leader)
    assert handover.cores[leader].transfer(challenger, float(handover.clock))
    collect(handover, leader)
    return [("election", election), ("failover", failover), ("handover", handover)]


@dataclass
class Stats:
    states: int
    transitions: int
    depth: int
    seconds: float


def explore(depth: int, start: World, states_max: int | None = None) -> Stats:
    """Breadth first from start; stops early (depth not complete) at states_max."""
    started = time.monotonic()
    blob = pickle.dumps(start)
    seen = {hashlib.blake2b(blob, digest_size=16).digest()}
    frontier = deque([(blob, ())])
    transitions = 0
    reached = 0
    while frontier:
        blob, path = frontier.popleft()
        if len(path) >= depth:
            continue
        for label, n in successors(blob):
            transitions += 1
            try:
                _check(n)
            except (Violation, AssertionError) as exc:
                steps = "\n".join(f"  {i + 1}. {s}" for i, s in enumerate(path + (label,)))
                raise Violation(f"{exc}\nafter:\n{steps}") from exc
            nblob = pickle.dumps(n)
            k = hashlib.blake2b(nblob, digest_size=16).digest()
            if k in seen:
                continue
            seen.add(k)
            reached = max(reached, len(path) + 1)
            if states_max is not None and len(seen) >= states_max:
                return Stats(len(seen), transitions, reached, time.monotonic() - started)
            frontier.append((nblob, path + (label,)))
    return Stats(len(seen), transitions, reached, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynstore.replication.explore", description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=DEPTH_CI)
    ap.add_argument("--long", action="store_true")
    args = ap.parse_args(argv)
    if args.long or os.environ.get("DYNSTORE_LONG") == "1":
        args.depth = max(args.depth, DEPTH_LONG)
    for name, start in starts():
        stats = explore(args.depth, start)
        print(f"from {name}: depth {stats.depth}, {stats.states} states, {stats.transitions} transitions "
              f"in {stats.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
