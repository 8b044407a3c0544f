"""The status of a node (``GET /status``) and of the whole cluster (``dynstore status``).

A node's document (JSON, served without authentication like ``/metrics``: it holds table
names, counts, slots and figures, never keys, items or credentials)::

    {"node": {"id": "node-1", "zone": "zone-a", "address": "127.0.0.1:8000", "region": "us-east-1"},
     "time": 1700000000.5,              the node's clock when it answered (epoch seconds)
     "nodes": [{"id", "zone", "address"}, ...],      every node of the cluster, this one included
     "leads": 3,                        replication groups this node's replicas lead (metadata
                                        group included; on a single node, its partitions)
     "availability": {...},             this node's probes, every partition together
     "partitions": [{                   every partition of every table, as this node's replicas know them
         "table": "orders", "table_id": "...",
         "partition": 0,                position in the table's key order
         "group": 4711 | null,          replication group (null on a single node)
         "start": "", "end": "01ab.." | null,   item storage keys [start, end), hex; null: no end
         "leader": "node-1" | "-",      this replica's leader hint
         "role": "leader" | "follower" | "precandidate" | "candidate",   this replica's
         "lease_valid": true,           this replica leads under a valid lease
         "ballot": [round, node] | null,
         "replicas": ["node-1", ...],
         "commit": 12,                  highest slot this replica knows committed (single node: = applied)
         "applied_lsn": 12,             slot (single node: log sequence number) applied to its tree
         "items": 3, "bytes": 120,      the statistics record of this replica's tree
         "availability": {...},         this node's probes of the partition
         "windows": [[start, successes, requests], ...]}, ...],   the same, per 5-minute window
     and, on a cluster node, "groups": {name: replica status (replica.py)}, "forwarded": n}

An ``availability`` object is canary.Availability as a dict: ``window_start`` (epoch seconds),
``window`` and ``day`` (0..1, null before the first probe), ``window_requests`` and
``day_requests``.

``dynstore status --endpoint URL`` reads that node's document, learns the other nodes from its
``nodes``, reads theirs (each within ``limits.STATUS_NODE_TIMEOUT_S``; a node that does not
answer is shown as down), and merges them with ``cluster_view`` (a pure function) into the
document ``--json`` prints::

    {"time": ...,                       the latest clock of the nodes that answered
     "nodes": [{"id", "zone", "address", "reachable": bool, "error": str | null,
                "leads": n | null, "availability": {...}}],        each node's own probes
     "availability": {...},             every probe of every node, every partition together
     "partitions": [{"table", "table_id", "partition" (position in key order), "group",
                     "start", "end", "leader": node id | null, "items", "bytes",
                     "replicas": [{"node", "role" ("down": no answer, "missing": no replica
                                   yet), "applied": slot | null, "lag": slots | null}],
                     "availability": {...}}, ...]}

The merge: a partition is its replication group (on a single node, its position). Its
leader is the replica that reports leading under a valid lease (the highest ballot if two
do, as two documents read a moment apart may say), else the one that reports leading. Range,
items and bytes are the leader replica's, or without one the most applied replica's. A
replica's lag is the leader's commit slot minus the replica's applied slot, never below 0
(the documents are read one after the other, so a follower read later may be ahead of the
commit the leader reported). The availability of a partition adds up, window by window, the
probes of every node that measured it (its leader at the time; leadership moves), so no
node's figures are lost when another node leads the partition now; a node that does not
answer takes its figures with it, and a restarted node starts its own afresh.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import sys
import urllib.error
import urllib.parse
import urllib.request

import click
import orjson

from dynstore.canary import availability
from dynstore.limits import STATUS_NODE_TIMEOUT_S

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"


# --- a node's document ----------------------------------------------------------------------------

def partition_status(state, canary, name: str, desc: dict, number: int, partition, pid, **replica) -> dict:
    """One entry of a node document's ``partitions``: ``replica`` holds group, start, end,
    leader, role, lease_valid, ballot, replicas, commit and applied_lsn."""
    from dynstore.api.operations.store import partition_stats

    stats = partition_stats(state, partition)
    return {"table": name, "table_id": desc["TableId"], "partition": number, **replica, "items": stats.items,
            "bytes": stats.bytes, "availability": canary.availability([pid])._asdict(),
            "windows": canary.measured(pid)}


def node_document(canary, node: dict, nodes: list[dict], leads: int, partitions: list[dict], pids) -> dict:
    return {"node": node, "time": canary.clock(), "nodes": nodes, "leads": leads,
            "availability": canary.availability(pids)._asdict(), "partitions": partitions}


def node_status(state, canary, *, node_id: str, zone: str) -> dict:
    """The document of a single node (router/local.py): it leads every partition it serves."""
    router = state.router
    partitions, pids = [], []
    for name in router.table_names():
        desc = router.table(name)
        for number, partition in enumerate(router.partitions(desc)):
            pid = (desc["TableId"], number)
            pids.append(pid)
            applied = partition.engine.applied_lsn
            partitions.append(partition_status(
                state, canary, name, desc, number, partition, pid, group=None, start="", end=None, leader=node_id,
                role="leader", lease_valid=True, ballot=None, replicas=[node_id], commit=applied,
                applied_lsn=applied))
    node = {"id": node_id, "zone": zone, "address": state.address, "region": state.region}
    return node_document(canary, node, [{k: node[k] for k in ("id", "zone", "address")}], len(partitions),
                         partitions, pids)


# --- the cluster's view ---------------------------------------------------------------------------

def _identity(p: dict) -> tuple:
    return p["table_id"], p["group"] if p["group"] is not None else ("position", p["partition"])


def _windows(partitions) -> itertools.chain:
    return itertools.chain.from_iterable(p["windows"] for p in partitions)


def _leader(entries: dict[str, dict]) -> str | None:
    """The node whose replica leads, of ``entries`` (node id -> its entry of one partition)."""
    leading = [(p["lease_valid"], p["ballot"] or [], node) for node, p in entries.items() if p["role"] == "leader"]
    return max(leading)[2] if leading else None


def cluster_view(nodes: list[dict], docs: dict[str, dict], errors: dict[str, str]) -> dict:
    """The cluster as ``dynstore status`` shows it (format in the module docstring), from each
    node's document (``docs``, by node id) and why the others did not answer (``errors``)."""
    now = max(doc["time"] for doc in docs.values())
    by_partition: dict[tuple, dict[str, dict]] = {}
    for node_id, doc in docs.items():
        for p in doc["partitions"]:
            by_partition.setdefault(_identity(p), {})[node_id] = p
    partitions = []
    for entries in by_partition.values():
        leader = _leader(entries)
        best = entries[leader] if leader is not None else max(entries.values(), key=lambda p: p["applied_lsn"])
        members = list(dict.fromkeys(itertools.chain(best["replicas"], entries)))
        replicas = []
        for node_id in members:
            entry = entries.get(node_id)
            if entry is None:
                replicas.append({"node": node_id, "role": "missing" if node_id in docs else "down",
                                 "applied": None, "lag": None})
                continue
            lag = None if leader is None else max(0, entries[leader]["commit"] - entry["applied_lsn"])
            replicas.append({"node": node_id, "role": entry["role"], "applied": entry["applied_lsn"], "lag": lag})
        partitions.append({
            "table": best["table"], "table_id": best["table_id"], "partition": None, "group": best["group"],
            "start": best["start"], "end": best["end"], "leader": leader, "items": best["items"],
            "bytes": best["bytes"], "replicas": replicas,
            "availability": availability(_windows(entries.values()), now)._asdict()})
    # In key order within each table; positions are counted again, since nodes may number differently.
    partitions.sort(key=lambda p: (p["table"], p["table_id"], p["start"]))
    for _, table in itertools.groupby(partitions, key=lambda p: p["table_id"]):
        for number, p in enumerate(table):
            p["partition"] = number
    shown = []
    for node in nodes:
        doc = docs.get(node["id"])
        shown.append(dict(node, reachable=doc is not None, error=errors.get(node["id"]),
                          leads=None if doc is None else doc["leads"],
                          availability=availability(_windows(doc["partitions"]) if doc else (), now)._asdict()))
    everything = availability(_windows(p for doc in docs.values() for p in doc["partitions"]), now)
    return {"time": now, "nodes": shown, "availability": everything._asdict(), "partitions": partitions}


