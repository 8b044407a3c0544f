"""A partition served by a replication group: this process's replica of it, and the
``Partition`` face the operations use (see partition.py for the contract).

``ReplicaGroup`` owns this node's ``Replica`` of one group (dynstore/replication/replica.py)
and its ``Transport``, registered with the process's shared ``Listener``. The replica's
files are the group's directory (log/, tree.db, tree.meta; see replica.py).

Reads and writes, as partition.py asks of them:

* ``get``/``scan`` read this replica's applied tree: committed on a quorum, possibly a
  little behind the leader (an eventually consistent read). The request router
  (dynstore/node/routing.py) sends strongly consistent reads to the leader and runs
  them after ``read_barrier``, which makes the applied tree current.
* ``get_latest`` is the applied tree overlaid with the writes this replica proposed
  that have not come back applied yet. Only the leader writes, and only after
  ``read_barrier`` (everything committed before its term is applied), so the overlay
  holds every write not yet in the tree and a read-modify-write sees the latest state.
* ``write`` proposes the batch (one log entry, engine.encode_batch) before its first
  suspension, so it is atomic with the ``get_latest`` reads before it, and returns once
  the entry is committed on a quorum, durable and applied here. A leader that steps down
  keeps waiting for its slot (replica.py ``_orphan_waiters``): applied as a follower, the
  slot returns the write if it was chosen there; if another command was, it fails with
  NotChosen: nothing was written. If the replica is cut off for three election timeouts, it
  fails with NotLeader: the write may have been committed (under the next leader).
  NotLeader or Busy before the proposal (the replica no longer leads, hands the lead over,
  or holds too many proposals) means nothing was written; ``PROPOSED`` tells the cases apart
  for the request router: it lists the groups a request proposed to, less those whose
  proposal came back NotChosen.

Key ranges and splits. A table's partition is a range of item storage keys [start, end); the
group's range record (schema.RANGE_KEY in its tree, JSON ``{"start", "end", "gen", "children":
[[start, group], ...]}`` with keys in hex, end null for the last) says which range the group
holds, and which groups took the upper parts of it when it split. A group with no record
holds every key (a table's first group). Every command of a group is ``u64 gen | batch``:
``gen`` is the range record's generation when the write was proposed, and a command whose
generation is not the group's at apply time is refused with StaleRange (not applied, so its
request can run again where its key now lives). A split is a command too, whose batch is the
one op ``(RANGE_KEY, {"key", "child", "members", "desc"})``: every replica applies it at the
same slot by seeding the child group's replica directory with the items from ``key`` on
(replica.seed_replica; skipped when the directory is already seeded, as after a crash that
came before the parent's tree was checkpointed past the split), then deleting them here and
writing the new range record with ``gen + 1``. It is applied in a task (replica.Later) that
reads the tree a slice at a time: the node's other groups go on, this group's later entries
wait for it. Writes in flight under the old generation are then refused, so running totals
(the statistics record) computed before the split are never applied after it.

A ``ReplicatedPartition`` is a view of the group for one epoch: the router hands out a new
view once the replica leads with everything committed before its term applied (and, until
then, whenever it applied more), and whenever its range changes, so per-partition figures the operations cache by
partition (the statistics record, store.py) are reloaded from current state after another
leader wrote it, never kept from a tree that was still catching up.
"""
from __future__ import annotations

import asyncio
import contextvars
import shutil
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import orjson

from dynstore import net
from dynstore.api.operations.schema import RANGE_KEY
from dynstore.api.operations.split import Cut
from dynstore.limits import (CHECKPOINT_ENTRIES, ELECTION_TIMEOUT_S, HOT_KEY_SAMPLE, LOG_KEEP_ENTRIES,
                             REPLICA_WAL_SEGMENT_BYTES, SPLIT_SLICE_ITEMS, TRANSFER_POLL_S, TRANSFER_WAIT_S)
from dynstore.replication.errors import NotChosen, NotLeader, StaleRange
from dynstore.replication.messages import LOG, STORAGE
from dynstore.replication.paxos import LEADER, Timing
from dynstore.replication.replica import SEED_SLOT, Later, Replica, is_seeded, seed_replica
from dynstore.replication.transport import Listener, Transport
from dynstore.storage.engine import decode_batch, encode_batch

# The groups the running request proposed to (the request router sets a list per request): a
# request whose leader stepped down before it proposed anything did nothing, and runs again.
PROPOSED: contextvars.ContextVar[list | None] = contextvars.ContextVar("PROPOSED", default=None)
_GEN = struct.Struct("<Q")


