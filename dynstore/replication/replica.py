"""One replica of one replication group: the shell that gives the Paxos core a disk, a
network, a clock and a state machine.

The loop, for every input (a message, a proposal, a read, a tick): hand it to the core
with ``now`` from the monotonic clock, then take the core's ``Ready`` (once per turn of
the event loop, so inputs that arrive together share one Ready and one group commit),
send the messages it may send at once (a leader's Accepts, paxos.py says why), append
its persist records to the WAL, and only once they are durable send its other messages,
apply its committed entries, ship the snapshots it asks for and tell the core
(``persisted``), which then counts the leader's own entries toward the quorum. Readys
are handled strictly in order.

Files, under the replica's directory::

    log/        the WAL (storage/wal.py): the Paxos log itself
    tree.db     the applied state (storage/btree.py), checkpointed at an applied slot
    tree.meta   messages.encode(SnapshotMeta) of the last snapshot installed from a peer
    joining     present while a replica added to a running group waits for its first snapshot

WAL records. Each persist record of the core is one WAL record whose payload is the
record's messages.encode frame (its own crc32c and version inside the WAL's checksum) and
whose type says which record it is (WAL_HARD_STATE, WAL_ENTRIES, WAL_SNAPSHOT_META, paired
with the decoded type at recovery). A WAL_BASE record holds the whole log state in one
payload (the frames of SnapshotMeta, Entries, HardState): it is written after the log is
compacted, and once it is durable the WAL segments before it are dropped. Recovery replays
the records from the last WAL_BASE on (everything before it is superseded) into
``Store.replay``; a log with no records at all is a new replica and starts from the
configured membership.

Applied state. A committed COMMAND entry is a write batch in the engine's encoding
(storage/engine.py encode_batch) applied to the tree at its slot. The tree is checkpointed
every CHECKPOINT_ENTRIES applied entries; the log is then compacted up to LOG_KEEP_ENTRIES
below the checkpoint, and recovery re-applies the committed entries after the checkpoint.
In the last stretch before a checkpoint each apply writes a few of the tree's changed pages
ahead (``write_dirty``), so the checkpoint's own page writes, on the event loop, are few.
The Engine is not used here because its own WAL would be a second log: in a replicated
partition the Paxos log is the write-ahead log, so the shell drives the tree directly.
A command too long to apply in one go on the event loop (a split copies half a partition)
is applied by a task (``Later``): the entries after it wait their turn, the tree does not
change meanwhile, and the replica's other work, and every other group's, goes on.

Snapshots. When the core says a peer needs the log it compacted, the shell checkpoints the
tree at its applied slot and streams that checkpoint in the engine's snapshot chunk format
(crc32c + zstd per chunk) as SnapshotChunk messages. The receiver verifies every chunk while
loading it into a fresh tree file, writes tree.meta, renames the tree into place and then
tells the core, which persists the SnapshotMeta. A crash after the rename but before that
record is durable leaves a tree ahead of the log's commit index; recovery sees it and writes
the record from tree.meta. A leader applies its committed entries without waiting for the
record of the commit index (they are durable in its own log: Ready.apply_first in paxos.py),
so a checkpoint may also be ahead of the recorded commit index with the log holding every
entry up to it; recovery then writes a HardState committing through the checkpoint.

Joining. A replica added to a group that has run for a while (``joining``, autoadmin's
healing) starts with no state and a membership that does not name it. Until it has
installed a snapshot it takes nothing but snapshot chunks and does not tick: its log holds
none of the group's history, so it must neither accept entries that follow history it
lacks nor campaign. The snapshot's metadata carries the membership in force at its slot, and
the change that adds the replica comes after it in the log. The ``joining`` file, made
before the log's first record, keeps a crash in between from opening it as a member.

Faults survived: a crash at any instant (nothing is applied before it is durable on a quorum
and in this log, nothing that claims durability is sent before it is durable, the tree only
moves to a new checkpoint or a fully verified snapshot); torn WAL tails (the
WAL drops them; they were never acknowledged); a corrupt snapshot chunk (the stream is
dropped and the leader resends it); a failing disk stops the replica (``on_fatal``), which
is then repaired by restart or replacement, never by guessing.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import weakref
from collections import deque

from dynstore.limits import (CHECKPOINT_ENTRIES, CHECKPOINT_WRITE_AHEAD_FROM, CHECKPOINT_WRITE_AHEAD_PAGES,
                             COMMIT_TELL_S, LOG_KEEP_ENTRIES, TICK_INTERVAL_S, TICK_QUANTUM_S,
                             WAL_SEGMENT_BYTES_DEFAULT)
from dynstore.replication.errors import NotChosen, NotLeader
from dynstore.replication.messages import LOG as LOG_ROLE
from dynstore.replication.messages import (COMMAND, ZERO_BALLOT, Ballot, Entries, HardState, SnapshotChunk,
                                           SnapshotMeta, decode, encode, frame_length)
from dynstore.replication.paxos import LEADER, Paxos, Store, Timing
from dynstore.replication.tasks import Tasks
from dynstore.storage.btree import BTree
from dynstore.storage.engine import SNAPSHOT_CHUNK_BYTES, snapshot_chunks, verified_items, decode_batch
from dynstore.storage.errors import CorruptionError
from dynstore.storage.wal import WAL

log = logging.getLogger(__name__)


async def _sync_off_loop(tree) -> None:
    """fdatasync the tree's file in a thread, through a descriptor of its own, so that a tree
    closed meanwhile (the replica stopping, a snapshot replacing it) leaves the thread a valid
    one to sync and close."""
    fd = os.dup(tree.fileno())

    def sync() -> None:
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    await asyncio.to_thread(sync)

WAL_HARD_STATE = 1
WAL_ENTRIES = 2
WAL_SNAPSHOT_META = 3
WAL_BASE = 4
_WAL_TYPES = {HardState: WAL_HARD_STATE, Entries: WAL_ENTRIES, SnapshotMeta: WAL_SNAPSHOT_META}


def _frames(payload: bytes) -> list:
    records, pos = [], 0
    while pos < len(payload):
        n = frame_length(payload, pos)
        if n is None or pos + n > len(payload):
            raise CorruptionError("a WAL_BASE record ends inside a frame")
        records.append(decode(payload[pos:pos + n]))
        pos += n
    return records


def read_log(wal: WAL) -> list:
    """The persist records of the log, from its last WAL_BASE on, checked against their WAL types."""
    raw = list(wal.read(wal.first_lsn)) if wal.last_lsn else []
    start = max((i for i, r in enumerate(raw) if r.type == WAL_BASE), default=0)
    records = []
    for r in raw[start:]:
        if r.type == WAL_BASE:
            records.extend(_frames(r.payload))
            continue
        record = decode(r.payload)
        if _WAL_TYPES.get(type(record)) != r.type:
            raise CorruptionError(f"WAL record {r.lsn} of type {r.type} holds a {type(record).__name__}",
                                  wal.directory)
        records.append(record)
    return records


def _apply_batch(tree, slot: int, data: bytes) -> None:
    tree.write_batch(decode_batch(data))


class Later:
    """What an apply function returns for a command it finishes in the background: ``work``,
    a coroutine the replica runs as a task, returns what apply would have (None, or the
    exception to refuse the proposal with). The entry counts as applied once it returns,
    and the entries after it are applied only then; ``work`` may yield to the event loop,
    but only it changes the tree until it returns."""

    __slots__ = ("work",)

    def __init__(self, work):
        self.work = work


def _write_durably(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SEED_SLOT = 1  # the slot a seeded replica's state stands at: its group's log starts after it


def seed_replica(directory: str, items, members: tuple, *, backend: str | None = None) -> None:
    """Make ``directory`` a replica of a new group whose state is ``items`` (sorted (key,
    value) pairs) as a snapshot at SEED_SLOT with membership ``members``.

    A replica that opens it finds its tree ahead of an empty log and takes tree.meta as its
    snapshot (see Replica), so the group's log starts at SEED_SLOT + 1, and a replica of the
    group that was not seeded (an empty directory) gets the state as a snapshot from its
    leader, never by replaying a log that lacks it. tree.db appears last, by rename: a
    directory with a tree.db is complete, and one without it is built again from nothing.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tree.db")
    building = path + ".seed"
    if os.path.exists(building):
        os.unlink(building)
    tree = BTree(building, backend=backend)
    try:
        tree.bulk_load(items)
        tree.checkpoint(SEED_SLOT)
    finally:
        tree.close()
    _write_durably(os.path.join(directory, "tree.meta"), encode(SnapshotMeta(SEED_SLOT, ZERO_BALLOT, members)))
    os.replace(building, path)
    _fsync_dir(directory)


