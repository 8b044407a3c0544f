"""The ``dynstore`` command.

``dynstore up`` runs a cluster of three node processes on this machine, one per zone, each
holding a replica of every partition (dynstore/node/supervisor.py; with ``--nodes`` above
three, the zones take the nodes in turn and each table is placed on three of them), with the storage under
``--data-dir``; node 1 serves the DynamoDB API on ``--port`` and every node is an endpoint.
It prints the endpoints and the credentials to use, and stops cleanly on Ctrl-C or SIGTERM.

``dynstore up --nodes 1`` serves the API from one process instead, without replication: it
stops accepting on Ctrl-C or SIGTERM, lets running requests answer (a few seconds at most),
then closes the storage. Prometheus metrics are served at ``GET /metrics`` on the same port,
and the node's status with the availability its canary measures (dynstore/canary.py) at
``GET /status``, which ``dynstore status`` shows.
"""
from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys

import click
import uvloop

from dynstore import limits
from dynstore.api.credentials import (
    DEVELOPMENT_ACCESS_KEY_ID,
    DEVELOPMENT_SECRET_ACCESS_KEY,
    Credentials,
    CredentialsError,
)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group()
def main():
    """dynstore: a self-hosted, DynamoDB-compatible database."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--data-dir", default="./dynstore-data", show_default=True, type=click.Path(file_okay=False),
              help="Where the tables are stored.")
@click.option("--region", default="us-east-1", show_default=True, help="The region the endpoint reports.")
@click.option("--credentials-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="INI file of access keys, like ~/.aws/credentials (also: DYNSTORE_ACCESS_KEY_ID and "
                   "DYNSTORE_SECRET_ACCESS_KEY).")
@click.option("--nodes", type=click.IntRange(1, 26), default=3, show_default=True,
              help="Node processes in three zones; each table is placed on three of them, one per zone (3 "
                   "survives the loss of one); node 1 serves on --port. 1 runs a single process without "
                   "replication.")
@click.option("--node-id", default="node-1", show_default=True, help="This node's name in the status (--nodes 1).")
@click.option("--zone", default="zone-a", show_default=True, help="This node's availability zone (--nodes 1).")
@click.option("--canary-interval", default=limits.CANARY_INTERVAL_S, show_default=True,
              type=click.FloatRange(min=0.01), help="Seconds between availability probes of each partition.")
@click.option("--split-bytes", type=click.IntRange(min=1), default=None,
              help=f"Split a partition once its items pass this many bytes (default: "
                   f"{limits.PARTITION_SPLIT_BYTES_DEFAULT} in one process, {limits.REPLICATED_SPLIT_BYTES_DEFAULT} "
                   f"in a cluster, where a partition's writes wait while it splits).")
@click.option("--hot-rate", type=click.FloatRange(min=0, min_open=True), default=limits.HOT_RATE_MIN_DEFAULT,
              show_default=True, help="Split a partition that takes half a node's requests at this many per "
                                      "second ... (cluster)")
@click.option("--hot-seconds", type=click.FloatRange(min=0), default=limits.HOT_SUSTAIN_S_DEFAULT,
              show_default=True, help="... for this long.")
@click.option("--checkpoint-entries", type=click.IntRange(min=1), default=limits.CHECKPOINT_ENTRIES,
              show_default=True, help="Applied entries between checkpoints of each replica (cluster).")
@click.option("--log-keep-entries", type=click.IntRange(min=0), default=limits.LOG_KEEP_ENTRIES, show_default=True,
              help="Log entries kept below a checkpoint for replicas a little behind (cluster).")
@click.option("--heal-after", type=click.FloatRange(min=0, min_open=True), default=limits.HEAL_AFTER_S_DEFAULT,
              show_default=True, help="Seconds a node may not answer before its tables are placed on another "
                                      "(cluster of more than three nodes).")
def up(host: str, port: int, data_dir: str, region: str, credentials_file: str | None, nodes: int, node_id: str,
       zone: str, canary_interval: float, split_bytes: int | None, hot_rate: float, hot_seconds: float,
       checkpoint_entries: int, log_keep_entries: int, heal_after: float):
    """Serve the DynamoDB API on HOST:PORT over the tables in DATA_DIR."""
    credentials = _credentials(credentials_file, host)
    if nodes > 1:
        from dynstore.node.supervisor import cluster_configs, run_cluster
        # Node 1 binds --port only once it has opened its replicas; a port taken by another
        # server is reported now, as the single process reports it.
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise _cannot_listen(host, port, exc) from None
        _echo_credentials(credentials)
        configs = cluster_configs(nodes, host, port, data_dir, region, credentials_file,
                                  split_bytes or limits.REPLICATED_SPLIT_BYTES_DEFAULT, hot_rate, hot_seconds,
                                  checkpoint_entries, log_keep_entries, canary_interval, heal_after)
        uvloop.run(run_cluster(configs, data_dir))
        return
    uvloop.run(_serve(host, port, data_dir, region, credentials, node_id, zone, canary_interval,
                      split_bytes or limits.PARTITION_SPLIT_BYTES_DEFAULT))


def _cannot_listen(host: str, port: int, exc: OSError) -> click.ClickException:
    return click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}"
                                f" (is another server using it? pick one with --port)")


def _echo_credentials(credentials: Credentials) -> None:
    if credentials.configured:
        click.echo("credentials: the configured access keys")
    else:
        click.echo(f"credentials (development, accepted from this machine only):\n"
                   f"  aws_access_key_id     = {DEVELOPMENT_ACCESS_KEY_ID}\n"
                   f"  aws_secret_access_key = {DEVELOPMENT_SECRET_ACCESS_KEY}")


async def _serve(host: str, port: int, data_dir: str, region: str, credentials: Credentials, node_id: str,
                 zone: str, canary_interval: float, split_bytes: int) -> None:
    from dynstore.api.operations import OPERATIONS, State
    from dynstore.api.server import Server, freeze_long_lived
    from dynstore.canary import Canary
    from dynstore.status import node_status

    state = await State.open(data_dir, region=region, address=f"{host}:{port}", split_bytes=split_bytes)
    canary = Canary(state.router, clock=state.clock, interval_s=canary_interval)
    try:
        canary.start()
        server = Server(OPERATIONS, state, credentials, region=region, metrics=state.metrics,
                        status=lambda: node_status(state, canary, node_id=node_id, zone=zone))
        try:
            await server.start(host, port)
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from None
        freeze_long_lived()
        endpoint_host = f"[{host}]" if ":" in host else host
        click.echo(f"dynstore is serving DynamoDB at http://{endpoint_host}:{server.port}  (region {region})")
        click.echo(f"data directory: {data_dir}")
        click.echo(f"metrics (Prometheus): http://{endpoint_host}:{server.port}/metrics")
        click.echo(f"status: http://{endpoint_host}:{server.port}/status  (dynstore status)")
        _echo_credentials(credentials)
        click.echo("press Ctrl-C to stop")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        click.echo("stopping")
        server.close()
        await server.wait_closed()
    finally:
        await canary.stop()
        await state.close()
    click.echo("stopped")


@main.command()
@click.option("--cluster", "cluster_config", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A node.toml of the cluster (its [[nodes]] and cluster_secret_file are used).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--region", default="us-east-1", show_default=True, help="The region the endpoint reports.")
@click.option("--credentials-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="INI file of access keys (also: DYNSTORE_ACCESS_KEY_ID and DYNSTORE_SECRET_ACCESS_KEY).")
def router(cluster_config: str, host: str, port: int, region: str, credentials_file: str | None):
    """Serve the DynamoDB API for a cluster without holding data: a standalone request router."""
    from dynstore.node.config import NodeConfig
    from dynstore.router.front import serve

    credentials = _credentials(credentials_file, host)
    _echo_credentials(credentials)
    uvloop.run(serve(NodeConfig.load(cluster_config), host, port, credentials, region))


def _credentials(credentials_file: str | None, host: str) -> Credentials:
    try:
        credentials = Credentials.load(credentials_file)
    except CredentialsError as e:
        raise click.UsageError(str(e)) from None
    if not credentials.configured and not _is_loopback_host(host):
        raise click.UsageError(
            f"listening on {host} needs configured credentials (the development pair is accepted from "
            f"this machine only): set DYNSTORE_ACCESS_KEY_ID and DYNSTORE_SECRET_ACCESS_KEY, or pass "
            f"--credentials-file")
    return credentials


# Commands of their own modules, added to the group.
from dynstore.bench.cli import bench  # noqa: E402
from dynstore.status import status  # noqa: E402

main.add_command(bench)
main.add_command(status)
