"""Deterministic simulation of one replication group, everything from one seed.

    python -m dynstore.replication.sim --seed N            replay one run
    python -m dynstore.replication.sim --seeds 300         CI budget; --long for more

The real core (paxos.Paxos) runs inside simulated shells in one process, on a
discrete-event clock of real time. Everything random comes from random.Random(seed),
so a run is a function of its seed and a failure is replayed exactly.

What is simulated:
- Network: every message travels as an encoded frame (messages.encode) with random
  delay (so reordering), loss, duplication, bit flips (dropped by the frame checksum
  and counted), and cut links that come and heal: a group split from the rest, or
  the leader cut from some peers, in one direction or both (so a replica can lose the
  leader while a peer still hears it, the case pre-vote and the lease window are for).
- Disks: a replica persists the records of a Ready as frames and sends that Ready's
  messages and applies its committed entries only when the write is synced, except the
  leader's Accepts (Ready.send_first), which go out before the write starts, and a
  leader's committed entries that are durable already (Ready.apply_first), applied and
  answered before the record of the commit index is synced; the core hears of the sync
  (Paxos.persisted) after the messages. A crash loses unsynced frames and may tear the
  one being written (recovery drops a torn tail). So that a leader crashes in the window
  between its Accepts and its own sync often enough to matter, a write of the leader
  whose Accepts went out first may stall (Faults.leader_unsynced) with the leader
  crashing during the stall, losing all it had not synced, while the peer holding the
  most of the log is cut off. A bit flip in a synced frame followed by others is
  detected at recovery (CorruptionError) and the replica is declared failed, to be
  replaced through a membership change. Snapshots are an atomically replaced,
  checksummed file.
- Clocks: each replica's clock runs at a rate within the timing's drift bound
  (changed at every restart) from an arbitrary offset.
- Clients: a register/append workload over a few keys, writes through the leader,
  strongly consistent reads under the lease, eventually consistent reads anywhere.
- An operator that replaces a storage replica by a log replica and back, and replaces
  failed replicas: add a log replica, remove the storage replica, add a new storage
  replica (caught up by snapshot and log), remove the log replica.

Checked after every step: at most one replica holds a valid lease at that instant; a
committed slot never changes and every replica's committed prefix is the same.
At the end, after healing everything and a quiet period: every member has the same
commit index and every storage member the same applied state, the replay of every slot
ever seen committed (so no committed write was lost); the client history is
linearizable (linearizability.check) and every eventually consistent read returned a
value its key really had.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import struct
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass

from dynstore.replication import linearizability
from dynstore.replication.errors import Busy, FrameError, NotLeader
from dynstore.replication.linearizability import Op
from dynstore.replication.messages import (COMMAND, LOG, STORAGE, ZERO_BALLOT, Entries, HardState,
                                           SnapshotChunk, SnapshotMeta, decode, encode)
from dynstore.replication.paxos import LEADER, Paxos, Store, Timing
from dynstore.storage.errors import CorruptionError

# A larger drift than production's, so that the lease arithmetic is exercised hard.
SIM_TIMING = Timing(election_timeout=1.0, heartbeat_interval=0.1, drift_max=0.02)
TICK_S = 0.05  # local time between ticks of a replica
OP_TIMEOUT_S = 3.0  # a client gives up on an operation (its outcome stays unknown)
COMPACT_EVERY = 40  # applied entries between snapshots: small, so catch-up by snapshot happens
DISK_REWRITE_FRAMES = 256  # frames after which a quiet disk rewrites its log compactly
QUIET_S_MAX = 120.0  # simulated seconds the group gets to converge once faults stop
KEYS = ("a", "b", "c")

_CMD = struct.Struct("<BQH")
_PUT, _APPEND = 1, 2


@dataclass
class Faults:
    drop: float = 0.02
    duplicate: float = 0.01
    corrupt: float = 0.005
    slow: float = 0.02  # a message held up to half a second: reorders across heartbeats
    crash: float = 0.002  # per step
    partition: float = 0.002
    bitflip: float = 0.0003
    swap: float = 0.0005  # the operator starts replacing a storage replica by a log replica and back
    transfer: float = 0.005  # the operator asks the leader to hand the lead to another storage replica
    # A leader's answer tells a replica which of its entries is chosen (the request router's
    # "chosen"), at once or long after, to any replica, a member or not.
    learn: float = 0.01
    # Per leader write whose Accepts went out first: the disk stalls on it, the leader crashes
    # before it completes and loses it, and the peer holding most of the log is cut off for a
    # while, so the next majority may be the restarted leader and a peer lacking those entries.
    leader_unsynced: float = 0.01


class Failure(AssertionError):
    pass


class SimDisk:
    """Synced and unsynced frames, and a snapshot file replaced atomically."""

    def __init__(self):
        self.frames: list[bytes] = []
        self.synced = 0  # frames [0, synced) survive a crash
        self.snapshot: bytes | None = None

    def crash(self, rng: random.Random, *, lose_unsynced: bool = False) -> None:
        keep = self.synced if lose_unsynced else rng.randint(self.synced, len(self.frames))
        torn = keep < len(self.frames) and rng.random() < 0.5
        tail = [self.frames[keep][:rng.randrange(len(self.frames[keep]))]] if torn else []
        self.frames = self.frames[:keep] + tail
        self.synced = len(self.frames)

    def flip(self, rng: random.Random) -> bool:
        """A bit flip in a synced frame that is followed by another (so it is not a torn tail)."""
        if self.synced < 2:
            return False
        i = rng.randrange(self.synced - 1)
        frame = bytearray(self.frames[i])
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        self.frames[i] = bytes(frame)
        return True

    def recover(self) -> Store:
        records = []
        for i, frame in enumerate(self.frames):
            try:
                records.append(decode(frame))
            except FrameError as exc:
                if i == len(self.frames) - 1:
                    break  # torn tail: the write never completed, nothing depended on it
                raise CorruptionError(f"log frame {i} of {len(self.frames)}: {exc}") from None
        self.frames = self.frames[:len(records)]
        self.synced = len(self.frames)
        return Store.replay(records)


def _kv_bytes(kv: dict) -> bytes:
    return json.dumps(sorted(kv.items())).encode()


def _command(kind: int, req: int, key: str, value: str) -> bytes:
    k = key.encode()
    return _CMD.pack(kind, req, len(k)) + k + value.encode()


def _parse_command(data: bytes) -> tuple[int, int, str, str]:
    kind, req, klen = _CMD.unpack_from(data)
    body = data[_CMD.size:]
    return kind, req, body[:klen].decode(), body[klen:].decode()


class Node:
    """The simulated shell of one replica."""

    def __init__(self, sim: Sim, rid: int, role: int, members: tuple):
        self.sim = sim
        self.id = rid
        self.log_only = role == LOG  # a log replica's shell keeps no state machine
        self.disk = SimDisk()
        self.disk.frames.append(encode(SnapshotMeta(0, ZERO_BALLOT, members)))
        self.disk.synced = 1
        self.incarnation = 0
        self.alive = False
        self.failed = False  # its disk is corrupt: it never comes back
        self.retired = False  # removed from the group and shut down
        self.flipped = False  # a bit of its disk was flipped (found at the next restart)
        self.start()

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def start(self) -> None:
        sim = self.sim
        try:
            store = self.disk.recover()
        except CorruptionError:
            self.failed = True
            self.flipped = False
            sim.stats["disk_corruptions_detected"] += 1
            return
        self.kv: dict = {}
        applied = store.snap.index
        if self.disk.snapshot is not None:  # only a storage replica keeps one
            chunk = decode(self.disk.snapshot)
            if chunk.meta.index > store.snap.index:
                # The snapshot was installed but its record did not reach the log: write it now,
                # or the next records would follow a log that does not reach them.
                store.apply(chunk.meta)
                self.disk.frames.append(encode(chunk.meta))
                self.disk.synced = len(self.disk.frames)
            self.kv = dict(json.loads(chunk.data))
            applied = chunk.meta.index
        assert applied == store.snap.index, (applied, store.snap.index)
        self.incarnation += 1
        self.alive = True
        d = sim.drift
        self.rate = sim.rng.uniform(1 - d, 1 + d)
        self.offset = sim.rng.uniform(0, 1000)
        self.core = Paxos(self.id, store, now=self.local(sim.now), rng=random.Random(sim.rng.random()),
                          timing=sim.timing, applied=applied)
        self.applied = applied
        self.checked = store.snap.index  # committed slots compared with the chosen log
        self.sync_done = sim.now
        self.pending: deque = deque()  # Readys waiting for their frames to be synced
        self.waiting: dict[int, Op] = {}  # request id -> client write submitted here
        self.reads: list = []  # (read index, client id, op) strong reads waiting to be applied
        self.snap_in: dict = {}  # the snapshot stream being received: chunks by seq
        sim.check_committed(self)
        sim.after(self.tick_delay(), ("tick", self.id, self.incarnation))
        self.flush()

    def crash(self, *, lose_unsynced: bool = False) -> None:
        self.alive = False
        self.disk.crash(self.sim.rng, lose_unsynced=lose_unsynced)
        for op in self.waiting.values():
            self.sim.give_up(op)
        for _, cid, op in self.reads:
            self.sim.give_up(op)

    def tick_delay(self) -> float:
        return TICK_S / self.rate

    # --- the shell loop: input -> Ready -> persist -> (synced) send and apply -----------------

    def flush(self) -> None:
        rd = self.core.ready()
        if not rd:
            return
        sim = self.sim
        for m in rd.send_first:
            sim.send(self.id, m.dst, encode(m))
        applied = rd.apply_first and not any(p.committed and not done for p, _, done in self.pending)
        if applied:
            self.apply_all(rd.committed)
        if rd.persist:
            self.disk.frames.extend(encode(r) for r in rd.persist)
            latency = sim.rng.uniform(0.0002, 0.003) if sim.rng.random() > 0.02 else 0.05
            if rd.send_first and sim.faulting and sim.rng.random() < sim.faults.leader_unsynced:
                latency = sim.rng.uniform(0.01, 0.05)  # long enough for peers to answer meanwhile
                sim.after(sim.rng.uniform(0, latency), ("crash_unsynced", self.id, self.incarnation))
            self.sync_done = max(self.sync_done, sim.now + latency)
        if self.sync_done <= sim.now and not self.pending:
            self.synced(rd, len(self.disk.frames), applied)
        else:
            self.pending.append((rd, len(self.disk.frames), applied))
            sim.at(self.sync_done, ("synced", self.id, self.incarnation))

    def on_synced(self) -> None:
        self.synced(*self.pending.popleft())

    def synced(self, rd, frames: int, applied: bool) -> None:
        sim = self.sim
        self.disk.synced = max(self.disk.synced, frames)
        for m in rd.messages:
            sim.send(self.id, m.dst, encode(m))
        if not applied:
            self.apply_all(rd.committed)
        for peer, meta in rd.snapshots:
            self.send_snapshot(peer, meta)
        self.core.persisted(rd.durable)
        self.flush()

    def apply_all(self, entries: list) -> None:
        for e in entries:
            self.apply(e)
        if self.reads:
            self.serve_reads()

    def apply(self, e) -> None:
        sim = self.sim
        if e.slot <= self.applied:
            return  # covered by a snapshot installed while this Ready waited for its write
        assert e.slot == self.applied + 1, (self.id, e.slot, self.applied)
        self.applied = e.slot
        if e.kind == COMMAND and not self.log_only:
            kind, req, key, value = _parse_command(e.data)
            self.kv[key] = value if kind == _PUT else self.kv.get(key, "") + value
            op = self.waiting.pop(req, None)
            if op is not None:
                sim.complete(op, None)

    def serve_reads(self) -> None:
        keep = []
        for index, cid, op in self.reads:
            if self.applied >= index:
                self.sim.complete(op, self.kv.get(op.key))
            else:
                keep.append((index, cid, op))
        self.reads = keep

    def on_tick(self) -> None:
        sim = self.sim
        core = self.core
        now = self.local(sim.now)
        core.tick(now)
        if core.wake_at() <= now:  # a shell that sleeps until then would wake at once, forever
            raise Failure(f"replica {self.id} asks to be ticked at {core.wake_at()}, not after {now}")
        if self.log_only:
            # A log replica keeps only the recent log; it has no state to snapshot.
            if core.commit - COMPACT_EVERY - core.store.snap.index >= COMPACT_EVERY:
                core.compact(core.commit - COMPACT_EVERY)
        elif self.applied - core.store.snap.index >= COMPACT_EVERY:
            # Write the state file first: the record that drops the log must never precede it.
            meta = SnapshotMeta(self.applied, core.store.ballot_at(self.applied), core.members_at(self.applied))
            self.disk.snapshot = encode(SnapshotChunk(0, self.id, self.id, ZERO_BALLOT, meta, 0, True,
                                                      _kv_bytes(self.kv)))
            core.compact(self.applied)
        self.flush()
        if len(self.disk.frames) > DISK_REWRITE_FRAMES and not self.pending:
            self.rewrite_disk()
        sim.after(self.tick_delay(), ("tick", self.id, self.incarnation))

    def rewrite_disk(self) -> None:
        """Replace the log file by one holding only the current state (rename in a real file system)."""
        store = self.core.store
        frames = [encode(store.snap)]
        if store.entries:
            frames.append(encode(Entries(store.log())))
        frames.append(encode(HardState(store.promised, store.commit)))
        self.disk.frames = frames
        self.disk.synced = len(frames)

    # --- snapshots ----------------------------------------------------------------------------

    def send_snapshot(self, peer: int, meta: SnapshotMeta) -> None:
        # The file may be newer than the request (a snapshot taken since): it covers as much or more.
        chunk = decode(self.disk.snapshot)
        assert chunk.meta.index >= meta.index, (chunk.meta, meta)
        meta, data = chunk.meta, chunk.data
        size = max(1, len(data) // 2 + 1)  # two chunks: the stream is reassembled in order
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        for seq, piece in enumerate(pieces):
            m = SnapshotChunk(0, self.id, peer, self.core.store.promised, meta, seq, seq == len(pieces) - 1, piece)
            self.sim.send(self.id, peer, encode(m))

    def on_snapshot_chunk(self, m: SnapshotChunk) -> None:
        """Gather one stream's chunks (the network reorders them); a different stream replaces it."""
        if self.snap_in.get("stream") != (m.src, m.meta):
            self.snap_in = {"stream": (m.src, m.meta)}
        self.snap_in[m.seq] = m.data
        if m.last:
            self.snap_in["count"] = m.seq + 1
        count = self.snap_in.get("count")
        if count is None or len(self.snap_in) != count + 2:
            return
        data = b"".join(self.snap_in[i] for i in range(count))
        self.snap_in = {}
        core = self.core
        if m.meta.index > core.commit:
            if not self.log_only:
                self.disk.snapshot = encode(SnapshotChunk(0, self.id, self.id, ZERO_BALLOT, m.meta, 0, True, data))
                self.kv = dict(json.loads(data))
            self.sim.stats["snapshots_installed"] += 1
            self.applied = m.meta.index
        core.install_snapshot(m, self.local(self.sim.now))
        self.checked = max(self.checked, core.store.snap.index)
        self.flush()


