"""Request routing in a cluster: each DynamoDB operation runs where its partition's leader is.

``Routing(state, node_id, forward_addresses).operations`` has the shape of
dynstore.api.operations.OPERATIONS (the HTTP front end dispatches to it); each entry
decides where the request runs and runs the operation there, unchanged:

* Catalog changes (CreateTable, DeleteTable, UpdateTable, tags, TTL settings) and
  ListTables run at the metadata group's leader, after its ``read_barrier``.
* A request naming a table this node's catalog does not hold yet also goes to the
  metadata leader, which routes it again with its current catalog (a table created
  through another node a moment ago is found; a missing table is reported missing).
* A request for a table placed on other nodes (router/cluster.py, a cluster of more nodes
  than a partition has replicas) goes to one of them: the leader of the table's first
  partition in the published map first, then the others, and is routed there again.
* Everything else runs here first. Eventually consistent reads (GetItem, Query, Scan,
  BatchGetItem without ConsistentRead) and catalog reads of known tables read this node's
  replicas. Writes and strongly consistent reads run with cluster.STRONG set: when the
  partition of their key is led elsewhere (or this leader has not yet applied everything
  committed before its term), ``partition_for`` raises Reroute, before anything was done,
  and the request goes to that group's leader, where it runs again after ``read_barrier``.
  So a request always runs against the partition that holds its key now, even across a
  split; a write refused because its group split while it was in flight (StaleRange, not
  applied) is routed again from the start. A single-item request (GetItem, PutItem,
  UpdateItem, DeleteItem) whose key is well formed is not run here first: its key names
  the group, and the request goes to that group's leader at once, which validates it.
* BatchWriteItem, and BatchGetItem with ConsistentRead, are validated here, then split by
  the partition of each key; each part runs at its partition's leader and the answers are
  merged (unprocessed items and keys joined, consumed capacity summed per table).
* A strongly consistent Scan reads this node's replicas after each partition's leader has
  vouched for a slot this replica then applied (a read index): the page sees every write
  acknowledged before the Scan began, whichever node leads each partition.
* BatchGetItem and BatchWriteItem over several tables are validated whole (limits over the
  request, every key and item), then split by table, each part routed on its own, and the
  answers merged.

Reading one's writes through one node: every forwarded request and every answer carries,
for the metadata group and the groups of the tables it names, the slot the sending node had
applied (or had heard of from another node). A node looks up its catalog only after its
metadata replica applied what it heard of, and serves an operation from its own replicas
(an eventually consistent read, a catalog read) only after the table's replicas did too,
waiting at most CATCH_UP_WAIT_S (a follower learns commits within a heartbeat; one cut off
from its leader answers from what it has; a leader has applied all of it already). A request
forwarded to a group's leader names the group, and the leader's answer says which of the
group's entries it applied ("chosen": the slot and its ballot): a replica here holding that
entry applies up to it at once (replica.py ``learn``), without waiting for the leader's next
Accept, so the node reads what it wrote through another node's leader after that answer
rather than a heartbeat later. So a table created, updated or deleted through a node is seen
so by it at once, an eventually consistent read reflects every write acknowledged through the same
node, and so do the counts DescribeTable and DeleteTable report. For a table placed
elsewhere this node keeps the slots the answers reported, and sends them along with the
table's next requests.

A request for a group led elsewhere is forwarded to the leader's node over the forward
port, following the replica's leader hint; with no leader known (an election, a hand-over)
it waits for the replica to see the leader change (at most FORWARD_POLL_S at a time) and
retries until FORWARD_WAIT_S, then answers ServiceUnavailable (retryable). Each hop
counts, and a request is not forwarded more than FORWARD_HOPS_MAX times: while a leader
changes, stale hints can pass it round in a circle. The node the client asked then routes it
again after a poll, until FORWARD_WAIT_S (ServiceUnavailable means nothing was done).

Forward protocol (node to node, on each node's forward port): after the opening of
dynstore/replication/handshake.py (group FORWARD, the caller's node id, the cluster's
secret), the frames of dynstore/replication/group_process.py (``u32 length | JSON``, pipelined, matched by id)::

    {"id", "op": "<DynamoDB operation>", "request": {...}, "hops": n, "applied": {"<group>": slot, ...},
     "group": the group whose leader it is sent to (when it is)}
      -> {"id", "ok": true, "result": {...}, "applied": {"<group>": slot, ...},
          "chosen": [slot, ballot round, ballot replica] of that group, or null}
      |  {"id", "ok": false, "status": 400, "body": {"__type": "...#Name", "message": ...},
          "applied": {...}, "chosen": ...}

Frames are at most FORWARD_FRAME_BYTES_MAX: the largest request, or the largest answer.

and the control calls between nodes, each run at the leader of the group it names::

    {"id", "op": "ReadIndex", "request": {"table", "group"}, "hops"} -> result {"index": slot}
    {"id", "op": "Split", "request": {"table", "group", "key", "child"}, "hops"} -> result {"split": bool}
    {"id", "op": "Reconfigure", "request": {"table", "group", "hosts", "logs"}, "hops"} -> result {"done": bool}
        (one membership change toward storage replicas ``hosts`` and log replicas ``logs``; a
        node added must first answer Join ready)
    {"id", "op": "Transfer", "request": {"table", "group", "to"}, "hops"} -> result {"moved": bool}
        (the leader hands the lead to storage member ``to``, replica.py ``transfer``)

and one answered by the node it is sent to (the control plane's readings of each node)::

    {"id", "op": "Load", "request": {}, "hops": 0}   -> result {"requests": {"<group>": n, ...}}
    {"id", "op": "Load", "request": {"sample": group}, "hops": 0} -> result {"keys": [hex, ...]}
    {"id", "op": "Map", "request": {"table"}, "hops": 0}  -> result {"desc", "partitions"} (cluster.py's map;
                                                             the published one for a table placed elsewhere)
    {"id", "op": "Join", "request": {"table", "group", "members", "log"}, "hops": 0} -> result {"ready": bool}
        (opens this node's replica of the group, a log replica if "log", linked to its members;
        ready once it holds a snapshot)

Ambiguity, as DynamoDB has it: a write whose leader steps down before it is applied and
does not learn its outcome (replica.py ``_orphan_waiters``), or whose forwarded call loses
its connection after sending, answers InternalServerError (500, which SDKs retry): it may
or may not have taken effect. Such a write is not retried here, since a conditional or ADD
update is not idempotent; a read is, at the next leader. A write whose replica stopped
leading before the request proposed anything (a hand-over between the leader check and the
proposal, or during one: replicated.py ``transfer``), or whose stepped-down leader learnt that
its slot holds another command (NotChosen), did nothing, so it runs again, at the next
leader; one whose leader holds its most proposals in flight (Busy) answers
ProvisionedThroughputExceededException, which SDKs retry after a back-off.
router/replicated.py's PROPOSED tells the cases apart.
"""
from __future__ import annotations

