"""Request routing in a cluster: each DynamoDB operation runs where its partition's leader is.

``Routing(state, node_id, forward_addresses).operations`` has the shape of
dynstore.api.operations.OPERATIONS (the HTTP front end dispatches to it); each entry
decides where the request runs and runs the operation there, unchanged:

* Catalog changes (CreateTable, DeleteTable, UpdateTable, tags, TTL settings) and
  ListTables run at the metadata group's leader, after its ``read_barrier``.
* A request naming a table this node's catalog does not hold yet also goes to the
  metadata leader, which routes it again with its current catalog (a table created
  through another node a moment ago is found; a missing table is reported missing).
* Eventually consistent reads (GetItem, Query, Scan, BatchGetItem without ConsistentRead)
  and catalog reads of known tables (DescribeTable, DescribeTimeToLive, ListTagsOfResource)
  run here, on this node's replicas.
* Everything else (writes, strongly consistent reads) runs at the leader of the table's
  partition, after ``read_barrier``: the leader holds a valid lease and has applied every
  write committed before, so conditional writes decide on the latest state
  (replicated.py) and strong reads see every acknowledged write.
* BatchGetItem and BatchWriteItem over several tables are validated whole (limits over the
  request, every key and item), then split by table, each part routed on its own, and the
  answers merged.

Reading one's writes through one node: every forwarded request and every answer carries,
for the metadata group and the groups of the tables it names, the slot the sending node had
applied (or had heard of from another node). A node looks up its catalog only after its
metadata replica applied what it heard of, and runs an operation only after the table's
replicas did too, waiting at most CATCH_UP_WAIT_S (a follower learns commits within a
heartbeat; one cut off from its leader answers from what it has; a leader has applied all
of it already). So a table created, updated or deleted through a node is seen so by it at
once, an eventually consistent read reflects every write acknowledged through the same
node, and so do the counts DescribeTable and DeleteTable report.

A request for a group led elsewhere is forwarded to the leader's node over the forward
port, following the replica's leader hint; with no leader known (an election) it waits
and retries until FORWARD_WAIT_S, then answers ServiceUnavailable (retryable). Each hop
counts, and a request is not forwarded more than FORWARD_HOPS_MAX times.

Forward protocol (node to node, on each node's forward port): the frames of
dynstore/replication/group_process.py (``u32 length | JSON``, pipelined, matched by id)::

    {"id", "op": "<DynamoDB operation>", "request": {...}, "hops": n, "applied": {"<group>": slot, ...}}
      -> {"id", "ok": true, "result": {...}, "applied": {"<group>": slot, ...}}
      |  {"id", "ok": false, "status": 400, "body": {"__type": "...#Name", "message": ...},
          "applied": {...}}

Frames are at most FORWARD_FRAME_BYTES_MAX: the largest request, or the largest answer.

Ambiguity, as DynamoDB has it: a write whose leader steps down before it is applied, or
whose forwarded call loses its connection after sending, answers InternalServerError (500,
which SDKs retry): it may or may not have taken effect. A write is never retried here,
since a conditional or ADD update is not idempotent.
"""
from __future__ import annotations

import asyncio
import logging
import time

from dynstore.api import errors
from dynstore.api.errors import DynamoDBError, InternalServerError, ServiceUnavailable
from dynstore.api.operations import OPERATIONS
from dynstore.api.operations.batch import check_batch
from dynstore.limits import (CATCH_UP_POLL_S, CATCH_UP_WAIT_S, FORWARD_FRAME_BYTES_MAX, FORWARD_HOPS_MAX,
                             FORWARD_POLL_S, FORWARD_TIMEOUT_S, FORWARD_WAIT_S)
from dynstore.replication.errors import Busy, NotLeader
from dynstore.replication.group_process import GroupClient, serve_frames, write_frame

log = logging.getLogger(__name__)