def is_seeded(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "tree.db"))


class _Ticks:
    """The tick grid of one event loop: a replica's tick is put off to the next multiple of its
    quantum, and all ticks at one point share one timer, so the loop wakes once for them all and
    the heartbeats of every group led here leave together (their peers' answers come back
    together too). A deadline is kept at most a quantum late, a small part of any timeout."""

    _by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, clock):
        self._loop = loop
        self._clock = clock
        self._due: dict[float, list] = {}  # point -> callbacks

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, clock) -> _Ticks:
        ticks = cls._by_loop.get(loop)
        if ticks is None:
            ticks = cls._by_loop[loop] = cls(loop, clock)
        return ticks

    @staticmethod
    def point(at: float, quantum: float) -> float:
        """The grid point at or after ``at`` (the 1e-6: a point the float division missed)."""
        return math.ceil(at / quantum - 1e-6) * quantum

    def call(self, point: float, callback) -> None:
        """Call callback(point) at ``point``; a caller that has since moved its tick ignores it."""
        due = self._due.get(point)
        if due is None:
            due = self._due[point] = []
            self._loop.call_later(max(point - self._clock(), 0.0), self._fire, point)
        due.append(callback)

    def _fire(self, point: float) -> None:
        early = point - self._clock()
        if early > 0:  # the loop's timers round to its coarser clock
            self._loop.call_later(early, self._fire, point)
            return
        for callback in self._due.pop(point):
            callback(point)