import asyncio
import logging
import time

from dynstore import net
from dynstore.api import errors
from dynstore.api.errors import (DynamoDBError, InternalServerError, ProvisionedThroughputExceededException,
                                 ServiceUnavailable)
from dynstore.api.operations import OPERATIONS
from dynstore.api.operations.batch import check_batch, plan_writes
from dynstore.api.operations.schema import table as find_table
from dynstore.limits import (CATCH_UP_WAIT_S, CONTROL_CALL_TIMEOUT_S, FORWARD_FRAME_BYTES_MAX,
                             FORWARD_HOPS_MAX, FORWARD_MOVED_GRACE_S, FORWARD_POLL_S, FORWARD_WAIT_S)
from dynstore.node.links import ROUTER, NodeLinks
from dynstore.replication import handshake
from dynstore.replication.errors import Busy, FrameError, NotLeader, StaleRange
from dynstore.replication.group_process import serve_frames, write_frame
from dynstore.router.cluster import META_GROUP, STRONG, VOUCHED, Reroute
from dynstore.router.replicated import PROPOSED

log = logging.getLogger(__name__)

# Catalog changes whose answer describes the table, with its figures (_described_change).
_DESCRIBED_CHANGES = frozenset({"UpdateTable", "DeleteTable"})
_CATALOG_CHANGES = frozenset({"CreateTable", "DeleteTable", "UpdateTable", "TagResource", "UntagResource",
                              "UpdateTimeToLive"})
