"""``dynstore up --nodes N``: a cluster of N node processes on this machine, kept running.

Each node is a child process (``python -m dynstore.node.main --config``) in zone
zone-a, zone-b, zone-c in turn (so six nodes are two per zone), with its files under ``<data-dir>/node-<id>/``::

    node.toml     its configuration (node/config.py), written at every start
    data/         its replicas (router/cluster.py)
    node.log      its output, appended

and ``<data-dir>/cluster.secret``, the secret every connection between the nodes proves
(replication/handshake.py), made at the first start.

Node 1 serves the DynamoDB endpoint on --port; node i on --port + i - 1 when that port is
free, otherwise on a free port; the endpoints are printed once every node serves. The nodes
link to each other (replication and forwarding) over Unix sockets, a round trip half as long
as loopback TCP's (dynstore/net.py), named afresh at each start (groups know their members
by node id, so addresses may change between runs).

A node that exits while the cluster runs is started again after a backoff
(NODE_RESTART_BACKOFF_*): its replicas recover from their logs and catch up from the
others. Each child asks the kernel to kill it when the supervisor dies (PR_SET_PDEATHSIG),
so a kill -9 of ``dynstore up`` leaves no node behind holding the ports and files.
SIGINT or SIGTERM stop the nodes (SIGTERM each, then wait) and then the supervisor.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import socket
import sys
import time

import click

from dynstore.limits import (CANARY_INTERVAL_S, CHECKPOINT_ENTRIES, CLUSTER_SECRET_BYTES, HEAL_AFTER_S_DEFAULT,
                             HOT_RATE_MIN_DEFAULT, HOT_SUSTAIN_S_DEFAULT, LOG_KEEP_ENTRIES, NODE_RESTART_BACKOFF_MAX_S,
                             NODE_RESTART_BACKOFF_MIN_S, NODE_RESTART_RESET_S, NODE_START_TIMEOUT_S,
                             REPLICATED_SPLIT_BYTES_DEFAULT)
from dynstore.node.config import NodeAddress, NodeConfig

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_or_any(host: str, port: int) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As the server binds it: connections a node closed before a restart linger in
        # TIME_WAIT on its port, and only a bind without SO_REUSEADDR counts them as a user.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            s.bind((host, 0))
        return s.getsockname()[1]


def cluster_configs(nodes: int, host: str, port: int, data_dir: str, region: str,
                    credentials_file: str | None, split_bytes: int = REPLICATED_SPLIT_BYTES_DEFAULT,
                    hot_rate_min: float = HOT_RATE_MIN_DEFAULT, hot_sustain_s: float = HOT_SUSTAIN_S_DEFAULT,
                    checkpoint_entries: int = CHECKPOINT_ENTRIES, log_keep_entries: int = LOG_KEEP_ENTRIES,
                    canary_interval_s: float = CANARY_INTERVAL_S, heal_after_s: float = HEAL_AFTER_S_DEFAULT
                    ) -> list[NodeConfig]:
    data_dir = os.path.abspath(data_dir)
    run = secrets.token_hex(8)  # this start's socket names: a node of an earlier run never answers

    def endpoint_port(i: int) -> int:
        if port == 0:
            return _free_or_any(host, 0)
        return port if i == 1 else _free_or_any(host, port + i - 1)

    addresses = tuple(
        NodeAddress(i, f"zone-{'abc'[(i - 1) % 3]}", (host, endpoint_port(i)),
                    f"\0dynstore-{run}-node-{i}-peer", f"\0dynstore-{run}-node-{i}-forward")
        for i in range(1, nodes + 1))
    secret_file = cluster_secret_file(data_dir)
    return [NodeConfig(n.id, os.path.join(data_dir, f"node-{n.id}", "data"), addresses, region,
                       os.path.abspath(credentials_file) if credentials_file else "", secret_file, split_bytes,
                       hot_rate_min, hot_sustain_s, checkpoint_entries, log_keep_entries, canary_interval_s,
                       heal_after_s)
            for n in addresses]


def cluster_secret_file(data_dir: str) -> str:
    """``<data-dir>/cluster.secret``, made once with a fresh random secret (readable by the
    owner only): a cluster's nodes prove it to each other, and a node of another cluster
    (another data directory) cannot link to them."""
    path = os.path.join(data_dir, "cluster.secret")
    if not os.path.exists(path):
        os.makedirs(data_dir, exist_ok=True)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(CLUSTER_SECRET_BYTES).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


class Supervisor:
    def __init__(self, configs: list[NodeConfig], base_dir: str):
        self.configs = configs
        self.base_dir = os.path.abspath(base_dir)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts: dict[int, int] = {c.node_id: 0 for c in configs}
        self.stopping = False

    def _node_dir(self, node_id: int) -> str:
        return os.path.join(self.base_dir, f"node-{node_id}")

    async def _spawn(self, config: NodeConfig) -> asyncio.subprocess.Process:
        directory = self._node_dir(config.node_id)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "node.toml")
        with open(path, "w") as f:
            f.write(config.dump())
        with open(os.path.join(directory, "node.log"), "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dynstore.node.main", "--config", path,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=_die_with_parent)
        self.procs[config.node_id] = proc
        return proc

    async def _keep(self, config: NodeConfig) -> None:
        """Run the node, and run it again each time it exits."""
        backoff = NODE_RESTART_BACKOFF_MIN_S
        while not self.stopping:
            started = time.monotonic()
            proc = await self._spawn(config)
            code = await proc.wait()
            if self.stopping:
                return
            if time.monotonic() - started > NODE_RESTART_RESET_S:
                backoff = NODE_RESTART_BACKOFF_MIN_S
            click.echo(f"node {config.node_id} exited with code {code}; starting it again in {backoff:.1f} s "
                       f"(log: {os.path.join(self._node_dir(config.node_id), 'node.log')})", err=True)
            self.restarts[config.node_id] += 1
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, NODE_RESTART_BACKOFF_MAX_S)

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        for config in self.configs:
            host, port = config.me.endpoint
            while True:
                try:
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise click.ClickException(
                            f"node {config.node_id} did not serve http://{host}:{port} within "
                            f"{NODE_START_TIMEOUT_S:.0f} s; see {self._node_dir(config.node_id)}/node.log") from None
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(proc.wait() for proc in self.procs.values()))


async def run_cluster(configs: list[NodeConfig], base_dir: str, unit: str = "nodes") -> None:
    """Run the node processes of ``configs`` under ``base_dir`` until SIGINT or SIGTERM
    (``dynstore up``'s nodes, or the processes of one ``dynstore-node``, which ``unit`` names)."""
    supervisor = Supervisor(configs, base_dir)
    keepers = [asyncio.ensure_future(supervisor._keep(c)) for c in configs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        waiting = asyncio.ensure_future(supervisor.wait_serving())
        await asyncio.wait([waiting, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            waiting.result()
            for config in configs:
                host, port = config.me.endpoint
                click.echo(f"node {config.node_id} ({config.me.zone}) serves DynamoDB at http://{host}:{port}")
            click.echo(f"dynstore is serving DynamoDB at http://{configs[0].me.endpoint[0]}:"
                       f"{configs[0].me.endpoint[1]}  ({len(configs)} {unit}, region {configs[0].region})")
            click.echo(f"data directory: {os.path.abspath(base_dir)}")
            click.echo("press Ctrl-C to stop")
            sys.stdout.flush()
            await stop.wait()
        else:
            waiting.cancel()
    finally:
        click.echo("stopping")
        await supervisor.stop()
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
    click.echo("stopped")
