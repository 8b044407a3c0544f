"""A node's configuration: who it is, where it keeps its data, and every node of the cluster.

``node.toml`` (read with tomllib; ``NodeConfig.dump`` writes it)::

    node_id = 1                           # this node; a key of [[nodes]]
    data_dir = "/var/lib/dynstore/node-1" # this node's replicas (router/cluster.py)
    region = "us-east-1"                  # the region the endpoint reports
    credentials_file = ""                 # INI access keys; empty: DYNSTORE_ACCESS_KEY_ID/... or development
    cluster_secret_file = "/etc/dynstore/cluster.secret"  # the same file on every node: the secret in hex
                                          # that node-to-node connections prove (replication/handshake.py)
    split_bytes = 33554432                # a partition past this many item bytes is split (autoadmin)
    hot_rate_min = 1000.0                 # a partition this busy (requests/s) and this long hot is split
    hot_sustain_s = 30.0
    checkpoint_entries = 10000            # applied entries between checkpoints of each replica's tree
    log_keep_entries = 2000               # entries kept below a checkpoint for peers a little behind
    canary_interval_s = 1.0               # seconds between availability probes of each led partition
    heal_after_s = 30.0                   # a node silent this long is replaced in its tables' placement

    [[nodes]]                             # one table per node, the same list on every node
    id = 1                                # below PROCESS_ID_STRIDE
    zone = "zone-a"
    processes = 2                         # absent: one per core of the machine reading the file
    endpoint = "127.0.0.1:8000"           # the DynamoDB endpoint (HTTP)
    peer = "127.0.0.1:7001"               # replication links of every group (one port, transport.Listener)
    forward = "127.0.0.1:7101"            # requests forwarded to this node's leaders (node/routing.py)

``peer`` and ``forward`` may also name a Unix socket, ``"@name"`` (dynstore/net.py), for nodes
of one machine: ``dynstore up`` links its nodes so.

A node runs ``processes`` processes (shard-per-core): process k serves on the endpoint,
peer and forward ports plus k (socket names with ``.k``), and is a member of the cluster of
its own, with id ``member_id(node, k)`` (process 0 keeps the node's id) in the node's zone. Tables are placed
on members (router/cluster.py), so the processes of a node share its tables between them,
and two processes of one node never hold replicas of the same partition (one zone).
``expanded`` is the configuration with every node's processes listed as members, which is
what a process runs with. Member ids are the replica ids of every replication group, so node
ids must never be reused for a different node's data. Addresses may change between runs:
groups know their members by id.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass

from dynstore import net
from dynstore.limits import (CANARY_INTERVAL_S, CHECKPOINT_ENTRIES, HEAL_AFTER_S_DEFAULT, HOT_RATE_MIN_DEFAULT,
                             HOT_SUSTAIN_S_DEFAULT, LOG_KEEP_ENTRIES, REPLICATED_SPLIT_BYTES_DEFAULT)


# Process k of node n is member n + k * PROCESS_ID_STRIDE, so node ids stay below it.
PROCESS_ID_STRIDE = 1000


def member_id(node: int, process: int) -> int:
    return node + process * PROCESS_ID_STRIDE


def _endpoint(text: str) -> tuple[str, int]:
    address = net.parse(text)
    if isinstance(address, str):
        raise ValueError(f"a node's endpoint serves HTTP over TCP: host:port, not {text!r}")
    return address


@dataclass(frozen=True)
class NodeAddress:
    id: int
    zone: str
    endpoint: tuple[str, int]
    peer: net.Address
    forward: net.Address
    processes: int = 1

    def members(self) -> list["NodeAddress"]:
        """The node's processes, each a member of its own (ports plus k)."""
        return [NodeAddress(member_id(self.id, k), self.zone, net.offset(self.endpoint, k), net.offset(self.peer, k),
                            net.offset(self.forward, k)) for k in range(self.processes)]


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    data_dir: str
    nodes: tuple[NodeAddress, ...]
    region: str = "us-east-1"
    credentials_file: str = ""
    cluster_secret_file: str = ""  # empty: connections between nodes are not authenticated
    split_bytes: int = REPLICATED_SPLIT_BYTES_DEFAULT
    hot_rate_min: float = HOT_RATE_MIN_DEFAULT
    hot_sustain_s: float = HOT_SUSTAIN_S_DEFAULT
    checkpoint_entries: int = CHECKPOINT_ENTRIES
    log_keep_entries: int = LOG_KEEP_ENTRIES
    canary_interval_s: float = CANARY_INTERVAL_S
    heal_after_s: float = HEAL_AFTER_S_DEFAULT

    def __post_init__(self):
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids) or self.node_id not in ids:
            raise ValueError(f"node ids {ids} must be distinct and include node_id {self.node_id}")
        if any(n.processes > 1 for n in self.nodes) and not all(0 < i < PROCESS_ID_STRIDE for i in ids):
            raise ValueError(f"node ids {ids} must be from 1 to {PROCESS_ID_STRIDE - 1} for nodes of several "
                             f"processes")
        if any(n.processes < 1 for n in self.nodes):
            raise ValueError("a node runs at least one process")

    @property
    def me(self) -> NodeAddress:
        return next(n for n in self.nodes if n.id == self.node_id)

    def expanded(self) -> list["NodeConfig"]:
        """One configuration per process of this node, listing every node's processes as
        members (each with one process); a node of several processes keeps each one's files
        under ``<data_dir>/node-<member id>/`` (dynstore/node/supervisor.py's layout)."""
        members = tuple(m for n in self.nodes for m in n.members())
        if self.me.processes == 1:
            return [dataclasses.replace(self, nodes=members)]
        return [dataclasses.replace(self, node_id=member_id(self.node_id, k), nodes=members,
                                    data_dir=os.path.join(self.data_dir, f"node-{member_id(self.node_id, k)}", "data"))
                for k in range(self.me.processes)]

    def cluster_secret(self) -> bytes:
        """The secret of cluster_secret_file (b"" without one)."""
        if not self.cluster_secret_file:
            return b""
        with open(self.cluster_secret_file) as f:
            return bytes.fromhex(f.read().strip())

    @classmethod
    def load(cls, path: str) -> "NodeConfig":
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        nodes = tuple(NodeAddress(int(n["id"]), n["zone"], _endpoint(n["endpoint"]), net.parse(n["peer"]),
                                  net.parse(n["forward"]), int(n.get("processes", os.cpu_count() or 1)))
                      for n in doc["nodes"])
        return cls(int(doc["node_id"]), doc["data_dir"], nodes, doc.get("region", "us-east-1"),
                   doc.get("credentials_file", ""), doc.get("cluster_secret_file", ""),
                   int(doc.get("split_bytes", REPLICATED_SPLIT_BYTES_DEFAULT)),
                   float(doc.get("hot_rate_min", HOT_RATE_MIN_DEFAULT)),
                   float(doc.get("hot_sustain_s", HOT_SUSTAIN_S_DEFAULT)),
                   int(doc.get("checkpoint_entries", CHECKPOINT_ENTRIES)),
                   int(doc.get("log_keep_entries", LOG_KEEP_ENTRIES)),
                   float(doc.get("canary_interval_s", CANARY_INTERVAL_S)),
                   float(doc.get("heal_after_s", HEAL_AFTER_S_DEFAULT)))

    def dump(self) -> str:
        q = json.dumps  # a JSON string is a TOML basic string
        lines = [f"node_id = {self.node_id}", f"data_dir = {q(self.data_dir)}", f"region = {q(self.region)}",
                 f"credentials_file = {q(self.credentials_file)}",
                 f"cluster_secret_file = {q(self.cluster_secret_file)}", f"split_bytes = {self.split_bytes}",
                 f"hot_rate_min = {float(self.hot_rate_min)}", f"hot_sustain_s = {float(self.hot_sustain_s)}",
                 f"checkpoint_entries = {self.checkpoint_entries}", f"log_keep_entries = {self.log_keep_entries}",
                 f"canary_interval_s = {self.canary_interval_s!r}", f"heal_after_s = {float(self.heal_after_s)}"]
        for n in self.nodes:
            lines += ["", "[[nodes]]", f"id = {n.id}", f"zone = {q(n.zone)}", f"processes = {n.processes}",
                      f"endpoint = {q(net.text(n.endpoint))}",
                      f"peer = {q(net.text(n.peer))}", f"forward = {q(net.text(n.forward))}"]
        return "\n".join(lines) + "\n"