_CATALOG_READS = frozenset({"DescribeTable", "DescribeTimeToLive", "ListTagsOfResource"})
_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem"})
_ANYWHERE = frozenset({"DescribeLimits", "DescribeEndpoints"})
_BATCHES = frozenset({"BatchGetItem", "BatchWriteItem"})
_SINGLE_ITEM = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem"})
# Requests that change nothing: one whose forwarded call was cut off (its leader stepped down)
# is sent again to the next leader instead of answering that it may or may not have run.
_RETRIED = _READS | _CATALOG_READS | frozenset({"ListTables", "ReadIndex"})
_THROTTLED = ("Throughput exceeds the current capacity of your table or index: a partition's leader holds its most "
              "writes in flight. Please try again shortly.")


def _tables(op: str, request: dict) -> list[str]:
    if op in _BATCHES:
        return list(request["RequestItems"])
    if "ResourceArn" in request:
        return [request["ResourceArn"].rpartition("table/")[2]]
    return [request["TableName"]] if "TableName" in request else []


def _consistent(op: str, request: dict) -> bool:
    if op == "BatchGetItem":
        return any(entry.get("ConsistentRead") for entry in request["RequestItems"].values())
    return bool(request.get("ConsistentRead"))


def _merge(parts: list[dict]) -> dict:
    """One batch answer from the answers of its parts: maps joined (the lists of one table
    chained), lists chained."""
    out: dict = {}
    for part in parts:
        for name, value in part.items():
            if name not in out:
                out[name] = value
            elif isinstance(value, dict):
                joined = dict(out[name])
                for key, more in value.items():
                    joined[key] = joined[key] + more if key in joined and isinstance(more, list) else more
                out[name] = joined
            else:
                out[name] = out[name] + value
    return out


def _merge_consumed(entries: list[dict]) -> list[dict]:
    """ConsumedCapacity entries of the parts of one request: one entry per table, units summed."""
    merged: dict[str, dict] = {}
    for entry in entries:
        into = merged.setdefault(entry["TableName"], {"TableName": entry["TableName"]})
        for field, value in entry.items():
            if isinstance(value, (int, float)):
                into[field] = into.get(field, 0) + value
            elif isinstance(value, dict):
                into[field] = _merge_consumed_maps(into.get(field, {}), value)
    return list(merged.values())


def _merge_consumed_maps(into: dict, more: dict) -> dict:
    out = dict(into)
    for name, value in more.items():
        if isinstance(value, dict):
            out[name] = _merge_consumed_maps(out.get(name, {}), value)
        else:
            out[name] = out.get(name, 0) + value
    return out


def _merge_answers(parts: list[dict]) -> dict:
    """One answer from the answers of the per-partition parts of one table's batch."""
    out = _merge(parts)
    if "ConsumedCapacity" in out:
        out["ConsumedCapacity"] = _merge_consumed(out["ConsumedCapacity"])
    return out


def answer_of(frame: dict) -> dict:
    """The result of a forwarded request's answer frame, or the DynamoDB error it carries."""
    if frame["ok"]:
        return frame["result"]
    raise error_from_body(frame["status"], frame["body"])


def error_from_body(status: int, body: dict) -> DynamoDBError:
    """The DynamoDB error a forwarded request answered, to answer the same here."""
    name = body.get("__type", "").rpartition("#")[2]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, DynamoDBError)):
        cls = InternalServerError
    extra = {k: v for k, v in body.items() if k not in ("__type", "message")}
    return cls(body.get("message"), **extra)


