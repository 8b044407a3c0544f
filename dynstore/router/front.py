"""The standalone request router: a DynamoDB endpoint that holds no data.

``dynstore router --cluster node.toml`` serves the DynamoDB API (authentication and
validation happen here, in the HTTP front end) and sends each request to a node of the
cluster over the nodes' forward protocol (node/routing.py, opened with the cluster's secret).
It caches each table's description and partition map, read from a node with the Map call
and read again every ROUTER_MAP_TTL_S, so a request naming one item (GetItem, PutItem,
UpdateItem, DeleteItem) goes straight to the node that leads the item's partition. Anything
else, and any item whose leader the map does not know, goes to the nodes in turn; the node
that takes a request routes it on as every node does, so a stale map costs a hop, never a
wrong answer.

Faults: a node that cannot be reached is skipped (nothing was sent) and the next one is
tried; a node lost after the request was sent answers InternalServerError (it may or may not
have taken effect, as node/links.py explains); with no node reachable the answer is
ServiceUnavailable (retryable).
"""
from __future__ import annotations

import bisect
import itertools
import time

from dynstore import net
from dynstore.api.errors import DynamoDBError, ServiceUnavailable
from dynstore.api.operations import OPERATIONS
from dynstore.api.operations.schema import Table
from dynstore.limits import ROUTER_MAP_TTL_S
from dynstore.node.links import ROUTER, NodeLinks
from dynstore.node.routing import answer_of

_ONE_ITEM = {"GetItem": "Key", "DeleteItem": "Key", "UpdateItem": "Key", "PutItem": "Item"}


class _TableMap:
    __slots__ = ("read_at", "table", "starts", "leaders")

    def __init__(self, read_at: float, desc: dict, partitions: list[dict]):
        self.read_at = read_at
        self.table = Table(desc)
        self.starts = [bytes.fromhex(p["start"]) for p in partitions]
        self.leaders = [p["leader"] for p in partitions]

    def leader_of(self, item_or_key: dict) -> int | None:
        if not self.starts:
            return None  # placed on nodes that have not published its map yet
        key = self.table.storage_key(self.table.schema.key_of(item_or_key))
        return self.leaders[bisect.bisect_right(self.starts, key) - 1]


class FrontRouter:
    """``addresses`` maps node id -> every node's forward address (net.py)."""

    def __init__(self, addresses: dict[int, net.Address], secret: bytes, clock=time.monotonic):
        self.links = NodeLinks(addresses, secret, ROUTER)
        self.nodes = sorted(addresses)
        self._turn = itertools.cycle(self.nodes)
        self._maps: dict[str, _TableMap] = {}
        self._clock = clock
        self.direct = 0  # requests sent to their item's leader by the map
        self.operations = {op: self._entry(op) for op in OPERATIONS}

    def _entry(self, op: str):
        async def routed(state, request: dict) -> dict:
            return await self.route(op, request)
        routed.__name__ = op
        return routed

    async def route(self, op: str, request: dict) -> dict:
        first = await self._leader(op, request)
        if first is not None:
            self.direct += 1
        order = [first] if first is not None else []
        order += [next(self._turn) for _ in self.nodes]
        for node in order:
            answer = await self.links.call(node, op, request, 0)
            if answer is not None:
                return answer_of(answer)
        raise ServiceUnavailable("no node of the cluster can be reached")

    async def _leader(self, op: str, request: dict) -> int | None:
        field = _ONE_ITEM.get(op)
        if field is None:
            return None
        name = request["TableName"]
        table_map = self._maps.get(name)
        if table_map is None or self._clock() - table_map.read_at > ROUTER_MAP_TTL_S:
            table_map = await self._read_map(name)
            if table_map is None:
                return None
        try:
            return table_map.leader_of(request[field])
        except DynamoDBError:
            return None  # a bad key: the node answers the error

    async def _read_map(self, name: str) -> _TableMap | None:
        for node in [next(self._turn) for _ in self.nodes]:
            try:
                answer = await self.links.call(node, "Map", {"table": name}, 0)
            except DynamoDBError:
                continue
            if answer is None or not answer["ok"]:
                continue
            result = answer["result"]
            if result["desc"] is None:
                self._maps.pop(name, None)
                return None
            self._maps[name] = _TableMap(self._clock(), result["desc"], result["partitions"])
            return self._maps[name]
        return None

    async def close(self) -> None:
        await self.links.close()


async def serve(config, host: str, port: int, credentials, region: str) -> None:
    """Serve the DynamoDB API on host:port for the cluster ``config`` (any node's NodeConfig)
    describes, until SIGINT or SIGTERM."""
    import asyncio
    import signal

    import click

    from dynstore.api.server import Server, freeze_long_lived

    front = FrontRouter({n.id: n.forward for n in config.expanded()[0].nodes}, config.cluster_secret())
    server = Server(front.operations, None, credentials, region=region,
                    status=lambda: {"router": {"nodes": front.nodes, "direct": front.direct}})
    try:
        await server.start(host, port)
        freeze_long_lived()
        click.echo(f"dynstore router is serving DynamoDB at http://{host}:{server.port} for the "
                   f"{len(front.nodes)} nodes of the cluster")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()
    finally:
        await front.close()
