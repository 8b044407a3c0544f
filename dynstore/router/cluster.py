"""The router of a cluster node: the catalog in the replicated metadata partition, and
every table partition as a replication group with one replica on each node.

Layout under the node's data directory::

    meta/                         this node's replica of the metadata group (group 0)
    tables/<TableId>/<group>/     this node's replica of each partition of the table (replicated.py)

Metadata group, applied tree (keys are bytes)::

    b"t" + table name (UTF-8)  ->  the table description as JSON (orjson), as the operations keep it
    b"d" + TableId             ->  b""   the table was deleted: its replicas are removed
    b"m" + TableId             ->  the partition map: JSON {"version": n, "partitions": [{"start",
                                   "end" (hex item storage keys, end null for the last), "group",
                                   "replicas": [node ids], "leader": node id | null}, ...]}
    b"p" + TableId             ->  the table's placement: JSON {"hosts": [node ids], the nodes that
                                   hold a replica of each of its partitions (absent: every node),
                                   "joined": [node ids] placed there after the table was created,
                                   "logs": [node ids] holding log replicas while the table heals}

Placement. CreateTable (at the metadata leader) places a table on REPLICAS nodes: one in each
of the zones with the fewest tables, and in each such zone the node with the fewest (ties to
the lowest id); a cluster of REPLICAS nodes or fewer places every table on all of them. Every
partition split off the table keeps its placement (a split seeds the child on the parent's
members). A node holds replicas only of the tables placed on it; for another table it holds
the catalog entry alone, and the request router sends the table's requests to a node that
holds it (``hosts``, node/routing.py). Healing (autoadmin) replaces a lost node in a placement (``replace_host``); the
node taken in is listed as joined, so its replicas of groups that already ran open as
joining (replicated.py) and wait for a snapshot, and another node is listed under logs for
a log replica of each group while that happens. The control plane then changes each group's
membership to the placement (``Reconfigure``, node/routing.py), and retires the log replicas
once every group has its new storage replica (``retire_logs``). A node left out of a
placement (and of its logs) removes its replicas of the table.

The partition map is published by the control plane (``publish_map``, at the metadata
leader, after each change it sees in the range records); status and operators read it.

A table placed here starts as one partition, replication group ``table_group(TableId)`` (63
bits of the UUID, so every node names it the same without asking anyone), holding every key. A partition
splits into two groups (replicated.py): the range record in each group's tree names the groups
split off it, so this node finds a table's partitions, in key order, by walking from the first
group through the range records of its own replicas (``partitions``, ``partition_for``); it
opens a replica of every group it finds. A replica that has not yet applied the split is one
step behind, as eventually consistent reads may be; the leader of a group has applied every
split committed before it serves a strongly consistent read or a write, and a write proposed
before a split that commits after it is refused (StaleRange) and routed again.

Requests that must run at the leader (writes, strongly consistent reads) run with
``STRONG`` set: ``partition_for`` then raises Reroute naming the group when this replica may
not serve it now, and the request router (node/routing.py) takes the request to that group's
leader. A replica opened empty (a node that missed the split and waits for a snapshot) raises
Reroute for any read. Replica ids are node ids.

Catalog reads (``table``, ``table_names``) read this node's applied metadata tree: a
follower may lag the leader by a heartbeat. The request router (dynstore/node/routing.py)
therefore sends catalog changes, and requests naming a table this node does not know yet,
to the metadata leader after its ``read_barrier``. Catalog changes are made only there,
under ``catalog_lock``, and return once committed on a quorum and applied.

Each node opens the replicas of the tables its catalog places on it (``reconcile``, polled
and also on first use) and removes those with a tombstone. A replica directory is removed only
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
import contextvars
import functools
import os
import shutil
import time
import uuid

import orjson

from dynstore import net
from dynstore.api.errors import ServiceUnavailable
from dynstore.limits import (CATALOG_RECONCILE_INTERVAL_S, CHECKPOINT_ENTRIES, FORWARD_POLL_S, FORWARD_WAIT_S,
                             LOG_KEEP_ENTRIES, REPLICAS, TABLES_PER_ACCOUNT_MAX)
from dynstore.replication.errors import StaleRange
from dynstore.replication.replica import is_seeded
from dynstore.replication.tasks import Tasks
from dynstore.replication.transport import Listener
from dynstore.router.replicated import ReplicaGroup, ReplicatedPartition

META_GROUP = 0
_TABLE = b"t"
_DELETED = b"d"
_MAP = b"m"
_PLACEMENT = b"p"

# Set while a request runs that must see the latest state (a write, a strongly consistent read);
# the groups in VOUCHED are those a leader vouched for (a read index this replica has applied).
STRONG: contextvars.ContextVar[bool] = contextvars.ContextVar("STRONG", default=False)
VOUCHED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("VOUCHED", default=frozenset())


class Reroute(Exception):
    """The request must run at the leader of replication group ``group``."""

    def __init__(self, group: int):
        self.group = group
        super().__init__(f"the request belongs at the leader of replication group {group}")


@functools.lru_cache(maxsize=TABLES_PER_ACCOUNT_MAX)
def table_group(table_id: str) -> int:
    """The first replication group of a table: nonzero, so never the metadata group. Cached:
    each request asks it several times, and parsing the UUID costs more than the lookup."""
    return (uuid.UUID(table_id).int & ((1 << 63) - 1)) or 1


def place(zones: dict[int, str], tables_on: dict[int, int]) -> list[int]:
    """REPLICAS node ids from ``zones`` (node id -> zone), one per zone while zones last, the
    least loaded first by ``tables_on`` (node id -> tables placed on it)."""
    if len(zones) <= REPLICAS:
        return sorted(zones)
    chosen: list[int] = []
    while len(chosen) < REPLICAS:
        used = {zones[n] for n in chosen}
        zone_load = {z: sum(tables_on.get(n, 0) for n in zones if zones[n] == z) for z in set(zones.values())}
        free = [n for n in zones if n not in chosen and zones[n] not in used] or \
            [n for n in zones if n not in chosen]
        chosen.append(min(free, key=lambda n: (zone_load[zones[n]], tables_on.get(n, 0), n)))
    return sorted(chosen)


class ClusterRouter:
    """``peers`` maps node id -> replication address (net.py) of every node, this one included;
    ``zones`` maps node id -> zone (default: each node a zone of its own)."""

    def __init__(self, data_dir: str, node_id: int, peers: dict[int, net.Address], *, on_fatal,
                 zones: dict[int, str] | None = None, backend: str | None = None, sync: str = "auto",
                 secret: bytes = b"", checkpoint_entries: int = CHECKPOINT_ENTRIES,
                 log_keep_entries: int = LOG_KEEP_ENTRIES):
        self.data_dir = data_dir
        self.secret = secret  # the cluster's: every replication link proves it (handshake.py)
        self._log_sizes = {"checkpoint_entries": checkpoint_entries, "log_keep_entries": log_keep_entries}
        # control(op, request): a control call run at the leader of the group it names
        # (node/routing.py sets it; Split and ReadIndex).
        self.control = None
        self.node_id = node_id
        self._peers = dict(peers)
        self._zones = dict(zones) if zones is not None else {n: str(n) for n in peers}
        self._on_fatal = on_fatal
        self._backend = backend
        self._sync = sync
        self._tables_dir = os.path.join(data_dir, "tables")
        os.makedirs(self._tables_dir, exist_ok=True)
        self.listener = Listener(self._peers[node_id], secret)
        self.catalog_lock = asyncio.Lock()
        self.meta = self._group(META_GROUP, os.path.join(data_dir, "meta"), None)
        # Catalog changes are few and every node waits to have applied those it heard of before
        # it routes a request: their commits are told at once, not at the next heartbeat.
        self.meta.replica.tell_every_commit = True
        self.groups: dict[int, ReplicaGroup] = {}  # every table partition this node holds a replica of
        self._joining: set[int] = set()  # groups opened here waiting for a snapshot (some may have it by now)
        self._table_of: dict[int, str] = {}  # group -> TableId
        self._descs: dict[str, tuple[bytes, dict]] = {}  # name -> (stored JSON, description) last read
        self._placements: dict[str, tuple[bytes, dict]] = {}  # TableId -> (stored JSON, placement) last read
        self.log_replicas_opened = 0  # log replicas this node opened for healing tables
        self._removing: set[str] = set()  # tables whose replicas _remove is closing and deleting
        self._reconciled_at = -1  # the metadata slot applied when reconcile last ran
        # A replica that cannot be opened (a corrupt log) stops the node, as a replica's own failures do.
        self._tasks = Tasks(f"node {node_id} catalog", on_fatal)

    def _group(self, group: int, directory: str, table_id: str | None, child: bool = False,
               joining: bool = False, log_only: bool = False) -> ReplicaGroup:
        def directory_of(other: int) -> str:
            return self._group_dir(table_id, other)

        def on_child(other: int) -> None:
            if table_id not in self._removed() and table_id not in self._removing:
                self._open(table_id, other, child=True)
        peers = self._peers if table_id is None else {n: self._peers[n] for n in self.hosts(table_id)}
        return ReplicaGroup(group, directory, self.node_id, peers, self.listener, on_fatal=self._on_fatal,
                            backend=self._backend, sync=self._sync, directory_of=directory_of, on_child=on_child,
                            child=child, secret=self.secret, joining=joining, addresses=self._peers,
                            log_only=log_only, **self._log_sizes)

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

    def _removed(self) -> set[str]:
        return {key[1:].decode() for key, _ in self.meta.replica.tree.scan(_DELETED, b"e")}

    def _placement_of(self, table_id: str) -> dict:
        stored = self.meta.replica.tree.get(_PLACEMENT + table_id.encode())
        if stored is None:
            return {"hosts": sorted(self._peers), "joined": [], "logs": []}
        cached = self._placements.get(table_id)
        if cached is None or cached[0] != stored:
            cached = self._placements[table_id] = (stored, orjson.loads(stored))
        return cached[1]

    def hosts(self, table_id: str) -> list[int]:
        """The nodes the table is placed on."""
        return self._placement_of(table_id)["hosts"]

    def log_hosts(self, table_id: str) -> list[int]:
        """The nodes holding log replicas of the table's groups while it heals."""
        return self._placement_of(table_id)["logs"]

    def zone(self, node: int) -> str:
        return self._zones[node]

    def holds(self, desc: dict) -> bool:
        """Whether the table is placed on this node."""
        return self.node_id in self.hosts(desc["TableId"])

    def _has(self, desc: dict) -> bool:
        """Whether this node has replicas of the table to serve from: it is placed here, or it
        was moved off this node and still has them open (a follower's go with the next change
        to the catalog; one that leads its group stays, serving, until it has handed its lead
        over), and no older files of the table are being removed."""
        if desc["TableId"] in self._removing:
            return False
        root = self.groups.get(table_group(desc["TableId"]))
        return self.holds(desc) or (root is not None and not root.log_only)

    def serves(self, desc: dict) -> bool:
        """Whether this node's replicas can serve the table now: it has them (``_has``) and
        none still waits for its first snapshot."""
        if not self._has(desc):
            return False
        if self._joining:
            # Every replica opened here since took a snapshot: forget them.
            self._joining = {g for g in self._joining if g in self.groups and self.groups[g].replica.joining}
        return not self._joining or not any(group.replica.joining for group in self._walk(desc))

    def _placement(self) -> list[int]:
        return place(self._zones, self.tables_on())

    def tables_on(self) -> dict[int, int]:
        """node id -> how many tables are placed on it."""
        tables_on: dict[int, int] = {}
        for _, stored in self.meta.replica.tree.scan(_PLACEMENT, b"q"):
            for node in orjson.loads(stored)["hosts"]:
                tables_on[node] = tables_on.get(node, 0) + 1
        return tables_on

    async def replace_host(self, desc: dict, lost: int, taken: int, log_at: int | None = None) -> None:
        """Place the table on ``taken`` instead of ``lost``, with log replicas on ``log_at``
        meanwhile (at the metadata leader)."""
        placement = self._placement_of(desc["TableId"])
        await self._place(desc, hosts=sorted(set(placement["hosts"]) - {lost} | {taken}),
                          joined=sorted(set(placement["joined"]) | {taken}),
                          logs=[] if log_at is None else [log_at])

    async def retire_logs(self, desc: dict) -> None:
        placement = self._placement_of(desc["TableId"])
        await self._place(desc, hosts=placement["hosts"], joined=placement["joined"], logs=[])

    async def _place(self, desc: dict, **placement) -> None:
        await self.meta.write([(_PLACEMENT + desc["TableId"].encode(), orjson.dumps(placement))])

    async def create_table(self, desc: dict) -> None:
        """Durable in the catalog, placed, and (within FORWARD_WAIT_S, when placed here) the
        table's group has elected a leader, so the table CreateTable reports ACTIVE takes
        writes at once (elsewhere the first request waits for that election)."""
        hosts = self._placement()
        await self.meta.write([(_TABLE + desc["TableName"].encode(), orjson.dumps(desc)),
                               (_PLACEMENT + desc["TableId"].encode(),
                                orjson.dumps({"hosts": hosts, "joined": [], "logs": []}))])
        if self.node_id not in hosts:
            return
        group = self._open(desc["TableId"], table_group(desc["TableId"]))
        deadline = time.monotonic() + FORWARD_WAIT_S
        while group.leader_hint() is None and time.monotonic() < deadline:
            await asyncio.sleep(FORWARD_POLL_S)

    async def update_table(self, desc: dict) -> None:
        await self.meta.write([(_TABLE + desc["TableName"].encode(), orjson.dumps(desc))])

    async def delete_table(self, name: str) -> None:
        table_id = self.table(name)["TableId"]
        await self.meta.write([(_TABLE + name.encode(), None), (_MAP + table_id.encode(), None),
                               (_PLACEMENT + table_id.encode(), None), (_DELETED + table_id.encode(), b"")])
        await self._remove(table_id)

    # -- partitions -------------------------------------------------------------------------------

    def _group_dir(self, table_id: str, group: int) -> str:
        return os.path.join(self._tables_dir, table_id, str(group))

    def _open(self, table_id: str, group_id: int, *, child: bool = False,
              log_only: bool = False) -> ReplicaGroup:
        group = self.groups.get(group_id)
        if group is None:
            directory = self._group_dir(table_id, group_id)
            # Placed here after the table was created: a group this node did not seed itself
            # ran before, and its replica here starts by waiting for a snapshot.
            joining = (log_only or self.node_id in self._placement_of(table_id)["joined"]) \
                and not is_seeded(directory)
            group = self.groups[group_id] = self._group(group_id, directory, table_id, child, joining, log_only)
            if group.replica.joining:
                self._joining.add(group_id)
            if log_only:
                self.log_replicas_opened += 1
            self._table_of[group_id] = table_id
            group.start()
        return group

    def _walk(self, desc: dict) -> list[ReplicaGroup]:
        """This node's replicas of the table's partitions, in key order (none: the table is
        placed elsewhere, and none of its replicas is left open here)."""
        table_id = desc["TableId"]
        if not self._has(desc):
            return []
        placed = self.holds(desc)
        found, todo = [], [(b"", table_group(table_id), False)]
        while todo:
            start, group_id, child = todo.pop()
            group = self.groups.get(group_id) or (self._open(table_id, group_id, child=child) if placed else None)
            if group is None:
                continue  # moved off this node: a split's new group is not opened here any more
            found.append((start, group))
            todo.extend((key, g, True) for key, g in group.range.children)
        found.sort(key=lambda entry: entry[0])
        return [group for _, group in found]

    def _checked(self, group: ReplicaGroup) -> ReplicatedPartition:
        if STRONG.get():
            if not (group.serves_strong() or group.group in VOUCHED.get()):
                raise Reroute(group.group)
        elif not group.seeded:
            raise Reroute(group.group)
        return group.view()

    def group_for(self, desc: dict, key: bytes) -> ReplicaGroup:
        """This node's replica of the group that holds item storage key ``key``, as far as this
        node's replicas know. StaleRange when the table is not placed here (it was placed
        elsewhere after the request was routed): the request is routed again."""
        if not self._has(desc):
            raise StaleRange(table_group(desc["TableId"]))
        group = self.groups.get(table_group(desc["TableId"])) or self._open(desc["TableId"],
                                                                             table_group(desc["TableId"]))
        while True:
            rng = group.range
            if rng.holds(key) or not group.seeded:
                return group
            child = max((c for c in rng.children if c[0] <= key), key=lambda c: c[0])[1]
            group = self.groups.get(child)
            if group is None:
                if not self.holds(desc):
                    raise StaleRange(child)  # moved off this node: the request is routed again
                group = self._open(desc["TableId"], child, child=True)

    def join(self, desc: dict, group_id: int, *, log_only: bool = False) -> ReplicaGroup:
        """This node's replica of a group of a table placed here (or a log replica, on a node
        of its logs), opened if it is not (a group found through the control plane, before
        this node's replicas name it). ServiceUnavailable while its older files are removed."""
        if desc["TableId"] in self._removing:
            raise ServiceUnavailable(f"the replicas of table {desc['TableName']} here are being removed")
        return self._open(desc["TableId"], group_id, log_only=log_only)

    def partition_for(self, desc: dict, key: bytes) -> ReplicatedPartition:
        return self._checked(self.group_for(desc, key))

    def partitions(self, desc: dict) -> list[ReplicatedPartition]:
        """This node's replicas of the table's partitions, in key order; none for a table
        placed elsewhere (the figures a catalog change reports there), and StaleRange while
        the files of a table placed here again are still being removed."""
        if desc["TableId"] in self._removing:
            raise StaleRange(table_group(desc["TableId"]))
        return [self._checked(group) for group in self._walk(desc)]

    def table_of_group(self, group: int) -> dict | None:
        """The description of the table a group of this node belongs to (None: deleted)."""
        table_id = self._table_of.get(group)
        for name in self.table_names():
            desc = self.table(name)
            if desc["TableId"] == table_id:
                return desc
        return None

    def table_groups(self, desc: dict) -> list[ReplicaGroup]:
        return self._walk(desc)

    async def split(self, desc: dict, partition: ReplicatedPartition, key: bytes) -> int | None:
        """Split ``partition`` at item storage key ``key`` (at its group's leader, wherever that
        is); returns the new group's id once the split is applied at the leader, None when the
        leader's range no longer holds ``key``."""
        return await self.split_group(desc, partition.group.group, key)

    async def split_group(self, desc: dict, group: int, key: bytes) -> int | None:
        """``split`` of the partition of replication group ``group``, placed here or not."""
        child = (uuid.uuid4().int & ((1 << 63) - 1)) or 1
        answer = await self.control("Split", {"table": desc["TableName"], "group": group, "key": key.hex(),
                                              "child": child})
        return child if answer["split"] else None

    def partition_map(self, desc: dict) -> list[dict]:
        """The table's partitions as this node's replicas know them (the map's "partitions")."""
        return [{"start": group.range.start.hex(), "end": None if group.range.end is None else group.range.end.hex(),
                 "group": group.group, "replicas": self.hosts(desc["TableId"]), "members": group.members(),
                 "logs": group.log_members(), "leader": group.leader_hint()}
                for group in self._walk(desc)]

    def stored_map(self, table_id: str) -> dict | None:
        stored = self.meta.replica.tree.get(_MAP + table_id.encode())
        return None if stored is None else orjson.loads(stored)

    async def publish_map(self, desc: dict, partitions: list[dict]) -> None:
        """Write the table's partition map (``partition_map`` of a node that holds it) when its
        partitions or leaders changed."""
        stored = self.stored_map(desc["TableId"])
        if stored is None or stored["partitions"] != partitions:
            version = 1 if stored is None else stored["version"] + 1
            await self.meta.write([(_MAP + desc["TableId"].encode(),
                                    orjson.dumps({"version": version, "partitions": partitions}))])

    async def _remove(self, table_id: str) -> None:
        # DeleteTable and the reconcile loop may both remove a table: each takes the groups it
        # closes out of the maps before its first await, so neither closes one twice. No replica
        # of the table opens until the files are gone (a table placed here again meanwhile
        # would otherwise lose the files of its new replicas to this removal).
        doomed = [g for g, t in self._table_of.items() if t == table_id]
        closing = [self.groups.pop(g) for g in doomed]
        for group_id in doomed:
            del self._table_of[group_id]
        self._placements.pop(table_id, None)
        self._removing.add(table_id)
        try:
            for group in closing:
                await group.close(remove=True)
            shutil.rmtree(os.path.join(self._tables_dir, table_id), ignore_errors=True)
        finally:
            self._removing.discard(table_id)

    async def reconcile(self) -> None:
        """Open the replicas of every table in the catalog placed here; remove those of deleted
        tables and of tables placed elsewhere."""
        removed = self._removed()
        for name in self.table_names():
            desc = self.table(name)
            if desc["TableId"] not in removed:
                self._walk(desc)
                if not self.holds(desc) and self.node_id not in self.log_hosts(desc["TableId"]) \
                        and self._movable(desc["TableId"]):
                    await self._remove(desc["TableId"])
        for table_id in removed:
            if table_id in self._table_of.values() or os.path.exists(os.path.join(self._tables_dir, table_id)):
                await self._remove(table_id)

    def _movable(self, table_id: str) -> bool:
        """This node has replicas of the table to remove, and none of them leads its group (a
        leader is removed from its group last, after handing its lead over; the removal follows
        the next change to the catalog, such as the new partition map)."""
        groups = [self.groups[g] for g, t in self._table_of.items() if t == table_id]
        if any(group.is_leader() for group in groups):
            return False
        return bool(groups) or os.path.exists(os.path.join(self._tables_dir, table_id))

    async def _reconcile_forever(self) -> None:
        while True:
            applied = self.meta.replica.applied
            if applied != self._reconciled_at:
                self._reconciled_at = applied
                await self.reconcile()
            await asyncio.sleep(CATALOG_RECONCILE_INTERVAL_S)

    def status(self) -> dict:
        """Each group this node holds a replica of, with its replica's status (replica.py)."""
        groups = {"meta": self.meta.status()}
        for name in self.table_names():
            desc = self.table(name)
            for group in self._walk(desc):
                root = group.group == table_group(desc["TableId"])
                groups[name if root else f"{name}#{group.group}"] = group.status()
        return groups

    async def close(self) -> None:
        await self._tasks.cancel_all()
        for group in list(self.groups.values()):
            await group.close()
        self.groups.clear()
        await self.meta.close()
        await self.listener.close()