# --- reading the nodes ----------------------------------------------------------------------------

def fetch(endpoint: str, timeout_s: float) -> dict:
    with urllib.request.urlopen(f"{endpoint.rstrip('/')}/status", timeout=timeout_s) as response:
        return orjson.loads(response.read())


def _why(error: Exception) -> str:
    """A short reason a node did not answer: "Connection refused", "timed out", "HTTP Error 500: ..."."""
    reason = error.reason if isinstance(error, urllib.error.URLError) and not isinstance(
        error, urllib.error.HTTPError) else error
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def read_cluster(endpoint: str, timeout_s: float = STATUS_NODE_TIMEOUT_S) -> dict:
    """The cluster view seen from ``endpoint``: OSError or ValueError if it does not answer."""
    first = fetch(endpoint, timeout_s)
    scheme = urllib.parse.urlsplit(endpoint).scheme or "http"
    others = [n for n in first["nodes"] if n["id"] != first["node"]["id"]]
    docs, errors = {first["node"]["id"]: first}, {}
    if others:
        with concurrent.futures.ThreadPoolExecutor(len(others)) as pool:
            answers = {n["id"]: pool.submit(fetch, f"{scheme}://{n['address']}", timeout_s) for n in others}
            for node_id, answer in answers.items():
                try:
                    docs[node_id] = answer.result()
                except (OSError, ValueError) as e:  # down, unreachable, HTTP errors, not JSON: shown as down
                    errors[node_id] = _why(e)
    return cluster_view(first["nodes"], docs, errors)