@dataclass
class Client:
    id: int
    hint: int | None = None
    ops: int = 0


class Sim:
    def __init__(self, seed: int, steps: int, *, replicas: int = 3, log_replicas: int = 0,
                 faults: Faults | None = None, timing: Timing = SIM_TIMING, clients: int = 3,
                 drift: float | None = None):
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.timing = timing
        # How fast or slow clocks really run; more than timing.drift_max breaks the lease's premise.
        self.drift = timing.drift_max if drift is None else drift
        self.faults = faults or Faults()
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.stats = {k: 0 for k in ("messages", "dropped", "duplicated", "corrupted_frames", "crashes",
                                     "disk_corruptions_detected", "partitions", "elections", "swaps",
                                     "transfers", "snapshots_installed", "leader_unsynced_crashes", "learned")}
        self.answers: list[tuple[int, tuple]] = []  # (slot, ballot) a leader has told of, for ``learn``
        self.chosen: dict[int, tuple] = {}  # slot -> (kind, data) of every slot seen committed
        self.history: list[Op] = []
        self.eventual: list[tuple[str, str | None]] = []
        self.cut: set[tuple[int, int]] = set()  # (src, dst) links that deliver nothing
        self.next_id = replicas + log_replicas
        self.next_req = 1
        members = tuple([(i, STORAGE) for i in range(replicas)]
                        + [(replicas + i, LOG) for i in range(log_replicas)])
        self.founding = members  # every replica, joining later or not, starts from it
        self.nodes: dict[int, Node] = {}
        for rid, role in members:
            self.nodes[rid] = Node(self, rid, role, members)
        self.clients = [Client(i) for i in range(clients)]
        for c in self.clients:
            self.after(self.rng.uniform(0, 1), ("client", c.id))
        self.plan: list | None = None  # the operator's membership changes still to make
        self.open_ops: dict[int, tuple[Client, Op]] = {}  # id(op) -> client waiting for it
        self.faulting = True
        self.lease_holder: tuple | None = None

    # --- event plumbing --------------------------------------------------------------------

    def at(self, t: float, event: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, event))

    def after(self, dt: float, event: tuple) -> None:
        self.at(self.now + dt, event)

    def send(self, src: int, dst: int, frame: bytes) -> None:
        f, rng = self.faults, self.rng
        self.stats["messages"] += 1
        if (src, dst) in self.cut:
            self.stats["dropped"] += 1
            return
        if self.faulting and rng.random() < f.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if self.faulting and rng.random() < f.duplicate else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            if self.faulting and rng.random() < f.corrupt:
                b = bytearray(frame)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                frame = bytes(b)
            delay = 0.0005 + rng.expovariate(1 / 0.002)
            if self.faulting and rng.random() < f.slow:
                delay += rng.uniform(0, 0.5)
            self.after(delay, ("deliver", dst, frame))

    def run(self) -> dict:
        step = 0
        while step < self.steps:
            self.step_once()
            step += 1
            self.maybe_fault()
        self.stats["steps"] = step + self.quiesce()
        self.stats["sim_seconds"] = round(self.now, 3)
        self.final_checks()
        return self.stats

    def step_once(self) -> None:
        t, _, event = heapq.heappop(self.queue)
        self.now = t
        kind = event[0]
        if kind == "deliver":
            self.deliver(event[1], event[2])
        elif kind == "client":
            self.client_step(self.clients[event[1]])
        elif kind == "timeout":
            self.give_up(event[1])
        elif kind == "restart":
            node = self.nodes[event[1]]
            if not node.alive and not node.failed and not node.retired:
                node.start()
        elif kind == "heal":
            self.cut = set()
        elif kind == "operator":
            self.operate()
        else:
            node = self.nodes[event[1]]
            if not node.alive or node.incarnation != event[2]:
                return
            if kind == "tick":
                node.on_tick()
            elif kind == "crash_unsynced":
                self.crash_unsynced(node)
            else:
                node.on_synced()
            self.check_committed(node)
        self.check_lease()

    def deliver(self, dst: int, frame: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None or not node.alive:
            return
        try:
            m = decode(frame)
        except FrameError:
            self.stats["corrupted_frames"] += 1
            return
        if type(m) is SnapshotChunk:
            node.on_snapshot_chunk(m)
        else:
            was_leader = node.core.role == LEADER
            node.core.step(m, node.local(self.now))
            self.stats["elections"] += node.core.role == LEADER and not was_leader
            node.flush()
        self.check_committed(node)

    # --- checks -----------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        raise Failure(f"seed {self.seed} at t={self.now:.4f}: {what}\n"
                      f"replay: python -m dynstore.replication.sim --seed {self.seed} --steps {self.steps}")

    def check_committed(self, node: Node) -> None:
        store = node.core.store
        for slot in range(max(node.checked, store.snap.index) + 1, store.commit + 1):
            e = store.entry(slot)
            value = (e.kind, e.data)
            seen = self.chosen.setdefault(slot, value)
            if seen != value:
                self.fail(f"replica {node.id} committed {value} at slot {slot}, chosen was {seen}")
        node.checked = max(node.checked, store.commit)

    def check_lease(self) -> None:
        holders = [n.id for n in self.nodes.values() if n.alive and n.core.lease_valid(n.local(self.now))]
        if len(holders) > 1:
            self.fail(f"replicas {holders} hold a valid lease at once")

    def final_checks(self) -> None:
        result = linearizability.check(self.history, budget_per_key=2_000_000)
        self.stats["ops"] = len(self.history)
        self.stats["lin_steps"] = result.explored
        self.stats["lin_unknown"] = result.unknown
        if not result.ok:
            ops = sorted((o for o in self.history if o.key == result.key), key=lambda o: o.call)
            lines = "\n".join(f"  {o.kind} {o.value!r} [{o.call:.4f}, {o.ret}]" for o in ops[-40:])
            self.fail(f"history of key {result.key!r} is not linearizable; last operations:\n{lines}")
        values: dict[str, set] = {k: {None} for k in KEYS}
        kv: dict = {}
        for slot in sorted(self.chosen):
            kind, data = self.chosen[slot]
            if kind == COMMAND:
                op, _, key, value = _parse_command(data)
                kv[key] = value if op == _PUT else kv.get(key, "") + value
                values[key].add(kv[key])
        final = _kv_bytes(kv)
        for node in self.nodes.values():
            if node.alive and not node.log_only and node.applied == max(self.chosen, default=0):
                if _kv_bytes(node.kv) != final:
                    self.fail(f"replica {node.id}'s state is not the replay of the committed log")
        for key, value in self.eventual:
            if value not in values[key]:
                self.fail(f"an eventually consistent read of {key!r} returned {value!r}, never its value")

    # --- end of run: heal, wait for agreement -------------------------------------------------

    def quiesce(self) -> int:
        self.faulting = False
        self.cut = set()
        for node in self.nodes.values():
            if not node.alive and not node.failed and not node.retired:
                self.at(self.now, ("restart", node.id))
        deadline = self.now + QUIET_S_MAX
        steps = 0
        while self.now < deadline:
            self.step_once()
            steps += 1
            if steps % 200 == 0 and self.plan is None:
                if self.converged():
                    return steps
                self.replace_failed()
        live = {n.id: (n.core.role, n.core.commit, n.applied) for n in self.nodes.values() if n.alive}
        self.fail(f"no agreement {QUIET_S_MAX} s after faults stopped: {live}")
        return steps

    def converged(self) -> bool:
        leaders = [n for n in self.nodes.values() if n.alive and n.core.role == LEADER]
        if len(leaders) != 1:
            return False
        leader = leaders[0].core
        members = dict(leader.members)
        nodes = [self.nodes[r] for r in members]
        if not all(n.alive for n in nodes):
            return False
        last = leader.store.last_slot
        if any(n.core.commit != last or n.pending for n in nodes):
            return False
        states = {_kv_bytes(n.kv) for n in nodes if members[n.id] == STORAGE}
        if len(states) != 1 or any(n.applied != last for n in nodes if members[n.id] == STORAGE):
            if all(n.applied == last for n in nodes if members[n.id] == STORAGE):
                self.fail(f"storage replicas applied the same log to different states: {states}")
            return False
        return True

    # --- faults and the operator ----------------------------------------------------------------

    def replace_failed(self) -> None:
        """The operator notices a member whose disk failed and replaces it."""
        members = self.committed_members()
        if self.plan is None and members and any(self.nodes[r].failed for r, _ in members):
            self.start_swap()

    def maybe_fault(self) -> None:
        self.replace_failed()
        f, rng = self.faults, self.rng
        r = rng.random()
        alive = [n for n in self.nodes.values() if n.alive]
        if r < f.crash and alive:
            node = rng.choice(alive)
            node.crash()
            self.stats["crashes"] += 1
            self.after(rng.uniform(0.1, 3.0), ("restart", node.id))
        elif r < (f.crash + f.partition) and not self.cut:
            ids = [n.id for n in self.nodes.values() if not n.retired]
            leaders = [n.id for n in alive if n.core.role == LEADER]
            if leaders and rng.random() < 0.5:
                side = {leaders[0]}
                others = rng.sample([i for i in ids if i != leaders[0]], rng.randint(1, len(ids) - 1))
            else:
                side = set(rng.sample(ids, rng.randint(1, max(1, len(ids) // 2))))
                others = [i for i in ids if i not in side]
            both = rng.random() < 0.7
            for a in side:
                for b in others:
                    self.cut.add((a, b))
                    if both or rng.random() < 0.5:
                        self.cut.add((b, a))
            self.stats["partitions"] += 1
            self.after(rng.uniform(0.2, 4.0), ("heal",))
        elif r < (f.crash + f.partition + f.bitflip) and self.plan is None:
            # One damaged disk at a time: two of three would lose the group's data for good.
            if all(not (n.failed or n.flipped) for n in self.nodes.values()):
                node = rng.choice([n for n in self.nodes.values() if not n.retired])
                node.flipped = node.disk.flip(rng)
                if node.flipped and node.alive:
                    # Latent corruption is found when the log is read again: at the restart.
                    node.crash()
                    self.after(rng.uniform(0.1, 3.0), ("restart", node.id))
        elif r < (f.crash + f.partition + f.bitflip + f.swap) and self.plan is None:
            self.start_swap()
        elif r < (f.crash + f.partition + f.bitflip + f.swap + f.transfer):
            self.transfer()
        elif r < (f.crash + f.partition + f.bitflip + f.swap + f.transfer + f.learn):
            self.learn()

    def transfer(self) -> None:
        """Ask a leader to hand the lead to a storage peer (done only once that one holds the whole
        log, and only at the moment asked: a leader with entries in flight declines)."""
        leader = next((n for n in self.nodes.values() if n.alive and n.core.role == LEADER), None)
        if leader is None:
            return
        peers = [r for r, role in leader.core.members if role == STORAGE and r != leader.id]
        if not peers:
            return
        if leader.core.transfer(self.rng.choice(peers), leader.local(self.now)):
            self.stats["transfers"] += 1
        leader.flush()

    def learn(self) -> None:
        """A leader tells of its last chosen entry of its own ballot, as its answers to other
        nodes do, and a replica hears of one such, this one or an older one."""
        rng = self.rng
        leader = next((n for n in self.nodes.values() if n.alive and n.core.role == LEADER), None)
        if leader is not None:
            ballot = leader.core.chosen(leader.core.commit)
            if ballot is not None:
                self.answers.append((leader.core.commit, ballot))
        alive = [n for n in self.nodes.values() if n.alive]
        if self.answers and alive:
            node = rng.choice(alive)
            slot, ballot = rng.choice(self.answers[-20:])
            if node.core.learn(slot, ballot):
                self.stats["learned"] += 1
            node.flush()

    def crash_unsynced(self, node: Node) -> None:
        """Crash a node, losing every frame not yet synced, and cut off the peer holding the
        most of the log until a new leader may have been elected without it."""
        if not self.faulting:
            return  # the stall began before the quiet period; it ends quietly
        node.crash(lose_unsynced=True)
        self.stats["leader_unsynced_crashes"] += 1
        self.after(self.rng.uniform(0.05, 0.5), ("restart", node.id))
        peers = [r for r, _ in node.core.members if r != node.id and self.nodes[r].alive]
        if peers and not self.cut:
            peer = max(peers, key=lambda r: self.nodes[r].core.store.last_slot)
            self.cut = {(peer, r) for r in self.nodes if r != peer} | {(r, peer) for r in self.nodes if r != peer}
            self.after(self.rng.uniform(2.0, 5.0), ("heal",))

    def start_swap(self) -> None:
        members = self.committed_members()
        if members is None:
            return
        failed = [(r, role) for r, role in members if self.nodes[r].failed]
        self.stats["swaps"] += 1
        log_id = self.next_id
        self.next_id += 1
        if failed and failed[0][1] == LOG:
            self.plan = [("add", log_id, LOG), ("remove", failed[0][0], None)]
        else:
            victim = failed[0][0] if failed else self.rng.choice([r for r, role in members if role == STORAGE])
            new_id = self.next_id
            self.next_id += 1
            self.plan = [("add", log_id, LOG), ("remove", victim, None), ("add", new_id, STORAGE),
                         ("remove", log_id, None)]
        self.after(0.0, ("operator",))

    def committed_members(self):
        """The newest committed membership any live replica knows (None while no one leads).

        Not simply the leader's: a deposed leader that has not noticed yet knows an older one."""
        if not any(n.alive and n.core.role == LEADER for n in self.nodes.values()):
            return None
        newest = max((n for n in self.nodes.values() if n.alive), key=lambda n: n.core.commit)
        return newest.core.members_at(newest.core.commit)

    def operate(self) -> None:
        """Drive the plan one membership change at a time, retrying until each is committed."""
        if not self.plan:
            self.plan = None
            return
        action, rid, role = self.plan[0]
        members = self.committed_members()
        if members is not None:
            current = dict(members)
            if (action == "add") == (rid in current):
                self.plan.pop(0)  # done
                if action == "remove":
                    self.retire(rid)
                self.after(0.0, ("operator",))
                return
            leader = next(n for n in self.nodes.values() if n.alive and n.core.role == LEADER)
            if action == "add":
                if rid not in self.nodes:
                    self.nodes[rid] = Node(self, rid, role, self.founding)
                current[rid] = role
            else:
                del current[rid]
            try:
                leader.core.propose_members(tuple(sorted(current.items())), leader.local(self.now))
                leader.flush()
            except (NotLeader, Busy):
                pass
        self.after(0.3, ("operator",))

    def retire(self, rid: int) -> None:
        node = self.nodes[rid]
        if node.alive:
            node.crash()
        node.retired = True

    # --- clients ------------------------------------------------------------------------------

    def client_step(self, c: Client) -> None:
        rng = self.rng
        if not self.faulting:
            return
        key = rng.choice(KEYS)
        r = rng.random()
        storage = [n for n in self.nodes.values() if n.alive and not n.log_only]
        if r < 0.1:
            if storage:
                node = rng.choice(storage)
                self.eventual.append((key, node.kv.get(key)))
            self.after(rng.uniform(0.001, 0.05), ("client", c.id))
            return
        target = c.hint if c.hint is not None else (rng.choice(storage).id if storage else None)
        node = self.nodes.get(target) if target is not None else None
        if node is None or not node.alive:
            c.hint = None
            self.after(0.05, ("client", c.id))
            return
        now = node.local(self.now)
        c.ops += 1
        try:
            if r < 0.45:
                index = node.core.read(now)
                op = self.open(c, Op("get", key, None, self.now, None))
                node.reads.append((index, c.id, op))
                node.serve_reads()
            else:
                kind = _PUT if r < 0.7 else _APPEND
                value = f"{c.id}.{c.ops};"
                req = self.next_req
                self.next_req += 1
                node.core.propose(_command(kind, req, key, value), now)
                node.waiting[req] = self.open(c, Op("put" if kind == _PUT else "append", key, value, self.now, None))
                node.flush()
        except NotLeader as exc:
            c.hint = exc.leader if exc.leader != node.id else None
            self.after(0.02 if exc.leader is not None else 0.2, ("client", c.id))
        except Busy:
            self.after(0.1, ("client", c.id))

    def open(self, c: Client, op: Op) -> Op:
        self.open_ops[id(op)] = (c, op)
        self.after(OP_TIMEOUT_S, ("timeout", op))
        return op

    def complete(self, op: Op, output) -> None:
        entry = self.open_ops.pop(id(op), None)
        if entry is None:
            return  # answered after the client gave up
        c, _ = entry
        if op.kind == "get":
            self.history.append(op._replace(value=output, ret=self.now))
        else:
            self.history.append(op._replace(ret=self.now))
        self.after(self.rng.uniform(0.001, 0.05), ("client", c.id))

    def give_up(self, op: Op) -> None:
        entry = self.open_ops.pop(id(op), None)
        if entry is None:
            return
        c, _ = entry
        c.hint = None
        if op.kind != "get":
            self.history.append(op)  # may or may not have taken effect
        self.after(self.rng.uniform(0.001, 0.05), ("client", c.id))


def run_seed(seed: int, steps: int) -> dict:
    return Sim(seed, steps, log_replicas=seed % 2).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynstore.replication.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("--seeds", type=int, default=20, help="run seeds 0..N-1")
    ap.add_argument("--first", type=int, default=0, help="first seed of the range")
    ap.add_argument("--steps", type=int, default=3000, help="steps of faults per seed, before the quiet period")
    ap.add_argument("--long", action="store_true", help="many more seeds and steps (also DYNSTORE_LONG=1)")
    args = ap.parse_args(argv)
    if args.long or os.environ.get("DYNSTORE_LONG") == "1":
        args.seeds, args.steps = max(args.seeds, 2000), max(args.steps, 20000)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    total = 0
    failures = []
    started = time.monotonic()
    for seed in seeds:
        try:
            stats = run_seed(seed, args.steps)
        except Exception as exc:  # a crash of the core or the shell fails the seed like a broken invariant
            failures.append(seed)
            if not isinstance(exc, Failure):
                traceback.print_exc()
                exc = f"seed {seed}: {type(exc).__name__}\nreplay: python -m dynstore.replication.sim --seed {seed} --steps {args.steps}"
            print(exc, file=sys.stderr)
            continue
        total += stats["steps"]
        if args.seed is not None:
            print(json.dumps(stats, sort_keys=True))
    print(f"{len(seeds)} seeds, {total} steps, {len(failures)} failed {failures} "
          f"in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
