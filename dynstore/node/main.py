"""``dynstore-node --config node.toml``: one node of a cluster.

The node holds a replica of the metadata group and of every table's partition
(dynstore/router/cluster.py), serves the DynamoDB API on its endpoint (any node is an
endpoint: requests run where their partition's leader is, dynstore/node/routing.py), takes
forwarded requests on its forward port and replication links on its peer port. It prints
one line ``node <id> (<zone>) serving DynamoDB at http://host:port`` once it serves, and stops
cleanly on SIGTERM or SIGINT; after a kill -9 the replicas recover from their logs. A
failing disk or a programmer error in a replica stops the node with exit code 70, so that
its supervisor restarts it (recovery from the log) instead of it serving half broken.

The node deletes expired items (TTL, dynstore/api/operations/ttl.py) of the partitions it
leads, each round after its replica's read barrier; a round cut short by a change of leader
is left to the new leader.

``GET /status`` answers ``{"node": {...}, "nodes": [...], "groups": {"meta" | table name:
replica status (replica.py)}, "forwarded": n}``.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import click
import uvloop

from dynstore.api.credentials import Credentials
from dynstore.limits import TTL_SCAN_INTERVAL_S
from dynstore.node.config import NodeConfig
from dynstore.replication.errors import Busy, NotLeader

EXIT_FATAL = 70


async def serve(config: NodeConfig) -> int:
    from dynstore.api.operations import State
    from dynstore.api.server import Server
    from dynstore.node.routing import Routing
    from dynstore.router.cluster import ClusterRouter

    credentials = Credentials.load(config.credentials_file or None)
    me = config.me
    stopped = asyncio.Event()
    failures: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failures.append(exc)
        stopped.set()

    router = ClusterRouter(config.data_dir, me.id, {n.id: n.peer for n in config.nodes}, on_fatal=fatal)
    await router.start()
    host, port = me.endpoint
    state = State(router, region=config.region, address=f"{host}:{port}")
    routing = Routing(state, me.id, {n.id: n.forward for n in config.nodes})
    expiry = asyncio.ensure_future(expire_led(state))
    try:
        await routing.start(*me.forward)

        server = Server(routing.operations, state, credentials, region=config.region, metrics=state.metrics,
                        status=lambda: node_status(state, routing, config))
        await server.start(host, port)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        print(f"node {me.id} ({me.zone}) serving DynamoDB at http://{host}:{server.port}", flush=True)
        await stopped.wait()
        server.close()
        await server.wait_closed()
    finally:
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)
        await routing.close()
        await state.close()
    return EXIT_FATAL if failures else 0


async def _leads(partition) -> bool:
    """Whether this node's replica leads the partition, with every committed write applied."""
    group = partition.group
    if not group.is_leader():
        return False
    try:
        await group.read_barrier()
    except NotLeader:
        return False
    return True


async def expire_led(state) -> None:
    from dynstore.api.operations.ttl import expire_once
    while True:
        await asyncio.sleep(TTL_SCAN_INTERVAL_S)
        try:
            await expire_once(state, _leads)
        except (NotLeader, Busy):
            pass  # the partition has another leader now, which expires what is left


# No canary probes a cluster's partitions yet: its availability is unknown, not perfect.
_NOT_MEASURED = {"window_start": None, "window": None, "day": None, "window_requests": 0, "day_requests": 0}


def node_status(state, routing, config: NodeConfig) -> dict:
    """The status document (dynstore/status.py's format, which ``dynstore status`` shows) plus
    ``groups``: each replica of this node (replica.py's status) by table name, and "meta"."""
    from dynstore.api.operations.store import partition_stats

    router = state.router
    nodes = [{"id": f"node-{n.id}", "zone": n.zone, "address": f"{n.endpoint[0]}:{n.endpoint[1]}"}
             for n in config.nodes]
    partitions = []
    for name in router.table_names():
        desc = router.table(name)
        group = router.group_of(desc)
        stats = partition_stats(state, group.view())
        leader = group.leader_hint()
        partitions.append({
            "table": name, "table_id": desc["TableId"], "partition": 0,
            "leader": f"node-{leader}" if leader is not None else "-",
            "replicas": [n["id"] for n in nodes], "applied_lsn": group.replica.applied, "items": stats.items,
            "bytes": stats.bytes, "availability": _NOT_MEASURED})
    return {"node": dict(nodes[[n.id for n in config.nodes].index(config.node_id)], region=config.region),
            "nodes": nodes, "availability": _NOT_MEASURED, "partitions": partitions, "groups": router.status(),
            "forwarded": routing.forwarded}


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The node's node.toml (see dynstore/node/config.py).")
def main(config_path: str):
    """Run one node of a dynstore cluster."""
    import logging
    config = NodeConfig.load(config_path)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s node-{config.node_id} %(levelname)s %(name)s: %(message)s")
    sys.exit(uvloop.run(serve(config)))


if __name__ == "__main__":
    main()
