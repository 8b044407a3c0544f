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
  fails it with NotLeader: the write may still commit under the next leader.

A ``ReplicatedPartition`` is a view of the group for one epoch: the router hands out a new
view once the replica leads with everything committed before its term applied (and, until
then, whenever it applied more), so per-partition figures the operations cache by
partition (the statistics record, store.py) are reloaded from current state after another
leader wrote it, never kept from a tree that was still catching up.
"""
from __future__ import annotations

import asyncio
import shutil
from typing import Iterator

from dynstore.limits import ELECTION_TIMEOUT_S
from dynstore.replication.errors import NotLeader
from dynstore.replication.messages import STORAGE
from dynstore.replication.paxos import LEADER, Timing
from dynstore.replication.replica import Replica
from dynstore.replication.transport import Listener, Transport
from dynstore.storage.engine import encode_batch


class ReplicaGroup:
    """Replica ``node_id`` of ``group``; ``peers`` maps node id -> replication (host, port)."""

    def __init__(self, group: int, directory: str, node_id: int, peers: dict[int, tuple[str, int]],
                 listener: Listener, *, on_fatal, election_timeout: float = ELECTION_TIMEOUT_S,
                 backend: str | None = None, sync: str = "auto"):
        self.group = group
        self.directory = directory
        self.node_id = node_id
        self._listener = listener
        members = tuple((rid, STORAGE) for rid in sorted(peers))
        self.transport = Transport(node_id, group, peers, self._on_message, on_fatal=on_fatal)
        self.replica = Replica(directory, node_id, members, self.transport.send, group=group,
                               timing=Timing(election_timeout=election_timeout,
                                             heartbeat_interval=election_timeout / 10),
                               seed=group ^ node_id, backend=backend, sync=sync, on_fatal=on_fatal)
        # Writes proposed here and not yet applied: key -> newest value, and how many writes of
        # the key are in flight (the overlay of get_latest).
        self._latest: dict[bytes, bytes | None] = {}
        self._inflight: dict[bytes, int] = {}
        # Each write in flight: a future set to whether it was applied, and its keys (for settle).
        self._writes: dict[asyncio.Future, list[bytes]] = {}
        self._view: ReplicatedPartition | None = None
        self._view_epoch = None

    def _on_message(self, m) -> None:
        self.replica.step(m)

    def start(self) -> None:
        self._listener.transports[self.group] = self.transport
        self.transport.dial()
        self.replica.start()

    # --- leadership ---------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.replica.core.role == LEADER

    def leader_hint(self) -> int | None:
        return self.replica.core.leader

    async def read_barrier(self) -> None:
        await self.replica.read_barrier()

    def view(self) -> "ReplicatedPartition":
        replica, core = self.replica, self.replica.core
        # A leader's view lasts its term, from the moment it has applied everything committed
        # before (its figures are then loaded from current state); until then, and on a
        # follower, a view lasts until the replica applies more, so the figures it reports
        # follow the writes of the leader.
        if core.role == LEADER and (self._view_epoch == ("leader", core.ballot) or (
                core.lease_valid(replica.clock()) and replica.applied >= core.commit)):
            epoch = ("leader", core.ballot)
        else:
            epoch = ("follower", replica.applied)
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
        for key, value in ops:
            self._latest[key] = value
            self._inflight[key] = self._inflight.get(key, 0) + 1
        done = asyncio.get_running_loop().create_future()
        self._writes[done] = keys
        applied = False
        try:
            slot = await self.replica.put(encode_batch(ops))
            applied = True
            return slot
        finally:
            for key in keys:
                left = self._inflight[key] - 1
                if left:
                    self._inflight[key] = left
                else:
                    del self._inflight[key], self._latest[key]
            del self._writes[done]
            done.set_result(applied)

    async def settle(self, key: bytes) -> None:
        """Once every write of ``key`` in flight is applied; NotLeader if one of them was cut
        off by a change of leader (it may or may not commit later)."""
        waits = [f for f, keys in self._writes.items() if key in keys]
        if waits and not all(await asyncio.gather(*waits)):
            raise NotLeader(self.node_id, self.leader_hint())

    async def close(self, *, remove: bool = False) -> None:
        """Stop after the writes in flight; ``remove`` deletes the replica's files (the
        table was deleted)."""
        if self._writes:
            await asyncio.gather(*self._writes)
        if self._listener.transports.get(self.group) is self.transport:
            del self._listener.transports[self.group]
        await self.transport.close()
        await self.replica.close()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)


class ReplicatedPartition:
    """The Partition face (router/partition.py) of a ReplicaGroup, for one leadership epoch."""

    # A replicated table is one partition, never split: it owns every key and never holds writes.
    start = b""
    end = None
    switch = None

    def __init__(self, group: ReplicaGroup):
        self.group = group
        self.reads = 0  # key lookups and range scans, as Partition counts them
        self.writes = 0  # write batches

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.group.replica.tree.get(key)

    def get_latest(self, key: bytes) -> bytes | None:
        return self.group.get_latest(key)

    def scan(self, start: bytes | None = None, end: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.reads += 1
        return self.group.replica.tree.scan(start, end, reverse=reverse, limit=limit)

    async def settle(self, key: bytes) -> None:
        await self.group.settle(key)

    async def write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        self.writes += 1
        return await self.group.write(ops)