def _hex(key: bytes | None) -> str | None:
    return None if key is None else key.hex()


def _unhex(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


@dataclass(frozen=True)
class KeyRange:
    """The item storage keys [start, end) a group holds, and the groups split off from it."""
    start: bytes = b""
    end: bytes | None = None  # None: no end
    gen: int = 0  # splits of this group so far
    children: tuple = ()  # (start, group) of each group split off, in the order of the splits

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    def encode(self) -> bytes:
        return orjson.dumps({"start": _hex(self.start), "end": _hex(self.end), "gen": self.gen,
                             "children": [[_hex(start), group] for start, group in self.children]})

    @classmethod
    def decode(cls, stored: bytes | None) -> "KeyRange":
        if stored is None:
            return cls()
        record = orjson.loads(stored)
        return cls(_unhex(record["start"]), _unhex(record["end"]), record["gen"],
                   tuple((_unhex(start), group) for start, group in record["children"]))


def _hold_only(tree, slot: int, data: bytes) -> None:
    """A log replica's state machine: it keeps the log and applies nothing."""
    return None


class ReplicaGroup:
    """Replica ``node_id`` of ``group``; ``peers`` maps node id -> replication (host, port) of
    the founding members, ``addresses`` (default ``peers``) of every node a later membership
    may name.

    ``directory_of(group)`` is where this node keeps a replica of another group (the child
    of a split), and ``on_child(group)`` is called once a split has seeded one. ``child``
    says this group was split off another: its state then starts as a seed (SEED_SLOT).
    ``joining`` says the replica is added to a running group: it waits for a snapshot
    (replica.py) and ``peers`` are then the members it was added to. A ``log_only`` replica
    (a LOG member, added while a lost replica is rebuilt elsewhere) holds the log and no
    state: it applies nothing, serves nothing and never leads.

    Membership changes (``reconfigure``, at the leader) add one replica or remove one at a
    time. Every replica links to each member the log names, and only to those (``_follow_members``).
    """

    def __init__(self, group: int, directory: str, node_id: int, peers: dict[int, net.Address],
                 listener: Listener, *, on_fatal, election_timeout: float = ELECTION_TIMEOUT_S,
                 backend: str | None = None, sync: str = "auto", directory_of=None, on_child=None,
                 child: bool = False, secret: bytes = b"", checkpoint_entries: int = CHECKPOINT_ENTRIES,
                 log_keep_entries: int = LOG_KEEP_ENTRIES, joining: bool = False, addresses=None,
                 log_only: bool = False):
        self.group = group
        self.directory = directory
        self.node_id = node_id
        self._listener = listener
        self._backend = backend
        self._directory_of = directory_of
        self._on_child = on_child
        self._child = child
        self._addresses = dict(addresses if addresses is not None else peers)
        self.log_only = log_only
        members = tuple((rid, STORAGE) for rid in sorted(peers) if not (joining and rid == node_id))
        self.transport = Transport(node_id, group, peers, self._on_message, on_fatal=on_fatal, secret=secret)
        self.replica = Replica(directory, node_id, members, self.transport.send, group=group,
                               timing=Timing(election_timeout=election_timeout,
                                             heartbeat_interval=election_timeout / 10),
                               seed=group ^ node_id, backend=backend, sync=sync, on_fatal=on_fatal,
                               apply=_hold_only if log_only else self._apply, checkpoint_entries=checkpoint_entries,
                               log_keep_entries=log_keep_entries, segment_bytes=REPLICA_WAL_SEGMENT_BYTES,
                               joining=joining)
        self._members_seen = None  # the membership the transport was last linked to
        self._leadership = None  # _leadership_now() when the waiting began: a change wakes leader_change
        self._leadership_waiters: set[asyncio.Future] = set()
        self._range = KeyRange.decode(self.replica.tree.get(RANGE_KEY))
        self._range_tree = self.replica.tree  # the tree _range was read from (a snapshot replaces it)
        # Writes proposed here and not yet applied: key -> newest value, and how many writes of
        # the key are in flight (the overlay of get_latest). A split starts both afresh: the
        # writes still in flight then are refused.
        self._latest: dict[bytes, bytes | None] = {}
        self._inflight: dict[bytes, int] = {}
        # Each write in flight: a future set to whether it was applied, and its keys (for settle).
        self._writes: dict[asyncio.Future, list[bytes]] = {}
        self._view: ReplicatedPartition | None = None
        self._view_epoch = None
        # Requests this node ran on the group, and the item keys of the latest ones: what the
        # control plane reads to find hot partitions and where to cut them (autoadmin/heat.py).
        self.requests = 0
        self.sampled: deque[bytes] = deque(maxlen=HOT_KEY_SAMPLE)

    def _on_message(self, m) -> None:
        self.replica.step(m)
        self._follow_members()
        self._note_leadership()

    def _follow_members(self) -> None:
        """Link to every member the log names that this replica has no link to yet, and drop
        the links to replicas it no longer names (a change the log loses again links back)."""
        members = self.replica.core.members
        if members is not self._members_seen:
            self._members_seen = members
            named = {rid for rid, _ in members}
            for rid in named:
                self.link(rid)
            for rid in set(self.transport.peers) - named:
                self.transport.remove_peer(rid)

    def link(self, rid: int) -> None:
        """Link to replica ``rid`` (a member a joining replica is told of)."""
        if rid in self._addresses:
            self.transport.add_peer(rid, self._addresses[rid])

    def members(self) -> list[int]:
        return [rid for rid, _ in self.replica.core.members]

    def log_members(self) -> list[int]:
        return [rid for rid, role in self.replica.core.members if role == LOG]

    def next_to_add(self, hosts: list[int], logs: list[int]) -> tuple[int, bool] | None:
        """(node, as a log replica) that ``reconfigure`` adds next: log replicas first."""
        members = set(self.members())
        for node in sorted(set(logs) - members) + sorted(set(hosts) - members):
            return node, node in logs
        return None

    def next_to_remove(self, hosts: list[int], logs: list[int]) -> int | None:
        """The member ``reconfigure`` removes once no node is to be added: this leader last."""
        return min(set(self.members()) - set(hosts) - set(logs), key=lambda r: (r == self.node_id, r), default=None)

    def reconfigure(self, hosts: list[int], logs: list[int], ready: bool) -> bool:
        """One step, at the leader, toward the membership of storage replicas ``hosts`` and
        log replicas ``logs``: add the next missing node (``next_to_add``) once ``ready`` says
        its replica holds a snapshot (else ship it one), or else remove the first extra one
        (this leader last: it steps down once that commits, and the others elect a leader).
        True once the members are those. Busy while the previous change is in flight."""
        members = dict(self.replica.core.members)
        wanted = {**{n: STORAGE for n in hosts}, **{n: LOG for n in logs}}
        remove = self.next_to_remove(hosts, logs)
        adding = self.next_to_add(hosts, logs)
        if adding is not None:
            node, log_only = adding
            self.link(node)
            if not ready:
                self.replica.ship_snapshot(node, log_only=log_only)
                return False
            members[node] = wanted[node]
        elif remove is not None:
            del members[remove]
        else:
            return True
        self.replica.change_members(tuple(sorted(members.items())))
        return False

    def start(self) -> None:
        self._listener.transports[self.group] = self.transport
        self.transport.dial()
        self._follow_members()  # a membership changed since the founding one, found in the log
        self.replica.start()

    # --- key range ----------------------------------------------------------------------------

    @property
    def range(self) -> KeyRange:
        if self.replica.tree is not self._range_tree:
            self._range_tree = self.replica.tree
            self._range = KeyRange.decode(self._range_tree.get(RANGE_KEY))
        return self._range

    @property
    def seeded(self) -> bool:
        """This replica holds the group's state (a replica opened empty waits for a snapshot)."""
        return not self.log_only and not self.replica.joining and (not self._child or self.replica.applied >= SEED_SLOT)

    def _apply(self, tree, slot: int, data: bytes):
        (gen,) = _GEN.unpack_from(data)
        current = self.range
        if gen != current.gen:
            return StaleRange(self.group)
        ops = decode_batch(data[_GEN.size:])
        if ops and ops[0][0] == RANGE_KEY:
            return Later(self._split(tree, current, orjson.loads(ops[0][1])))
        else:
            tree.write_batch(ops)
        return None

    async def _split(self, tree, current: KeyRange, command: dict) -> None:
        """Apply a split (a Later of the replica: nothing else changes the tree meanwhile):
        read the tree a slice at a time, yielding to the event loop between slices, seed the
        child's replica in a thread, then cut this part down in one batch."""
        key, child = bytes.fromhex(command["key"]), command["child"]
        assert current.holds(key) and key > current.start, (self.group, key, current)
        cut = Cut(command["desc"], key)
        start = None
        while True:
            items = list(tree.scan(start, limit=SPLIT_SLICE_ITEMS))
            cut.feed((k, v) for k, v in items if k != RANGE_KEY)
            if len(items) < SPLIT_SLICE_ITEMS:
                break
            start = items[-1][0] + b"\0"  # the least key after the slice's last
            await asyncio.sleep(0)
        left_ops, right_items = cut.batches()
        directory = self._directory_of(child)
        if not is_seeded(directory):
            shutil.rmtree(directory, ignore_errors=True)
            right = sorted(right_items + [(RANGE_KEY, KeyRange(key, current.end).encode())])
            members = tuple(tuple(m) for m in command["members"])
            await asyncio.to_thread(seed_replica, directory, right, members, backend=self._backend)
        self._range = KeyRange(current.start, key, current.gen + 1, current.children + ((key, child),))
        tree.write_batch(left_ops + [(RANGE_KEY, self._range.encode())])
        self._latest, self._inflight = {}, {}
        asyncio.get_running_loop().call_soon(self._on_child, child)

    async def split(self, key: bytes, child: int, desc: dict) -> bool:
        """Split off the keys from ``key`` on into new group ``child`` (at the leader, after
        read_barrier); returns once applied here, or False at once when ``key`` is not inside
        the group's range any more (it split meanwhile: the caller plans again)."""
        current = self.range
        if not (current.holds(key) and key > current.start) or self.log_members():
            # Split again; or not while a log replica stands in: it holds no state to seed from.
            return False
        members = [list(m) for m in self.replica.core.members]
        command = orjson.dumps({"key": key.hex(), "child": child, "members": members, "desc": desc})
        await self.replica.put(_GEN.pack(current.gen) + encode_batch([(RANGE_KEY, command)]))
        return True

    # --- leadership ---------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.replica.core.role == LEADER

    def _leadership_now(self) -> tuple:
        core = self.replica.core
        return core.role, core.leader, core.ballot, core.lease_valid(self.replica.clock())

    def _note_leadership(self, *, ended_hand_over: bool = False) -> None:
        """Wake the requests waiting for a leader (``leader_change``) if this replica's role,
        the leader it knows of, the ballot or whether it may serve as leader (a new leader may
        once its first entry commits, paxos.py ``lease_valid``) changed, or a hand-over of its
        lead just ended. Nothing to compare while no request waits (every message comes here)."""
        if not self._leadership_waiters:
            return
        seen = self._leadership_now()
        if seen == self._leadership and not ended_hand_over:
            return
        self._leadership = seen
        waiters, self._leadership_waiters = self._leadership_waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def leader_change(self, timeout: float) -> None:
        """Return once this replica sees another leader, role or ballot, or itself become able
        to serve as leader, or a hand-over of its lead end, or after ``timeout`` (an election
        this replica hears nothing of yet, a lease that lapsed). Each of those comes with a
        message or a hand-over, so a request that found no leader goes on within a round trip
        of one being there, rather than after a fixed poll."""
        if not self._leadership_waiters:
            self._leadership = self._leadership_now()
        waiter = asyncio.get_running_loop().create_future()
        self._leadership_waiters.add(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            self._leadership_waiters.discard(waiter)

    def leader_hint(self) -> int | None:
        return self.replica.core.leader

    def most_caught_up(self, members: list[int]) -> int:
        """Of these members, the one this leader knows to hold the most of its log (the first
        of equals): the one a hand-over waits least for, and never one that stopped answering
        while another kept up."""
        return max(members, key=self.replica.core.matched)

    async def transfer(self, to: int) -> bool:
        """Hand the lead to member ``to`` once every write in flight is committed and ``to``
        holds the whole log (replica.py ``transfer``), within TRANSFER_WAIT_S; True if it did.
        New writes are refused meanwhile as at a replica that does not lead (NotLeader before
        proposing: the request router runs them again at the next leader), so that instant
        comes within a round trip or two even under a steady stream of writes."""
        deadline = time.monotonic() + TRANSFER_WAIT_S
        self.replica.handing_over = True
        try:
            while self.is_leader() and time.monotonic() < deadline:
                if self.replica.transfer(to):
                    return True
                await asyncio.sleep(TRANSFER_POLL_S)
            return False
        finally:
            self.replica.handing_over = False
            self._note_leadership(ended_hand_over=True)

    async def read_barrier(self) -> None:
        await self.replica.read_barrier()

    def serves_strong(self) -> bool:
        """A strongly consistent read or a write may run here now (what read_barrier waits for)."""
        if not self.is_leader():
            return False  # the usual answer on a follower, without raising and catching NotLeader
        try:
            return self.replica.applied >= self.replica.core.read(self.replica.clock())
        except NotLeader:
            return False

    def view(self) -> "ReplicatedPartition":
        replica, core = self.replica, self.replica.core
        # A leader's view lasts its term, from the moment it has applied everything committed
        # before (its figures are then loaded from current state); until then, and on a
        # follower, a view lasts until the replica applies more, so the figures it reports
        # follow the writes of the leader. A split starts a new view either way.
        gen = self.range.gen
        if core.role == LEADER and (self._view_epoch == ("leader", core.ballot, gen) or (
                core.lease_valid(replica.clock()) and replica.applied >= core.commit)):
            epoch = ("leader", core.ballot, gen)
        else:
            epoch = ("follower", replica.applied, gen)
        if self._view is None or epoch != self._view_epoch:
            self._view, self._view_epoch = ReplicatedPartition(self), epoch
        return self._view

    # --- reads and writes ------------------------------------------------------------------------

    def get_latest(self, key: bytes) -> bytes | None:
        if key in self._inflight:
            return self._latest[key]
        return self.replica.tree.get(key)

    async def write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        keys = [k for k, _ in ops]
        latest, inflight = self._latest, self._inflight
        for key, value in ops:
            latest[key] = value
            inflight[key] = inflight.get(key, 0) + 1
        done = asyncio.get_running_loop().create_future()
        self._writes[done] = keys
        applied = False
        try:
            proposal = self.replica.propose(_GEN.pack(self.range.gen) + encode_batch(ops))
            proposed = PROPOSED.get()
            if proposed is not None:
                proposed.append(self.group)
            try:
                slot = await proposal
            except NotChosen:
                if proposed is not None:
                    proposed.remove(self.group)  # this proposal wrote nothing after all
                raise
            applied = True
            return slot
        finally:
            for key in keys:
                left = inflight[key] - 1
                if left:
                    inflight[key] = left
                else:
                    del inflight[key], latest[key]
            del self._writes[done]
            done.set_result(applied)

    async def settle(self, key: bytes) -> None:
        """Once every write of ``key`` in flight is applied; NotLeader if one of them was cut
        off by a change of leader (it may or may not commit later)."""
        waits = [f for f, keys in self._writes.items() if key in keys]
        if waits and not all(await asyncio.gather(*waits)):
            raise NotLeader(self.node_id, self.leader_hint())

    def status(self) -> dict:
        rng = self.range
        return dict(self.replica.status(), group=self.group, start=_hex(rng.start), end=_hex(rng.end),
                    gen=rng.gen, seeded=self.seeded, links=self.transport.connected())

    async def close(self, *, remove: bool = False) -> None:
        """Stop after the writes in flight; ``remove`` deletes the replica's files (the
        table was deleted)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._listener.transports.get(self.group) is self.transport:
            del self._listener.transports[self.group]
        await self.transport.close()
        await self.replica.close()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)


class ReplicatedPartition:
    """The Partition face (router/partition.py) of a ReplicaGroup, for one epoch."""

    # A replicated split never holds writes (router/partition.py's ``switch``): a write proposed
    # under the old range is refused when applied (StaleRange) and routed again.
    switch = None

    def __init__(self, group: ReplicaGroup):
        self.group = group
        rng = group.range
        self.start = rng.start  # the item storage keys this partition holds: [start, end)
        self.end = rng.end
        self.reads = 0  # key lookups and range scans, as Partition counts them
        self.writes = 0  # write batches

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        self.group.requests += 1
        self.group.sampled.append(key)
        return self.group.replica.tree.get(key)

    def get_latest(self, key: bytes) -> bytes | None:
        return self.group.get_latest(key)

    def scan(self, start: bytes | None = None, end: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.reads += 1
        self.group.requests += 1
        return self.group.replica.tree.scan(start, end, reverse=reverse, limit=limit)

    async def settle(self, key: bytes) -> None:
        await self.group.settle(key)

    async def write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        self.writes += 1
        self.group.requests += 1
        self.group.sampled.append(ops[0][0])
        return await self.group.write(ops)
