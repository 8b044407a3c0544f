"""The node's status: what ``GET /status`` answers and ``dynstore status`` shows.

Wire format (JSON, served without authentication like ``/metrics``: it holds table names,
counts and figures, never keys, items or credentials)::

    {"node": {"id": "node-1", "zone": "zone-a", "address": "127.0.0.1:8000", "region": "us-east-1"},
     "nodes": [{"id": ..., "zone": ..., "address": ...}],          every node of the cluster
     "availability": {...},                                        every partition of the node together
     "partitions": [{"table": "orders", "table_id": "...", "partition": 0, "leader": "node-1",
                     "replicas": ["node-1"], "applied_lsn": 12, "items": 3, "bytes": 120,
                     "availability": {...}}, ...]}

An ``availability`` object is canary.Availability as a dict: ``window_start`` (epoch seconds),
``window`` and ``day`` (0..1, null before the first probe), ``window_requests`` and
``day_requests``. A single node leads every partition it serves.
"""
from __future__ import annotations

import sys
import urllib.request

import click
import orjson

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"


def node_status(state, canary, *, node_id: str, zone: str) -> dict:
    """The status document of the node serving ``state`` and probed by ``canary``."""
    from dynstore.api.operations.store import partition_stats

    router = state.router
    node = {"id": node_id, "zone": zone, "address": state.address, "region": state.region}
    partitions = []
    for name in router.table_names():
        desc = router.table(name)
        for number, partition in enumerate(router.partitions(desc)):
            stats = partition_stats(state, partition)
            partitions.append({
                "table": name, "table_id": desc["TableId"], "partition": number, "leader": node_id,
                "replicas": [node_id], "applied_lsn": partition.engine.applied_lsn, "items": stats.items,
                "bytes": stats.bytes,
                "availability": canary.availability([(desc["TableId"], number)])._asdict(),
            })
    everything = canary.availability([(p["table_id"], p["partition"]) for p in partitions])
    return {"node": node, "nodes": [{k: node[k] for k in ("id", "zone", "address")}],
            "availability": everything._asdict(), "partitions": partitions}


def fetch(endpoint: str, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(f"{endpoint.rstrip('/')}/status", timeout=timeout_s) as response:
        return orjson.loads(response.read())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def render(doc: dict, console) -> None:
    from rich.table import Table

    nodes = Table(title="nodes")
    for column in ("node", "zone", "address"):
        nodes.add_column(column)
    for node in doc["nodes"]:
        nodes.add_row(node["id"], node["zone"], node["address"])
    console.print(nodes)

    partitions = Table(title="partitions (availability: this 5-minute window, last day; canary requests)")
    for column in ("table", "#", "leader", "replicas", "LSN", "items", "bytes", "5 min", "day", "probes"):
        text = column in ("table", "leader", "replicas")
        partitions.add_column(column, justify="left" if text else "right", no_wrap=not text)
    for p in doc["partitions"]:
        a = p["availability"]
        partitions.add_row(p["table"], str(p["partition"]), p["leader"], ", ".join(p["replicas"]),
                           str(p["applied_lsn"]), str(p["items"]), str(p["bytes"]), _percent(a["window"]),
                           _percent(a["day"]), str(a["day_requests"]))
    console.print(partitions)
    a = doc["availability"]
    console.print(f"node availability: {_percent(a['window'])} this 5-minute window "
                  f"({a['window_requests']} probe requests), {_percent(a['day'])} over the last day")


@click.command()
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="The node's endpoint URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status(endpoint: str, as_json: bool):
    """Show the nodes, partitions, leaders and availability of a dynstore endpoint."""
    try:
        doc = fetch(endpoint)
    except (OSError, ValueError) as e:  # unreachable, HTTP errors, not JSON
        raise click.ClickException(f"cannot read the status of {endpoint}: {e}") from None
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console

    render(doc, Console())