class Routing:
    """``forward_addresses`` maps node id -> every node's forward address (net.py)."""

    def __init__(self, state, node_id: int, forward_addresses: dict[int, net.Address]):
        self.state = state
        self.router = state.router
        self.node_id = node_id
        self.addresses = dict(forward_addresses)
        self.links = NodeLinks(forward_addresses, self.router.secret, node_id)
        self._server: asyncio.AbstractServer | None = None
        self.forwarded = 0  # requests this node sent to another node's leader
        self.leader_waits = 0  # times a request waited for its group's leader to change, or to route again
        # Group -> the highest slot another node reported to this one (in a forwarded request or
        # an answer) that this node's replica had not applied yet when it last looked.
        self._heard: dict[int, int] = {}
        # TableId of a table placed elsewhere -> {group: the highest slot its nodes reported}.
        self._heard_elsewhere: dict[str, dict[str, int]] = {}
        self.operations = {op: self._entry(op) for op in OPERATIONS}
        self._control = {"ReadIndex": self._read_index, "Split": self._split, "Reconfigure": self._reconfigure,
                         "Transfer": self._transfer}
        self._node_control = {"Load": self._load, "Map": self._map, "Join": self._join}

    def _entry(self, op: str):
        async def routed(state, request: dict) -> dict:
            return await self._from_client(op, request)
        routed.__name__ = op
        return routed

    async def _from_client(self, op: str, request: dict) -> dict:
        """``route`` for a client's request. One that found no leader or no node of its table
        along the way did nothing (ServiceUnavailable): while leaders change, nodes' hints can
        send it around in a circle until its hops run out. It is routed again from here after
        FORWARD_POLL_S, by when the election or the move is over, until FORWARD_WAIT_S."""
        deadline = time.monotonic() + FORWARD_WAIT_S
        while True:
            try:
                return await self.route(op, request, 0)
            except ServiceUnavailable:
                if time.monotonic() >= deadline:
                    raise
            self.leader_waits += 1
            await asyncio.sleep(FORWARD_POLL_S)

    # --- deciding where -----------------------------------------------------------------------

    async def route(self, op: str, request: dict, hops: int) -> dict:
        if op in self._node_control:
            return await self._node_control[op](request)
        if op in self._control:
            group = self.router.groups.get(request["group"])
            if group is None or group.replica.joining:
                # A partition of a table placed elsewhere, one whose replica here still waits
                # for its first snapshot, or one split off a partition whose replica here has
                # not learnt of the split yet: the call runs at another of the table's nodes.
                desc = self.router.table(request["table"])
                if desc is None:
                    raise ServiceUnavailable(f"replication group {request['group']} is not open here")
                return await self._to_hosts(desc, op, request, hops)
            return await self._at_leader(group, op, request, hops)
        if op in _ANYWHERE:
            return await self._run(op, request, False)
        await self._catch_up([self.router.meta])
        names = _tables(op, request)
        descs = [self.router.table(name) for name in names]
        if op in _CATALOG_CHANGES or op == "ListTables" or None in descs:
            return await self._at_leader(self.router.meta, op, request, hops)
        if op in _BATCHES and len(names) > 1:
            check_batch(self.state, op, request)
            parts = [dict(request, RequestItems={name: request["RequestItems"][name]}) for name in names]
            return _merge(list(await asyncio.gather(*(self.route(op, part, hops) for part in parts))))
        if descs and not self.router.serves(descs[0]):
            # Placed elsewhere, or placed here so lately that this node still waits for state.
            return await self._to_hosts(descs[0], op, request, hops)
        if op in _CATALOG_READS:
            return await self._here(op, request, hops, strong=False)
        strong = op not in _READS or _consistent(op, request)
        if op == "BatchWriteItem":
            return await self._batch_write(request, descs[0], hops)
        if strong and op in ("Scan", "BatchGetItem"):
            return await self._vouched(op, request, descs[0], hops)
        if strong and op in _SINGLE_ITEM:
            group = self._group_of_key(op, request, descs[0])
            if group is not None and not group.serves_strong():
                # Led elsewhere: straight to its leader, which runs (and validates) all of it.
                return await self._at_leader(group, op, request, hops)
        return await self._here(op, request, hops, strong=strong)

    def _group_of_key(self, op: str, request: dict, desc: dict):
        """This node's replica of the group of a single-item request's key; None when the key
        is not well formed (running the operation says how) or the table is not placed here."""
        try:
            table = find_table(self.state, desc["TableName"])
            source = request["Item"] if op == "PutItem" else request["Key"]
            key = table.schema.validate_key({name: source[name] for name in table.schema.names})
            return self.router.group_for(desc, table.storage_key(key))
        except (DynamoDBError, StaleRange, KeyError, TypeError):
            return None

    def _groups(self, descs: list[dict]) -> list:
        """This node's replicas of the metadata group and of the tables' partitions."""
        return [self.router.meta] + [group for desc in descs for group in self.router.table_groups(desc)]

    async def _catch_up(self, groups: list) -> None:
        """Once this node's replicas of ``groups`` applied what other nodes reported to it, or
        CATCH_UP_WAIT_S passed."""
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        for group in groups:
            heard = self._heard.get(group.group, 0)
            if group.replica.applied < heard and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(group.replica.wait_applied(heard), deadline - time.monotonic())
                except (asyncio.TimeoutError, NotLeader):
                    pass  # cut off from its leader: it answers from what it has
            if group.replica.applied >= self._heard.get(group.group, 0):
                self._heard.pop(group.group, None)  # the replica's own figure says as much now

    def _known_groups(self, op: str, request: dict) -> list:
        """The groups of ``_groups`` for the tables of a request that this node's catalog holds."""
        return self._groups([desc for desc in map(self.router.table, _tables(op, request)) if desc is not None])

    def _applied(self, op: str, request: dict) -> dict[str, int]:
        """What this node applied or heard of in the groups a request touches, sent along with a
        forwarded request and with its answer."""
        if op in self._control or op in self._node_control:
            return {}
        applied = {str(g.group): max(g.replica.applied, self._heard.get(g.group, 0))
                   for g in self._known_groups(op, request)}
        for name in _tables(op, request):
            desc = self.router.table(name)
            if desc is not None:
                applied.update(self._heard_elsewhere.get(desc["TableId"], {}))
        return applied

    def _chosen(self, group_id: int | None) -> list[int] | None:
        """If group ``group_id`` is led here: the slot applied, with its ballot, when the entry
        there is of this leader's ballot (replica.py ``chosen``, what ``learn`` takes)."""
        group = self.router.meta if group_id == META_GROUP else self.router.groups.get(group_id)
        entry = None if group is None else group.replica.chosen()
        return None if entry is None else [entry[0], *entry[1]]

    def _hear(self, applied: dict[str, int]) -> None:
        groups = self.router.groups
        for group, slot in applied.items():
            group = int(group)
            here = groups.get(group)
            if slot > self._heard.get(group, 0) and (here is None or here.replica.applied < slot):
                self._heard[group] = slot

    async def _here(self, op: str, request: dict, hops: int, *, strong: bool, vouched=frozenset()) -> dict:
        """Run the request on this node's replicas; at a group's leader if they say so."""
        try:
            return await self._run(op, request, strong, vouched)
        except Reroute as to:
            return await self._at_leader(self.router.groups[to.group], op, request, hops)
        except (StaleRange, NotLeader):
            return await self._again(op, request, hops)

    async def _to_hosts(self, desc: dict, op: str, request: dict, hops: int) -> dict:
        """Run the request at a node the table is placed on: the leader of its first partition
        in the published map first, then each of them in turn, until one answers or
        FORWARD_WAIT_S passed."""
        hosts = self.router.hosts(desc["TableId"])
        stored = self.router.stored_map(desc["TableId"])
        leader = stored["partitions"][0]["leader"] if stored and stored["partitions"] else None
        order = sorted(hosts, key=lambda node: (node != leader, (node - self.node_id) % (max(hosts) + 1)))
        if hops >= FORWARD_HOPS_MAX:
            raise ServiceUnavailable(f"request forwarded {hops} times without reaching its table")
        deadline = time.monotonic() + FORWARD_WAIT_S
        while True:
            for node in order:
                if node == self.node_id or node not in self.addresses:
                    continue
                self.forwarded += 1
                answer = await self.links.call(node, op, request, hops + 1, applied=self._applied(op, request))
                if answer is None:
                    continue  # not reachable: nothing was sent, try the next
                applied = answer.get("applied", {})
                self._hear({g: slot for g, slot in applied.items() if int(g) == META_GROUP})
                heard = self._heard_elsewhere.setdefault(desc["TableId"], {})
                for g, slot in applied.items():
                    if int(g) != META_GROUP and slot > heard.get(g, 0):
                        heard[g] = slot
                return answer_of(answer)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"no node of table {desc['TableName']} answered within {FORWARD_WAIT_S} s")
            await asyncio.sleep(FORWARD_POLL_S)

    async def _again(self, op: str, request: dict, hops: int) -> dict:
        if hops >= FORWARD_HOPS_MAX:
            raise ServiceUnavailable(f"request routed {hops} times without reaching its partition")
        return await self.route(op, request, hops + 1)

    async def _at_leader(self, group, op: str, request: dict, hops: int) -> dict:
        deadline = time.monotonic() + FORWARD_WAIT_S
        while True:
            if group is not self.router.meta and self.router.groups.get(group.group) is not group:
                # This node's replica was closed meanwhile (the table was moved off this node):
                # it hears of no leader any more, so the request is routed afresh.
                return await self._again(op, request, hops)
            if group.is_leader():
                try:
                    await group.read_barrier()
                    if group is self.router.meta and op not in _CATALOG_CHANGES and op != "ListTables" \
                            and None not in map(self.router.table, _tables(op, request)):
                        # Asked as the metadata leader about a table: it is known now, route it.
                        return await self._again(op, request, hops)
                    if group is self.router.meta and op in _DESCRIBED_CHANGES:
                        return await self._described_change(op, request, hops)
                    # Catalog changes read table partitions only for their figures (DescribeTable's).
                    return await self._run(op, request, group is not self.router.meta)
                except NotLeader:
                    pass  # nothing was written (_run): ask the next leader
                except Reroute as to:
                    if to.group != group.group:
                        return await self._again(op, request, hops)
                    if time.monotonic() < deadline:
                        # This leader committed more than it applied since its read barrier
                        # returned (a write of another client): the barrier waits for that.
                        continue
                except StaleRange:
                    return await self._again(op, request, hops)
            else:
                leader = group.leader_hint()
                if leader is not None and leader != self.node_id and leader in self.addresses:
                    if hops >= FORWARD_HOPS_MAX:
                        raise ServiceUnavailable(f"request forwarded {hops} times without reaching a leader")
                    try:
                        answer = await self._forward(group, leader, op, request, hops + 1)
                    except InternalServerError:
                        if op not in _RETRIED:
                            raise
                        answer = None  # a read changes nothing: ask the next leader
                    if answer is not None:
                        return answer
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"no leader for replication group {group.group} within "
                                         f"{FORWARD_WAIT_S} s")
            self.leader_waits += 1
            await group.leader_change(FORWARD_POLL_S)

    async def _described_change(self, op: str, request: dict, hops: int) -> dict:
        """UpdateTable or DeleteTable at the metadata leader. Their answer describes the table
        with its item count and sizes, which only the nodes it is placed on know: for a table
        placed elsewhere they are asked first (DescribeTable; before the change, since a
        deleted table has no nodes to ask), and the answer carries their figures."""
        desc = self.router.table(request["TableName"])
        if desc is None or self.router.serves(desc):
            return await self._run(op, request, False)
        try:
            described = (await self._to_hosts(desc, "DescribeTable", {"TableName": desc["TableName"]}, hops))["Table"]
        except DynamoDBError:
            described = None  # none of its nodes could tell: the change goes on, with figures of 0
        answer = await self._run(op, request, False)
        table = answer["TableDescription"]
        if described is not None and table.get("TableId") == described.get("TableId"):
            table["ItemCount"], table["TableSizeBytes"] = described["ItemCount"], described["TableSizeBytes"]
            for kind in ("LocalSecondaryIndexes", "GlobalSecondaryIndexes"):
                figures = {index["IndexName"]: index for index in described.get(kind, ())}
                for index in table.get(kind, ()):
                    if index["IndexName"] in figures:
                        index["ItemCount"] = figures[index["IndexName"]]["ItemCount"]
                        index["IndexSizeBytes"] = figures[index["IndexName"]]["IndexSizeBytes"]
        return answer

    async def _run(self, op: str, request: dict, strong: bool, vouched=frozenset()) -> dict:
        """Run the operation here; Reroute and StaleRange (nothing was done) to the caller."""
        if op in self._control:
            return await self._control[op](request)
        if not strong and self._heard:
            # What this node's replicas serve must reflect what it heard of (nothing to wait for
            # when it heard of nothing its replicas lack). A strong request runs at its leader,
            # which has applied everything (read_barrier): waiting here for a follower to learn
            # of the last commit would only hold the request until a heartbeat.
            await self._catch_up(self._known_groups(op, request))
        strong_token, vouched_token = STRONG.set(strong), VOUCHED.set(vouched)
        proposed_token = PROPOSED.set([])
        try:
            return await OPERATIONS[op](self.state, request)
        except NotLeader as exc:
            if not PROPOSED.get():
                raise  # nothing was written: the caller routes the request again
            raise InternalServerError(f"the partition's leader changed while the request was applied; it may or "
                                      f"may not have taken effect ({exc})") from None
        except Busy as exc:
            if not PROPOSED.get():
                # Nothing was written: the client backs off and tries again, as DynamoDB has it.
                raise ProvisionedThroughputExceededException(_THROTTLED) from None
            raise InternalServerError(f"the partition's leader is overloaded; it may or may not have taken "
                                      f"effect ({exc})") from None
        finally:
            STRONG.reset(strong_token)
            VOUCHED.reset(vouched_token)
            PROPOSED.reset(proposed_token)

    # --- requests over several partitions ---------------------------------------------------------

    async def _batch_write(self, request: dict, desc: dict, hops: int) -> dict:
        """Validate the whole batch here, then write each partition's part at its leader."""
        plans = plan_writes(self.state, request["RequestItems"])
        parts: dict[int, list] = {}
        for name, table, write, key, _ in plans:
            group = self.router.group_for(desc, table.storage_key(key))
            parts.setdefault(group.group, []).append(write)
        if len(parts) == 1:
            return await self._here("BatchWriteItem", request, hops, strong=True)
        name = next(iter(request["RequestItems"]))
        answers = await asyncio.gather(*(
            self._at_leader(self.router.groups[group], "BatchWriteItem", dict(request, RequestItems={name: writes}),
                            hops) for group, writes in parts.items()))
        return _merge_answers(answers)

    async def _vouched(self, op: str, request: dict, desc: dict, hops: int) -> dict:
        """A strongly consistent read over many partitions, served by this node's replicas once
        each has applied a slot its leader vouched for."""
        groups = self.router.table_groups(desc)
        await asyncio.gather(*(self._read_index_here(group, desc["TableName"], hops) for group in groups))
        return await self._here(op, request, hops, strong=True, vouched=frozenset(g.group for g in groups))

    async def _read_index_here(self, group, table: str, hops: int) -> None:
        if group.serves_strong():
            return
        answer = await self._at_leader(group, "ReadIndex", {"table": table, "group": group.group}, hops)
        await group.replica.wait_applied(answer["index"])

    # --- control calls, at the leader of the group they name ---------------------------------------

    async def _read_index(self, request: dict) -> dict:
        group = self.router.groups[request["group"]]
        return {"index": group.replica.core.read(group.replica.clock())}

    async def _load(self, request: dict) -> dict:
        """This node's request counter of each group; with "sample": group, that group's
        latest item keys (hex)."""
        groups = self.router.groups
        if "sample" in request:
            group = groups.get(request["sample"])
            return {"keys": [] if group is None else [key.hex() for key in group.sampled]}
        return {"requests": {str(g): group.requests for g, group in groups.items()}}

    async def _map(self, request: dict) -> dict:
        """A table's description and partitions as this node's replicas know them ("current"),
        or as last published when it holds none of them or waits for their state (router/front.py)."""
        desc = self.router.table(request["table"])
        if desc is None:
            return {"desc": None, "partitions": None}
        if self.router.serves(desc):
            return {"desc": desc, "partitions": self.router.partition_map(desc), "current": True}
        stored = self.router.stored_map(desc["TableId"])
        return {"desc": desc, "partitions": [] if stored is None else stored["partitions"], "current": False}

    async def _reconfigure(self, request: dict) -> dict:
        group = self.router.groups[request["group"]]
        hosts, logs = request["hosts"], request["logs"]
        adding = group.next_to_add(hosts, logs)
        ready = False
        if adding is not None:
            node, log_only = adding
            answer = await self.call_node(node, "Join", {"table": request["table"], "group": group.group,
                                                         "members": group.members(), "log": log_only})
            ready = answer["ready"]
        elif group.next_to_remove(hosts, logs) == self.node_id:
            # This leader leaves: it hands the lead to the storage member that stays and holds
            # the most of its log first, so the group keeps a leader throughout instead of
            # electing one once it has left (next round the new leader removes it). Should no
            # instant for that come, it leaves anyway.
            stays = [n for n in hosts if n in group.members() and n not in group.log_members()]
            if stays and await group.transfer(group.most_caught_up(stays)):
                return {"done": False}
        return {"done": group.reconfigure(hosts, logs, ready)}

    async def _transfer(self, request: dict) -> dict:
        group, to = self.router.groups[request["group"]], request["to"]
        if to == self.node_id or to not in group.members() or to in group.log_members():
            return {"moved": False}  # led here already, or not a storage member (any more)
        return {"moved": await group.transfer(to)}

    async def _join(self, request: dict) -> dict:
        desc = self.router.table(request["table"])
        log_only = request["log"]
        if desc is None or self.node_id not in (self.router.log_hosts(desc["TableId"]) if log_only
                                                else self.router.hosts(desc["TableId"])):
            return {"ready": False}  # this node's catalog does not place the table here yet
        group = self.router.join(desc, request["group"], log_only=log_only)
        for member in request["members"]:
            group.link(member)
        return {"ready": not group.replica.joining}

    async def _split(self, request: dict) -> dict:
        group = self.router.groups[request["group"]]
        desc = self.router.table(request["table"])
        return {"split": desc is not None and await group.split(bytes.fromhex(request["key"]), request["child"], desc)}

    # --- forwarding -----------------------------------------------------------------------------

    async def _forward(self, group, node: int, op: str, request: dict, hops: int) -> dict | None:
        """The answer of ``node`` to the request; None when ``node`` cannot be reached (nothing
        was sent, so the caller may try again).

        The wait ends early, FORWARD_MOVED_GRACE_S after ``group`` elects another leader: a
        node cut off from its peers neither answers nor commits, and waiting out
        FORWARD_TIMEOUT_S would keep the request from the new leader for that long; a node that
        handed its lead over answers within the grace, from the new leader.
        """
        moved_at = None

        def moved() -> str | None:
            nonlocal moved_at
            if not (group.is_leader() or group.leader_hint() not in (None, node)):
                return None
            moved_at = moved_at or time.monotonic()
            if time.monotonic() - moved_at < FORWARD_MOVED_GRACE_S:
                return None
            return f"node {node} stopped leading while it held the request"
        self.forwarded += 1
        answer = await self.links.call(node, op, request, hops, give_up=moved,
                                       applied=self._applied(op, request), group=group.group)
        if answer is None:
            return None
        chosen = answer.get("chosen")
        if chosen is not None:
            group.replica.learn(chosen[0], tuple(chosen[1:]))
        self._hear(answer.get("applied", {}))
        return answer_of(answer)

    async def call_node(self, node: int, op: str, request: dict) -> dict:
        """A node-addressed control call (Load, Map, Join); ConnectionError when ``node`` does
        not answer within CONTROL_CALL_TIMEOUT_S."""
        if node == self.node_id:
            return await self._node_control[op](request)
        deadline = time.monotonic() + CONTROL_CALL_TIMEOUT_S

        def late() -> str | None:
            return f"node {node} did not answer within {CONTROL_CALL_TIMEOUT_S} s" \
                if time.monotonic() > deadline else None
        try:
            answer = await self.links.call(node, op, request, 0, give_up=late)
        except InternalServerError as exc:
            raise ConnectionError(str(exc)) from None
        if answer is None:
            raise ConnectionError(f"node {node} cannot be reached")
        return answer_of(answer)

    async def start(self, address: net.Address) -> None:
        self._server = await net.serve(self._serve, address)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            group, node = await handshake.accept(reader, writer, self.router.secret)
            if group != handshake.FORWARD or (node not in self.addresses and node != ROUTER):
                raise FrameError(f"a forward connection must come from a node of the cluster, not {node}")
        except (OSError, FrameError) as exc:
            log.warning("refused a forward connection: %s", exc)
            writer.close()
            return
        # Requests already taken run to the end when the forwarding node goes away: cancelling a
        # write between its proposal and its answer would gain nothing and hide its outcome.
        await serve_frames(reader, writer, self._answer, cancel_on_close=False, bytes_max=FORWARD_FRAME_BYTES_MAX)

    async def _answer(self, frame: dict, writer: asyncio.StreamWriter) -> None:
        self._hear(frame.get("applied", {}))
        try:
            answer = {"ok": True, "result": await self.route(frame["op"], frame["request"], frame["hops"])}
        except DynamoDBError as error:
            answer = {"ok": False, "status": error.status, "body": error.body()}
        except Exception:
            log.exception("internal error in a forwarded %s", frame["op"])
            error = InternalServerError()
            answer = {"ok": False, "status": error.status, "body": error.body()}
        answer["id"] = frame["id"]
        answer["applied"] = self._applied(frame["op"], frame["request"])
        answer["chosen"] = self._chosen(frame.get("group"))
        if not writer.is_closing():
            write_frame(writer, answer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.links.close()
