"""The router of a cluster node: the catalog in the replicated metadata partition, and
every table partition as a replication group with one replica on each node.

Layout under the node's data directory::

    meta/                 this node's replica of the metadata group (group 0)
    tables/<TableId>/     this node's replica of the table's one partition (replicated.py)

Metadata group, applied tree (keys are bytes)::

    b"t" + table name (UTF-8)  ->  the table description as JSON (orjson), as the operations keep it
    b"d" + TableId             ->  b""   the table was deleted: its replicas are removed

A table's partition is replication group ``table_group(TableId)`` (63 bits of the UUID, so
every node names it the same without asking anyone). Every node runs a replica of every
group; replica ids are node ids.

Catalog reads (``table``, ``table_names``) read this node's applied metadata tree: a
follower may lag the leader by a heartbeat. The request router (dynstore/node/routing.py)
therefore sends catalog changes, and requests naming a table this node does not know yet,
to the metadata leader after its ``read_barrier``. Catalog changes are made only there,
under ``catalog_lock``, and return once committed on a quorum and applied.

Each node opens the replicas of the tables its catalog lists (``reconcile``, polled and
also on first use) and removes those with a tombstone. A replica directory is removed only
on a tombstone, never because the table is missing from the catalog: after a restart the
catalog is replayed from the log a moment after the node opens, and a table created since
the last checkpoint would look missing until then.

Faults survived: a crash of any node at any instant (each replica recovers from its log);
a crash between a catalog change and opening or removing the local replica (``reconcile``
finishes it); a node down while tables were created or deleted (it catches up through the
metadata group, then reconciles).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid

import orjson

from dynstore.limits import CATALOG_RECONCILE_INTERVAL_S, FORWARD_POLL_S, FORWARD_WAIT_S
from dynstore.replication.tasks import Tasks
from dynstore.replication.transport import Listener
from dynstore.router.replicated import ReplicaGroup, ReplicatedPartition

META_GROUP = 0
_TABLE = b"t"
_DELETED = b"d"


def table_group(table_id: str) -> int:
    """The replication group of a table's partition: nonzero, so never the metadata group."""
    return (uuid.UUID(table_id).int & ((1 << 63) - 1)) or 1


