"""``dynstore-node --config node.toml``: one node of a cluster.

A node of several processes (``processes`` in node.toml, one per core unless told) runs
them as children, each a member of the cluster with its own replicas, endpoint and ports
(node/config.py ``expanded``), and starts again any that exits, with backoff, as ``dynstore
up`` does for its nodes (node/supervisor.py); SIGINT or SIGTERM stops them all. What
follows is what each process does (a node of one process is that process).

The node holds a replica of the metadata group and of every partition of the tables placed
on it (dynstore/router/cluster.py), serves the DynamoDB API on its endpoint (any node is an
endpoint: requests run where their partition's leader is, dynstore/node/routing.py), takes
forwarded requests on its forward port and replication links on its peer port. It prints
one line ``node <id> (<zone>) serving DynamoDB at http://host:port`` once it serves, and stops
cleanly on SIGTERM or SIGINT; after a kill -9 the replicas recover from their logs. A
failing disk or a programmer error in a replica stops the node with exit code 70, so that
its supervisor restarts it (recovery from the log) instead of it serving half broken.

The node deletes expired items (TTL, dynstore/api/operations/ttl.py) of the partitions it
leads, each round after its replica's read barrier; a round cut short by a change of leader
is left to the new leader.

The node's availability canary (dynstore/canary.py) probes the partitions whose groups it
leads, every ``canary_interval_s``. ``GET /status`` answers the node's document
(dynstore/status.py) with ``"groups": {"meta" | table name: replica status (replica.py)},
"forwarded": n, "leader_waits": n (node/routing.py), "log_replicas": open now,
"log_replicas_opened": since start, "collector": {"tracked", "frozen", "collections": [per
generation]}`` added: the objects a full collection of the garbage collector walks, those
frozen out of its walk, and the collections so far.
"""
from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import signal
import sys

import click
import uvloop

from dynstore.api.credentials import Credentials
from dynstore.limits import TTL_SCAN_INTERVAL_S
from dynstore.node.config import NodeConfig
from dynstore.replication.errors import NotLeader, ReplicationError

EXIT_FATAL = 70


async def serve(config: NodeConfig) -> int:
    from dynstore.api.operations import State
    from dynstore.api.server import Server, freeze_long_lived
    from dynstore.autoadmin.service import Autoadmin
    from dynstore.canary import Canary, led_partitions
    from dynstore.node.routing import Routing
    from dynstore.replication.tasks import Tasks
    from dynstore.router.cluster import ClusterRouter

    credentials = Credentials.load(config.credentials_file or None)
    me = config.me
    stopped = asyncio.Event()
    failures: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failures.append(exc)
        stopped.set()

    router = ClusterRouter(config.data_dir, me.id, {n.id: n.peer for n in config.nodes}, on_fatal=fatal,
                           zones={n.id: n.zone for n in config.nodes}, secret=config.cluster_secret(),
                           checkpoint_entries=config.checkpoint_entries, log_keep_entries=config.log_keep_entries)
    await router.start()
    host, port = me.endpoint
    state = State(router, region=config.region, address=f"{host}:{port}")
    routing = Routing(state, me.id, {n.id: n.forward for n in config.nodes})
    router.control = lambda op, request: routing.route(op, request, 0)
    control = Tasks(f"node {me.id} control loops", fatal)
    control.spawn(Autoadmin(state, routing.call_node, [n.id for n in config.nodes], split_bytes=config.split_bytes,
                            hot_rate_min=config.hot_rate_min, hot_sustain_s=config.hot_sustain_s,
                            heal_after_s=config.heal_after_s).run())
    # Probes the partitions whose groups this node leads (dynstore/canary.py).
    canary = Canary(router, partitions=led_partitions, clock=state.clock, interval_s=config.canary_interval_s)
    control.spawn(expire_led(state))
    try:
        await routing.start(me.forward)

        canary.start()
        server = Server(routing.operations, state, credentials, region=config.region, metrics=state.metrics,
                        status=lambda: node_status(state, canary, routing, config))
        await server.start(host, port)
        freeze_long_lived()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        print(f"node {me.id} ({me.zone}) serving DynamoDB at http://{host}:{server.port}", flush=True)
        await stopped.wait()
        server.close()
        await server.wait_closed()
    finally:
        await canary.stop()
        await control.cancel_all()
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
        except ReplicationError:
            pass  # the partition has another leader now (or split), which expires what is left


def node_status(state, canary, routing, config: NodeConfig) -> dict:
    """The status document (dynstore/status.py's format, which ``dynstore status`` merges) plus
    ``groups``: each replica of this node (replica.py's status) by table name, and "meta"."""
    from dynstore.status import node_document, partition_status

    router = state.router
    nodes = [{"id": f"node-{n.id}", "zone": n.zone, "address": f"{n.endpoint[0]}:{n.endpoint[1]}"}
             for n in config.nodes]
    partitions, pids = [], []
    leads = int(router.meta.is_leader())
    for name in router.table_names():
        desc = router.table(name)
        replicas = [f"node-{n}" for n in router.hosts(desc["TableId"])]
        for number, group in enumerate(router.table_groups(desc)):
            pid = (desc["TableId"], group.group)
            pids.append(pid)
            core, leader, rng = group.replica.core, group.leader_hint(), group.range
            leads += group.is_leader()
            partitions.append(partition_status(
                state, canary, name, desc, number, group.view(), pid, group=group.group, start=rng.start.hex(),
                end=None if rng.end is None else rng.end.hex(),
                leader=f"node-{leader}" if leader is not None else "-", role=core.role,
                lease_valid=core.lease_valid(group.replica.clock()), ballot=list(core.ballot) if core.ballot else None,
                replicas=replicas, commit=core.store.commit, applied_lsn=group.replica.applied))
    me = dict(nodes[[n.id for n in config.nodes].index(config.node_id)], region=config.region)
    return dict(node_document(canary, me, nodes, leads, partitions, pids), groups=router.status(),
                forwarded=routing.forwarded, leader_waits=routing.leader_waits,
                log_replicas=sum(g.log_only for g in router.groups.values()),
                log_replicas_opened=router.log_replicas_opened,
                collector={"tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count(),
                           "collections": [g["collections"] for g in gc.get_stats()]})


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The node's node.toml (see dynstore/node/config.py).")
def main(config_path: str):
    """Run one node of a dynstore cluster."""
    import logging
    config = NodeConfig.load(config_path)
    processes = config.expanded()
    if len(processes) > 1:
        from dynstore.node.supervisor import run_cluster
        if os.path.exists(os.path.join(config.data_dir, "meta")):
            # Its processes would start empty beside the replicas of the node it was.
            raise click.ClickException(
                f"{config.data_dir} holds the replicas of node {config.node_id} run as one process; set "
                f"processes = 1 in its [[nodes]] entry, or give its processes a new data directory")
        uvloop.run(run_cluster(processes, config.data_dir, unit="processes"))
        return
    config = processes[0]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s node-{config.node_id} %(levelname)s %(name)s: %(message)s")
    faulthandler.enable()  # a crash in native code leaves every thread's stack in node.log
    sys.exit(uvloop.run(serve(config)))


if __name__ == "__main__":
    main()