class Replica:
    """Replica ``replica_id`` of ``group``; ``send(m)`` puts a message on the network.

    Not thread-safe: one event loop owns it. ``start()`` begins ticking; ``step(m)`` takes
    every message from the transport.
    """

    def __init__(self, directory: str, replica_id: int, members: tuple, send, *, group: int = 0,
                 timing: Timing = Timing(), seed: int = 0, backend: str | None = None, sync: str = "auto",
                 segment_bytes: int = WAL_SEGMENT_BYTES_DEFAULT, checkpoint_entries: int = CHECKPOINT_ENTRIES,
                 log_keep_entries: int = LOG_KEEP_ENTRIES, on_fatal=None, clock=time.monotonic, apply=None,
                 joining: bool = False):
        self.id = replica_id
        # apply(tree, slot, data) applies one committed command to the tree; it returns None, the
        # exception to answer its proposer with when the state machine refused it (nothing written),
        # or a Later that finishes the command in a task.
        self._apply_command = apply or _apply_batch
        self.group = group
        self.directory = directory
        self.send = send
        self.clock = clock
        self.checkpoint_entries = checkpoint_entries
        self.log_keep_entries = log_keep_entries
        self.stats = {"snapshots_sent": 0, "snapshots_installed": 0, "snapshot_chunks_corrupt": 0,
                      "checkpoints": 0, "log_rewrites": 0, "dropped_joining": 0}
        os.makedirs(directory, exist_ok=True)
        self.wal = WAL(os.path.join(directory, "log"), sync=sync, segment_bytes=segment_bytes, backend=backend)
        self._backend = backend
        self._tree_path = os.path.join(directory, "tree.db")
        self._meta_path = os.path.join(directory, "tree.meta")
        store = Store.replay(read_log(self.wal))
        self._joining_path = os.path.join(directory, "joining")
        if self.wal.last_lsn == 0:
            if joining:
                _write_durably(self._joining_path, b"")
                _fsync_dir(directory)
            self._persist_now(store, SnapshotMeta(0, ZERO_BALLOT, tuple(sorted(members))))
        self.joining = os.path.exists(self._joining_path)  # waits for its first snapshot (above)
        self.tree = BTree(self._tree_path, backend=backend)
        self.applied = self.tree.checkpoint_lsn
        if self.applied > store.commit:
            self._persist_now(store, self._record_of_applied(store))
        self.core = Paxos(replica_id, store, now=clock(), rng=random.Random(seed), timing=timing, group=group,
                          applied=self.applied)
        self._pending: deque = deque()  # (lsn, Ready, applied already) waiting for the WAL to make lsn durable
        self._pending_applies = 0  # Readys in _pending whose committed entries wait to be applied
        self._target_lsn = 0  # the LSN the newest Ready depends on
        self._draining = False  # the WAL calls _drain once it makes more durable
        self._closing = False
        self._flush_scheduled = False
        self._telling: asyncio.TimerHandle | None = None  # a leader's tell of its commit index (_tell_soon)
        self.tell_every_commit = False  # tell each commit soon, not only a new leader's first (_tell_soon)
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start
        self._tick_at = math.inf  # the core's next tick (_Ticks)
        self._tick_quantum = min(TICK_QUANTUM_S, timing.heartbeat_interval / 2)
        self._waiting: dict[int, tuple[asyncio.Future, bytes]] = {}  # slot -> (client future, its data)
        self._proposed = False  # proposed since it last stepped down: its waiters are to orphan (_flush)
        self.handing_over = False  # a hand-over of the lead is under way: no new proposals (transfer)
        self._reads: list[tuple[int, asyncio.Future]] = []  # (slot to apply first, future)
        self._snap_in: dict = {}  # the snapshot stream being received: chunks by seq
        self._shipping: set[int] = set()  # peers a snapshot is being streamed to
        self._tasks = Tasks(f"replica {replica_id}", on_fatal)
        self._rewriting = False
        self._checkpointing: asyncio.Task | None = None  # the checkpoint under way
        self._later: asyncio.Task | None = None  # a command applied in the background (Later)
        self._backlog: list = []  # committed entries after it, waiting for it to finish

    def _record_of_applied(self, store: Store):
        """The record that brings the log's commit index up to a tree checkpointed past it."""
        meta = None
        if os.path.exists(self._meta_path):
            with open(self._meta_path, "rb") as f:
                meta = decode(f.read())
        if meta is not None and meta.index == self.applied:
            # A snapshot was installed but the crash came before its record was durable.
            return meta
        if store.last_slot >= self.applied:
            # As leader we applied entries of our durable log at once, once committed, and
            # checkpointed them before the record of the commit index was durable.
            return HardState(store.promised, self.applied)
        raise CorruptionError(f"tree checkpointed at {self.applied}, past the log's last slot {store.last_slot}, "
                              f"and tree.meta is not of that slot", self._meta_path)

    def _persist_now(self, store: Store, record) -> None:
        """Apply and durably persist one record before the core exists (recovery only)."""
        store.apply(record)
        self.wal.wait_durable(self.wal.append(0, _WAL_TYPES[type(record)], encode(record)))

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm_tick()
        self._schedule_flush()

    async def close(self) -> None:
        self._closing = True
        self._tick_at = math.inf
        if self._telling is not None:
            self._telling.cancel()
        await self._tasks.cancel_all()
        self._fail_waiters()
        self.wal.close()
        self.tree.close()

    def _arm_tick(self) -> None:
        """Have the loop tick the core when it asks (``Paxos.wake_at``: a leader's heartbeat,
        anyone else's election deadline), and at least every TICK_INTERVAL_S, at the next point
        of the process's tick grid (_Ticks): an idle node's work was mostly wake-ups, one per
        replica per beat, and the replicas of a process now share them."""
        if self._loop is None or self._closing:
            return
        now = self.clock()
        at = now + TICK_INTERVAL_S if self.joining else min(self.core.wake_at(), now + TICK_INTERVAL_S)
        point = _Ticks.point(at, self._tick_quantum)
        if point < self._tick_at:
            self._tick_at = point
            _Ticks.of(self._loop, self.clock).call(point, self._tick)

    def _tick(self, at: float) -> None:
        if at != self._tick_at:
            return  # superseded by an earlier tick
        self._tick_at = math.inf
        try:
            if not self.joining:
                self.core.tick(self.clock())
                self._flush()
            self._arm_tick()
        except BaseException as exc:  # a failing disk or a programmer error: see tasks.py
            self._tasks.fail(exc)

    # --- inputs -----------------------------------------------------------------------------

    def step(self, m) -> None:
        if type(m) is SnapshotChunk:
            self._on_snapshot_chunk(m)
        elif self.joining:
            self.stats["dropped_joining"] += 1
            return
        else:
            self.core.step(m, self.clock())
        self._schedule_flush()

    async def put(self, data: bytes) -> int:
        """Replicate one command (an encoded write batch); returns its slot once it is
        committed, durable on a quorum and applied here. NotLeader or Busy to retry."""
        return await self.propose(data)

    def propose(self, data: bytes) -> asyncio.Future:
        """Propose one command now; the future is ``put``'s answer. NotLeader or Busy raised
        here means nothing was proposed; NotChosen from the future, that it was not written
        (its slot holds another command); NotLeader, that it may still commit under the next
        leader (``_orphan_waiters``)."""
        if self.handing_over:
            raise NotLeader(self.id, self.core.leader)
        slot = self.core.propose(data, self.clock())
        future = asyncio.get_running_loop().create_future()
        old = self._waiting.get(slot)
        if old is not None and not old[0].done():  # a stepped-down leader's slot that a new leader refilled
            old[0].set_exception(NotChosen(self.id, self.core.leader))
        self._waiting[slot] = (future, data)
        self._proposed = True
        self._schedule_flush()
        return future

    def change_members(self, members: tuple) -> int:
        """Propose a membership change (one replica added or removed, at the leader); returns
        its slot. Busy while another change is in flight, NotLeader elsewhere."""
        slot = self.core.propose_members(members, self.clock())
        self._schedule_flush()
        return slot

    def transfer(self, to: int) -> bool:
        """Hand the lead to storage member ``to`` if the core agrees (paxos.py ``transfer``:
        every entry committed, and ``to`` holds them all); False, with nothing changed,
        otherwise. Writes committed but not applied yet are answered as this replica applies
        them, as a follower (``_orphan_waiters``). ``handing_over`` stops new proposals
        meanwhile, so that such an instant comes."""
        moved = self.core.transfer(to, self.clock())
        if moved:
            self._schedule_flush()  # the Abdicate messages
        return moved

    async def read_barrier(self) -> None:
        """Return once this replica may serve a strongly consistent read: it leads under a
        valid lease and has applied everything committed when the read arrived."""
        await self.wait_applied(self.core.read(self.clock()))

    async def wait_applied(self, index: int) -> None:
        """Return once this replica has applied slot ``index`` (a follower's read at an index
        its group's leader vouched for). NotLeader if the replica gives up its waiters."""
        if self.applied < index:
            future = asyncio.get_running_loop().create_future()
            waiter = (index, future)
            self._reads.append(waiter)
            try:
                await future
            except asyncio.CancelledError:
                # A caller that stopped waiting (a timeout) leaves nothing behind: a replica cut
                # off from its group would otherwise gather one waiter per such read.
                if waiter in self._reads:
                    self._reads.remove(waiter)
                raise

    def chosen(self) -> tuple[int, Ballot] | None:
        """At a leader: the slot it applied last and its ballot, if the entry there is of its own
        ballot (what ``learn`` takes at a follower); None elsewhere."""
        ballot = self.core.chosen(self.applied)
        return None if ballot is None else (self.applied, ballot)

    def learn(self, slot: int, ballot: tuple[int, int]) -> None:
        """The leader of ``ballot`` has its entry at ``slot`` chosen, as its answer to this node
        said: apply up to there as soon as this replica holds it (core ``learn``), rather than
        once the leader's next Accept tells. Nothing on a replica closed or joining meanwhile."""
        if not (self._closing or self.joining) and self.core.learn(slot, Ballot(*ballot)):
            self._schedule_flush()

    # --- the Ready pipeline -------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        rd = self.core.ready()
        self._arm_tick()  # a step or a proposal may have moved the core's next deadline earlier
        self._tell_soon()
        if self._proposed and self.core.role != LEADER:
            self._proposed = False
            self._orphan_waiters()
        if not rd:
            return
        for m in rd.send_first:
            self.send(m)
        # Entries durable here already are applied now, unless earlier ones still wait their turn.
        applied = rd.apply_first and not self._pending_applies
        if applied:
            self._apply_all(rd.committed)
        if rd.persist:
            self._target_lsn = self.wal.append_many([(0, _WAL_TYPES[type(r)], encode(r)) for r in rd.persist])
        if not self._pending and self._target_lsn <= self.wal.durable_lsn:
            self._handle(rd, applied)
            return
        self._pending.append((self._target_lsn, rd, applied))
        self._pending_applies += bool(rd.committed) and not applied
        self._watch_pending()

    def _tell_soon(self) -> None:
        """As leader, with a commit index some follower holding the entries was not told of:
        tell it once nothing went to it for COMMIT_TELL_S (paxos.py ``tell_commit``): a
        follower in a stream of Accepts is told by the next, one left idle gets one of its own.
        Only the opening entry of a leader's term, unless ``tell_every_commit``: a group of
        sparse writes would otherwise send two more messages a write."""
        if self._telling is None and not self._closing and self.core.commit_untold(self.tell_every_commit):
            self._telling = asyncio.get_running_loop().call_later(COMMIT_TELL_S, self._tell)

    def _tell(self) -> None:
        self._telling = None
        if self._closing:
            return
        now = self.clock()
        sent, again = self.core.tell_commit(now, COMMIT_TELL_S, self.tell_every_commit)
        if sent:
            self._schedule_flush()
        if again is not None:
            self._telling = asyncio.get_running_loop().call_later(again - now, self._tell)

    def _watch_pending(self) -> None:
        """Have the WAL call _drain once the oldest waiting Ready is durable, unless it will."""
        if self._pending and not self._draining:
            self._draining = True
            self.wal.when_durable(self._pending[0][0], self._drain)

    def _drain(self, failure: Exception | None) -> None:
        """The WAL made more durable (or failed): handle the Readys that waited for it, in order."""
        self._draining = False
        if self._closing:
            return
        try:
            if failure is not None:
                raise failure
            durable = self.wal.durable_lsn
            while self._pending and self._pending[0][0] <= durable:
                lsn, rd, applied = self._pending.popleft()
                self._pending_applies -= bool(rd.committed) and not applied
                self._handle(rd, applied)
            self._watch_pending()
        except BaseException as exc:  # a failing disk or a programmer error: see tasks.py
            self._tasks.fail(exc)

    def _handle(self, rd, applied: bool) -> None:
        commit = self.core.commit
        self.core.persisted(rd.durable)
        for m in rd.messages:
            self.send(m)
        if not applied:
            self._apply_all(rd.committed)
        for peer, _meta in rd.snapshots:
            self.ship_snapshot(peer)  # empty for a log member
        self._checkpoint_if_due()
        if self.core.commit != commit:
            # Our own entries being durable committed more: go on now rather than a loop turn later.
            self._flush()

    def _apply_all(self, entries: list) -> None:
        for i, e in enumerate(entries):
            if self._later is not None:
                self._backlog.extend(entries[i:])
                break
            self._apply(e)
        if self._reads:
            ready = [f for index, f in self._reads if index <= self.applied]
            self._reads = [(index, f) for index, f in self._reads if index > self.applied]
            for future in ready:
                if not future.done():
                    future.set_result(None)

    def _apply(self, e) -> None:
        if e.slot <= self.applied:
            return  # covered by a snapshot installed while this Ready waited for the disk
        assert e.slot == self.applied + 1, (self.id, e.slot, self.applied)
        refused = self._apply_command(self.tree, e.slot, e.data) if e.kind == COMMAND else None
        if type(refused) is Later:
            self._later = self._tasks.spawn(self._apply_later(e, refused.work))
        else:
            self._applied(e, refused)

    async def _apply_later(self, e, work) -> None:
        refused = await work
        self._later = None
        self._applied(e, refused)
        backlog, self._backlog = self._backlog, []
        self._apply_all(backlog)
        self._checkpoint_if_due()

    def _applied(self, e, refused: Exception | None) -> None:
        self.applied = e.slot
        waiter = self._waiting.pop(e.slot, None)
        if waiter is not None:
            future, data = waiter
            if future.done():
                return
            if e.kind == COMMAND and e.data == data:
                if refused is None:
                    future.set_result(e.slot)
                else:
                    future.set_exception(refused)
            else:
                future.set_exception(NotChosen(self.id, self.core.leader))

    def _orphan_waiters(self) -> None:
        """This leader stepped down with proposals in flight. Each may still be chosen at its
        slot: the next leader recovers what a quorum accepted, and this replica, following it,
        applies the slot, which answers the waiter (``_applied``): its slot if the command is
        there, as it usually is, so its caller does not get "may or may not have taken effect";
        NotChosen if another command is. A replica cut off from the group would never learn
        it: its waiters give up with NotLeader after ``orphan_wait`` (three election
        timeouts: the step-down, the next election, and room for the new leader's first
        commit). Strong reads give up at once; they are retried at the next leader."""
        reads, self._reads = self._reads, []
        for _, future in reads:
            if not future.done():
                future.set_exception(NotLeader(self.id, self.core.leader))
        orphans = [(slot, future) for slot, (future, _) in self._waiting.items()]
        self._loop.call_later(self.orphan_wait, self._give_up, orphans)

    @property
    def orphan_wait(self) -> float:
        return 3 * self.core.timing.election_timeout

    def _give_up(self, orphans: list) -> None:
        for slot, future in orphans:
            if self._waiting.get(slot, (None,))[0] is future:
                del self._waiting[slot]
            if not future.done():
                future.set_exception(NotLeader(self.id, self.core.leader))

    def _fail_waiters(self) -> None:
        """The replica closes: its waiters may still commit (under a new leader), so callers
        learn only to retry, which is safe for idempotent writes."""
        waiting, self._waiting = self._waiting, {}
        reads, self._reads = self._reads, []
        for future in [f for f, _ in waiting.values()] + [f for _, f in reads]:
            if not future.done():
                future.set_exception(NotLeader(self.id, self.core.leader))

    # --- checkpoints and the log's size -------------------------------------------------------

    def _checkpoint_if_due(self) -> None:
        behind = self.applied - self.tree.checkpoint_lsn
        if behind >= self.checkpoint_entries:
            self._checkpoint()
        elif behind >= self.checkpoint_entries * CHECKPOINT_WRITE_AHEAD_FROM and self._checkpointing is None:
            # The last stretch before a checkpoint: its changed pages go to disk a few at a time,
            # between requests, rather than all at once on the event loop when it begins.
            self.tree.write_dirty(CHECKPOINT_WRITE_AHEAD_PAGES)

    def _checkpoint(self) -> None:
        if self._checkpointing is None:
            self._checkpointing = self._tasks.spawn(self._make_checkpoint())

    async def _make_checkpoint(self) -> None:
        """Checkpoint the applied tree. Only writing its pages runs on the event loop: both
        fdatasyncs run in a thread while the replica goes on applying (the tree copies any page
        the checkpoint holds), so a checkpoint of many scattered changes holds up no request
        for the disk's time. Pages still changed when it is due (more than the stretch before it
        wrote ahead: a burst of large batches, a split, a snapshot asked for early) first go out
        a few at a time between requests. Then the log before it, less LOG_KEEP_ENTRIES, is
        dropped."""
        tree = self.tree
        try:
            for _ in range(tree.stats()["dirty_pages"] // CHECKPOINT_WRITE_AHEAD_PAGES):
                if not tree.write_dirty(CHECKPOINT_WRITE_AHEAD_PAGES):
                    break
                await asyncio.sleep(0)
                if tree is not self.tree:
                    return
            lsn = self.applied
            tree.checkpoint_begin(lsn)
            await _sync_off_loop(tree)
            if tree is not self.tree:
                return  # a snapshot installed meanwhile replaced the tree
            tree.checkpoint_seal()
            await _sync_off_loop(tree)
            if tree is not self.tree:
                return
            tree.checkpoint_end()
        finally:
            self._checkpointing = None
        self.stats["checkpoints"] += 1
        index = lsn - self.log_keep_entries
        if index > self.core.store.snap.index and not self._rewriting:
            self.core.compact(index)
            self._rewriting = True
            self._tasks.spawn(self._rewrite_log())

    async def _rewrite_log(self) -> None:
        """Write the whole log state as one WAL_BASE record, then drop the segments before it."""
        try:
            self._flush()  # the store now equals what the WAL's records replay to
            store = self.core.store
            frames = [encode(store.snap)]
            if store.entries:
                frames.append(encode(Entries(store.log())))
            frames.append(encode(HardState(store.promised, store.commit)))
            lsn = self.wal.append(0, WAL_BASE, b"".join(frames))
            await self.wal.durable(lsn)
            self.wal.drop_before(lsn)
            self.stats["log_rewrites"] += 1
        finally:
            self._rewriting = False

    # --- snapshots ------------------------------------------------------------------------------

    def ship_snapshot(self, peer: int, *, log_only: bool = False) -> None:
        """Stream this replica's state to ``peer`` (one joining the group), unless already doing
        so. A log replica (``log_only``, or a LOG member) gets the snapshot's position and
        membership with no items: it holds the log from there, not the state."""
        if peer not in self._shipping:
            self._shipping.add(peer)
            log_only = log_only or dict(self.core.members).get(peer) == LOG_ROLE
            self._tasks.spawn(self._ship_snapshot(peer, log_only))

    async def _ship_snapshot(self, peer: int, log_only: bool = False) -> None:
        try:
            applied = self.applied
            while self.tree.checkpoint_lsn < applied:
                self._checkpoint()
                await asyncio.wait({self._checkpointing})
            index = self.tree.checkpoint_lsn  # the state the tree's snapshot reads
            store = self.core.store
            meta = SnapshotMeta(index, store.ballot_at(index), self.core.members_at(index))
            log.info("replica %d ships its snapshot at slot %d to %d", self.id, index, peer)
            with self.tree.snapshot() as items:
                chunks = snapshot_chunks(iter(()) if log_only else items, index, SNAPSHOT_CHUNK_BYTES)
                chunk = next(chunks)
                seq = 0
                for following in chunks:
                    self.send(SnapshotChunk(self.group, self.id, peer, store.promised, meta, seq, False, chunk))
                    chunk, seq = following, seq + 1
                    await asyncio.sleep(0)  # let the loop serve others between chunks
                self.send(SnapshotChunk(self.group, self.id, peer, store.promised, meta, seq, True, chunk))
            self.stats["snapshots_sent"] += 1
        finally:
            self._shipping.discard(peer)

    def _on_snapshot_chunk(self, m: SnapshotChunk) -> None:
        """Gather one stream's chunks by seq (a stream from another sender or of another
        position replaces it); install when all of them are in."""
        if self._snap_in.get("stream") != (m.src, m.meta):
            self._snap_in = {"stream": (m.src, m.meta), "chunks": {}}
        chunks = self._snap_in["chunks"]
        chunks[m.seq] = m.data
        if m.last:
            self._snap_in["count"] = m.seq + 1
        count = self._snap_in.get("count")
        if count is None or len(chunks) != count:
            return
        self._snap_in = {}
        if m.meta.index > self.core.commit:
            if self._shipping:
                return  # our own tree is being streamed (we led until lately); the sender retries
            try:
                self._install([chunks[i] for i in range(count)], m.meta)
            except CorruptionError as exc:
                self.stats["snapshot_chunks_corrupt"] += 1
                log.warning("replica %d refused a snapshot from %d: %s", self.id, m.src, exc)
                return
        self.core.install_snapshot(m, self.clock())

    def _install(self, chunks: list[bytes], meta: SnapshotMeta) -> None:
        path = self._tree_path + ".install"
        if os.path.exists(path):
            os.unlink(path)
        tree = BTree(path, backend=self._backend)
        try:
            items = verified_items(chunks)
            lsn = next(items)
            if lsn != meta.index:
                raise CorruptionError(f"snapshot chunks hold slot {lsn}, the stream says {meta.index}", path)
            tree.bulk_load(items)
            tree.checkpoint(lsn)
        except BaseException:
            tree.close()
            os.unlink(path)
            raise
        tree.close()
        _write_durably(self._meta_path, encode(meta))
        if self._later is not None:  # the snapshot holds what it was applying, and what waited
            self._later.cancel()
            self._later, self._backlog = None, []
        self.tree.close()
        os.replace(path, self._tree_path)
        _fsync_dir(self.directory)
        self.tree = BTree(self._tree_path, backend=self._backend)
        self.applied = meta.index
        if self.joining:
            os.unlink(self._joining_path)
            _fsync_dir(self.directory)
            self.joining = False
        self.stats["snapshots_installed"] += 1
        log.info("replica %d installed a snapshot at slot %d", self.id, meta.index)

    # --- what operators and tests look at --------------------------------------------------------

    def status(self) -> dict:
        core, store = self.core, self.core.store
        return {
            "id": self.id, "role": core.role, "leader": core.leader,
            "ballot": list(core.ballot) if core.ballot else None, "promised": list(store.promised),
            "commit": store.commit, "applied": self.applied, "first_slot": store.first_slot,
            "last_slot": store.last_slot, "snapshot_index": store.snap.index,
            "lease_valid": core.lease_valid(self.clock()), "members": [list(m) for m in core.members],
            "checkpoint": self.tree.checkpoint_lsn, "wal_first_lsn": self.wal.first_lsn, "joining": self.joining,
            "wal_last_lsn": self.wal.last_lsn, **self.stats,
        }