class ClusterRouter:
    """``peers`` maps node id -> replication (host, port) of every node, this one included."""

    def __init__(self, data_dir: str, node_id: int, peers: dict[int, tuple[str, int]], *, on_fatal,
                 backend: str | None = None, sync: str = "auto"):
        self.data_dir = data_dir
        self.node_id = node_id
        self._peers = dict(peers)
        self._on_fatal = on_fatal
        self._backend = backend
        self._sync = sync
        self._tables_dir = os.path.join(data_dir, "tables")
        os.makedirs(self._tables_dir, exist_ok=True)
        host, port = self._peers[node_id]
        self.listener = Listener(host, port)
        self.catalog_lock = asyncio.Lock()
        self.meta = self._group(META_GROUP, os.path.join(data_dir, "meta"))
        self._groups: dict[str, ReplicaGroup] = {}  # TableId -> this node's replica of its partition
        self._descs: dict[str, tuple[bytes, dict]] = {}  # name -> (stored JSON, description) last read
        self._reconciled_at = -1  # the metadata slot applied when reconcile last ran
        # A replica that cannot be opened (a corrupt log) stops the node, as a replica's own failures do.
        self._tasks = Tasks(f"node {node_id} catalog", on_fatal)

    def _group(self, group: int, directory: str) -> ReplicaGroup:
        return ReplicaGroup(group, directory, self.node_id, self._peers, self.listener, on_fatal=self._on_fatal,
                            backend=self._backend, sync=self._sync)

    async def start(self) -> None:
        await self.listener.start()
        self.meta.start()
        self._tasks.spawn(self._reconcile_forever())

    # -- catalog ---------------------------------------------------------------------------------

    def table(self, name: str) -> dict | None:
        stored = self.meta.replica.tree.get(_TABLE + name.encode())
        if stored is None:
            self._descs.pop(name, None)
            return None
        cached = self._descs.get(name)
        if cached is not None and cached[0] == stored:
            return cached[1]
        desc = orjson.loads(stored)
        self._descs[name] = (stored, desc)
        return desc

    def table_names(self) -> list[str]:
        return [key[1:].decode() for key, _ in self.meta.replica.tree.scan(_TABLE, b"u")]

    async def create_table(self, desc: dict) -> None:
        """Durable in the catalog, and (within FORWARD_WAIT_S) the table's group has elected a
        leader, so the table CreateTable reports ACTIVE takes writes at once."""
        await self.meta.write([(_TABLE + desc["TableName"].encode(), orjson.dumps(desc))])
        group = self._open(desc["TableId"])
        deadline = time.monotonic() + FORWARD_WAIT_S
        while group.leader_hint() is None and time.monotonic() < deadline:
            await asyncio.sleep(FORWARD_POLL_S)

    async def update_table(self, desc: dict) -> None:
        await self.meta.write([(_TABLE + desc["TableName"].encode(), orjson.dumps(desc))])

    async def delete_table(self, name: str) -> None:
        table_id = self.table(name)["TableId"]
        await self.meta.write([(_TABLE + name.encode(), None), (_DELETED + table_id.encode(), b"")])
        await self._remove(table_id)

    # -- partitions -------------------------------------------------------------------------------

    def group_of(self, desc: dict) -> ReplicaGroup:
        """This node's replica of the table's (one) partition."""
        return self._groups.get(desc["TableId"]) or self._open(desc["TableId"])

    def partition_for(self, desc: dict, key: bytes) -> ReplicatedPartition:
        # One partition per table for now: it serves every key.
        return self.group_of(desc).view()

    def partitions(self, desc: dict) -> list[ReplicatedPartition]:
        return [self.group_of(desc).view()]

    def _open(self, table_id: str) -> ReplicaGroup:
        group = self._groups.get(table_id)
        if group is None:
            group = self._groups[table_id] = self._group(table_group(table_id),
                                                         os.path.join(self._tables_dir, table_id))
            group.start()
        return group

    async def _remove(self, table_id: str) -> None:
        group = self._groups.pop(table_id, None)
        if group is not None:
            await group.close(remove=True)
        shutil.rmtree(os.path.join(self._tables_dir, table_id), ignore_errors=True)

    async def reconcile(self) -> None:
        """Open the replica of every table in the catalog; remove those of deleted tables."""
        tree = self.meta.replica.tree
        for _, stored in tree.scan(_TABLE, b"u"):
            table_id = orjson.loads(stored)["TableId"]
            if table_id not in self._groups and tree.get(_DELETED + table_id.encode()) is None:
                self._open(table_id)
        for key, _ in tree.scan(_DELETED, b"e"):
            table_id = key[1:].decode()
            if table_id in self._groups or os.path.exists(os.path.join(self._tables_dir, table_id)):
                await self._remove(table_id)

    async def _reconcile_forever(self) -> None:
        while True:
            applied = self.meta.replica.applied
            if applied != self._reconciled_at:
                self._reconciled_at = applied
                await self.reconcile()
            await asyncio.sleep(CATALOG_RECONCILE_INTERVAL_S)

    def status(self) -> dict:
        """Each group this node holds a replica of, with its replica's status (replica.py)."""
        groups = {"meta": self.meta.replica.status()}
        for name in self.table_names():
            table_id = self.table(name)["TableId"]
            if table_id in self._groups:
                groups[name] = self._groups[table_id].replica.status()
        return groups

    async def close(self) -> None:
        await self._tasks.cancel_all()
        for group in list(self._groups.values()):
            await group.close()
        self._groups.clear()
        await self.meta.close()
        await self.listener.close()