# --- the view for people --------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _key(hex_key: str | None, empty: str) -> str:
    if not hex_key:
        return empty
    return hex_key if len(hex_key) <= 10 else hex_key[:10] + "…"


def _replica(r: dict) -> str:
    lag = "" if r["lag"] is None else f" lag {r['lag']}"
    return f"{r['node']} {r['role']}{lag}"


def _figures(a: dict) -> tuple[str, str, str]:
    return _percent(a["window"]), _percent(a["day"]), str(a["day_requests"])


def render(view: dict, console) -> None:
    from rich.table import Table

    nodes = Table(title="nodes (leads: replication groups, the metadata group's included; availability of the "
                        "node's own probes: this 5-minute window, last day)")
    for column in ("node", "zone", "address", "state", "leads", "5 min", "day", "probes"):
        nodes.add_column(column, justify="right" if column in ("leads", "5 min", "day", "probes") else "left")
    for n in view["nodes"]:
        state = "up" if n["reachable"] else f"down ({n['error']})"
        nodes.add_row(n["id"], n["zone"], n["address"], state, "-" if n["leads"] is None else str(n["leads"]),
                      *_figures(n["availability"]))
    console.print(nodes)

    partitions = Table(title="partitions (replicas: role and lag in slots behind the leader's commit; "
                             "availability of every node's probes)")
    for column in ("table", "#", "group", "keys", "leader", "replicas", "items", "bytes", "5 min", "day", "probes"):
        text = column in ("table", "keys", "leader", "replicas")
        partitions.add_column(column, justify="left" if text else "right", no_wrap=column != "replicas")
    for p in view["partitions"]:
        partitions.add_row(p["table"], str(p["partition"]), "-" if p["group"] is None else str(p["group"]),
                           f"{_key(p['start'], '-∞')} .. {_key(p['end'], '+∞')}", p["leader"] or "none",
                           ", ".join(map(_replica, p["replicas"])), str(p["items"]), str(p["bytes"]),
                           *_figures(p["availability"]))
    console.print(partitions)
    a = view["availability"]
    console.print(f"availability: {_percent(a['window'])} this 5-minute window ({a['window_requests']} probe "
                  f"requests), {_percent(a['day'])} over the last day, every partition of every node")


@click.command()
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="Any node's endpoint URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the cluster's status as JSON.")
def status(endpoint: str, as_json: bool):
    """Show the nodes, partitions, leaders, replication lag and availability of a dynstore cluster."""
    try:
        view = read_cluster(endpoint)
    except (OSError, ValueError) as e:  # unreachable, HTTP errors, not JSON
        raise click.ClickException(f"cannot read the status of {endpoint}: {e}") from None
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(view, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console

    render(view, Console())