_CATALOG_CHANGES = frozenset({"CreateTable", "DeleteTable", "UpdateTable", "TagResource", "UntagResource",
                              "UpdateTimeToLive"})
_CATALOG_READS = frozenset({"DescribeTable", "DescribeTimeToLive", "ListTagsOfResource"})
_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem"})
_ANYWHERE = frozenset({"DescribeLimits", "DescribeEndpoints"})
_BATCHES = frozenset({"BatchGetItem", "BatchWriteItem"})


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
    """One batch answer from the answers of its per-table parts: maps joined, lists chained."""
    out: dict = {}
    for part in parts:
        for name, value in part.items():
            if name not in out:
                out[name] = value
            elif isinstance(value, dict):
                out[name] = {**out[name], **value}
            else:
                out[name] = out[name] + value
    return out


def error_from_body(status: int, body: dict) -> DynamoDBError:
    """The DynamoDB error a forwarded request answered, to answer the same here."""
    name = body.get("__type", "").rpartition("#")[2]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, DynamoDBError)):
        cls = InternalServerError
    extra = {k: v for k, v in body.items() if k not in ("__type", "message")}
    return cls(body.get("message"), **extra)


class Routing:
    """``forward_addresses`` maps node id -> (host, port) of every node's forward port."""

    def __init__(self, state, node_id: int, forward_addresses: dict[int, tuple[str, int]]):
        self.state = state
        self.router = state.router
        self.node_id = node_id
        self.addresses = dict(forward_addresses)
        self._clients: dict[int, GroupClient] = {}
        self._server: asyncio.AbstractServer | None = None
        self.forwarded = 0  # requests this node sent to another node's leader
        # Group -> the highest slot another node reported to this one (in a forwarded request or
        # an answer) that this node's replica had not applied yet when it last looked.
        self._heard: dict[int, int] = {}
        self.operations = {op: self._entry(op) for op in OPERATIONS}

    def _entry(self, op: str):
        async def routed(state, request: dict) -> dict:
            return await self.route(op, request, 0)
        routed.__name__ = op
        return routed

    # --- deciding where -----------------------------------------------------------------------

    async def route(self, op: str, request: dict, hops: int) -> dict:
        if op in _ANYWHERE:
            return await self._run(op, request)
        await self._catch_up([self.router.meta])
        names = _tables(op, request)
        descs = [self.router.table(name) for name in names]
        if op in _CATALOG_CHANGES or op == "ListTables" or None in descs:
            return await self._at_leader(self.router.meta, op, request, hops)
        if op in _BATCHES and len(names) > 1:
            check_batch(self.state, op, request)
            parts = [dict(request, RequestItems={name: request["RequestItems"][name]}) for name in names]
            return _merge(list(await asyncio.gather(*(self.route(op, part, hops) for part in parts))))
        if op in _CATALOG_READS or (op in _READS and not _consistent(op, request)):
            return await self._run(op, request)
        return await self._at_leader(self.router.group_of(descs[0]), op, request, hops)

    def _groups(self, descs: list[dict]) -> list:
        """This node's replicas of the metadata group and of the tables' partitions."""
        return [self.router.meta] + [p.group for desc in descs for p in self.router.partitions(desc)]

    async def _catch_up(self, groups: list) -> None:
        """Once this node's replicas of ``groups`` applied what other nodes reported to it, or
        CATCH_UP_WAIT_S passed."""
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        for group in groups:
            while group.replica.applied < self._heard.get(group.group, 0) and time.monotonic() < deadline:
                await asyncio.sleep(CATCH_UP_POLL_S)
            if group.replica.applied >= self._heard.get(group.group, 0):
                self._heard.pop(group.group, None)  # the replica's own figure says as much now

    def _known_groups(self, op: str, request: dict) -> list:
        """The groups of ``_groups`` for the tables of a request that this node's catalog holds."""
        return self._groups([desc for desc in map(self.router.table, _tables(op, request)) if desc is not None])

    def _applied(self, op: str, request: dict) -> dict[str, int]:
        """What this node applied or heard of in the groups a request touches, sent along with a
        forwarded request and with its answer."""
        return {str(g.group): max(g.replica.applied, self._heard.get(g.group, 0))
                for g in self._known_groups(op, request)}

    def _hear(self, applied: dict[str, int]) -> None:
        for group, slot in applied.items():
            if slot > self._heard.get(int(group), 0):
                self._heard[int(group)] = slot

    async def _at_leader(self, group, op: str, request: dict, hops: int) -> dict:
        deadline = time.monotonic() + FORWARD_WAIT_S
        while True:
            if group.is_leader():
                try:
                    await group.read_barrier()
                except NotLeader:
                    pass
                else:
                    if group is self.router.meta and op not in _CATALOG_CHANGES and op != "ListTables" \
                            and None not in map(self.router.table, _tables(op, request)):
                        # Asked as the metadata leader about a table: it is known now, route it.
                        return await self.route(op, request, hops + 1)
                    return await self._run(op, request)
            else:
                leader = group.leader_hint()
                if leader is not None and leader != self.node_id and leader in self.addresses:
                    if hops >= FORWARD_HOPS_MAX:
                        raise ServiceUnavailable(f"request forwarded {hops} times without reaching a leader")
                    answer = await self._forward(group, leader, op, request, hops + 1)
                    if answer is not None:
                        return answer
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"no leader for replication group {group.group} within "
                                         f"{FORWARD_WAIT_S} s")
            await asyncio.sleep(FORWARD_POLL_S)

    async def _run(self, op: str, request: dict) -> dict:
        await self._catch_up(self._known_groups(op, request))
        try:
            return await OPERATIONS[op](self.state, request)
        except (NotLeader, Busy) as exc:
            raise InternalServerError(f"the partition's leader changed while the request was applied; it may or "
                                      f"may not have taken effect ({exc})") from None

    # --- forwarding -----------------------------------------------------------------------------

    async def _forward(self, group, node: int, op: str, request: dict, hops: int) -> dict | None:
        """The answer of ``node`` to the request; None when ``node`` cannot be reached (nothing
        was sent, so the caller may try again).

        The wait ends early when ``group`` elects another leader: a node cut off from its peers
        neither answers nor commits, and waiting out FORWARD_TIMEOUT_S would keep the request
        from the new leader for that long.
        """
        client = self._clients.get(node)
        if client is None or client.closed:
            host, port = self.addresses[node]
            try:
                client = self._clients[node] = await GroupClient.connect(port, host, FORWARD_FRAME_BYTES_MAX)
            except OSError:
                return None
        self.forwarded += 1
        call = asyncio.ensure_future(client.call(op, request=request, hops=hops, applied=self._applied(op, request)))
        deadline = time.monotonic() + FORWARD_TIMEOUT_S
        while not call.done():
            await asyncio.wait({call}, timeout=FORWARD_POLL_S)
            if call.done():
                break
            if group.is_leader() or group.leader_hint() not in (None, node):
                reason = f"node {node} stopped leading while it held the request"
            elif time.monotonic() > deadline:
                reason = f"node {node} did not answer within {FORWARD_TIMEOUT_S} s"
            else:
                continue
            call.cancel()
            await self._drop_client(node, client)
            raise InternalServerError(f"{reason}; it may or may not have taken effect")
        try:
            answer = call.result()
        except ConnectionError:
            await self._drop_client(node, client)
            raise InternalServerError(f"lost node {node} while it served the request; it may or may not have "
                                      f"taken effect") from None
        self._hear(answer.get("applied", {}))  # a node of the previous version reports none
        if answer["ok"]:
            return answer["result"]
        raise error_from_body(answer["status"], answer["body"])

    async def _drop_client(self, node: int, client: GroupClient) -> None:
        if self._clients.get(node) is client:
            del self._clients[node]
            await client.close()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        if not writer.is_closing():
            write_frame(writer, answer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
