"""`dynstore status`'s merge of node documents into the cluster's view, and its rendering.

The documents are written here in the format of dynstore/status.py's docstring, as three
nodes of a cluster would answer at one moment; the nodes themselves are exercised in
tests/test_status_cluster.py (a real `dynstore up --nodes 3`) and tests/test_canary.py.
"""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from dynstore.status import cluster_view, render

WINDOW = 300
NOW = 1_700_000_100.0
CURRENT = NOW - NOW % WINDOW
NODES = [{"id": f"node-{i}", "zone": f"zone-{z}", "address": f"127.0.0.1:{8000 + i}"} for i, z in ((1, "a"), (2, "b"),
                                                                                                    (3, "c"))]
TABLE_ID = "5f0b7a2e-0000-4000-8000-000000000001"


def entry(group: int, start: str, end: str | None, *, role: str = "follower", lease: bool = False,
          ballot: list | None = None, commit: int = 10, applied: int = 10, items: int = 5, windows=(),
          partition: int = 0) -> dict:
    return {"table": "orders", "table_id": TABLE_ID, "partition": partition, "group": group, "start": start,
            "end": end, "leader": "-", "role": role, "lease_valid": lease, "ballot": ballot,
            "replicas": [n["id"] for n in NODES], "commit": commit, "applied_lsn": applied, "items": items,
            "bytes": 100 * items, "availability": {}, "windows": [list(w) for w in windows]}


def doc(node: int, partitions: list[dict], leads: int, time: float = NOW) -> dict:
    return {"node": dict(NODES[node - 1], region="us-east-1"), "time": time, "nodes": NODES, "leads": leads,
            "availability": {}, "partitions": partitions}


def test_leader_lag_and_figures_come_from_the_leaders_replica():
    docs = {
        "node-1": doc(1, [entry(7, "", "01aa", role="leader", lease=True, ballot=[3, 1], commit=40, applied=40,
                                items=9),
                          entry(8, "01aa", None, commit=12, applied=12, items=4)], leads=1),
        "node-2": doc(2, [entry(7, "", "01aa", commit=38, applied=37, items=8),
                          entry(8, "01aa", None, role="leader", lease=True, ballot=[1, 2], commit=15, applied=15,
                                items=6)], leads=2),
        "node-3": doc(3, [entry(7, "", "01aa", commit=40, applied=40, items=9),
                          entry(8, "01aa", None, commit=15, applied=14, items=6)], leads=0),
    }
    view = cluster_view(NODES, docs, {})
    first, second = view["partitions"]
    assert (first["group"], first["partition"], first["leader"], first["items"]) == (7, 0, "node-1", 9)
    assert [(r["node"], r["role"], r["lag"]) for r in first["replicas"]] == [
        ("node-1", "leader", 0), ("node-2", "follower", 3), ("node-3", "follower", 0)]
    # Items and bytes are the leader's, not those of a replica that is behind.
    assert (second["group"], second["partition"], second["leader"], second["items"], second["bytes"]) == (
        8, 1, "node-2", 6, 600)
    assert [r["lag"] for r in second["replicas"]] == [3, 0, 1]
    assert [(n["id"], n["reachable"], n["leads"]) for n in view["nodes"]] == [
        ("node-1", True, 1), ("node-2", True, 2), ("node-3", True, 0)]


def test_a_node_that_does_not_answer_is_down_and_a_leaderless_partition_has_no_lag():
    docs = {
        "node-2": doc(2, [entry(7, "", None, role="candidate", applied=30, items=3)], leads=0),
        "node-3": doc(3, [entry(7, "", None, applied=31, items=4)], leads=1),
    }
    view = cluster_view(NODES, docs, {"node-1": "Connection refused"})
    [p] = view["partitions"]
    assert p["leader"] is None and p["items"] == 4  # the most applied replica's figures
    assert [(r["node"], r["role"], r["applied"], r["lag"]) for r in p["replicas"]] == [
        ("node-1", "down", None, None), ("node-2", "candidate", 30, None), ("node-3", "follower", 31, None)]
    down = view["nodes"][0]
    assert (down["reachable"], down["error"], down["leads"], down["availability"]["window"]) == (
        False, "Connection refused", None, None)


def test_a_replica_not_yet_opened_is_missing_and_the_newer_leader_wins():
    # Two documents read a moment apart may both say "leader": the higher ballot is the current one.
    docs = {
        "node-1": doc(1, [entry(7, "", None, role="leader", lease=True, ballot=[2, 1], commit=20, applied=20)], 0),
        "node-2": doc(2, [entry(7, "", None, role="leader", lease=True, ballot=[3, 2], commit=22, applied=21),
                          entry(9, "02", None, role="leader", lease=True, ballot=[1, 2], commit=3, applied=3)], 2),
        "node-3": doc(3, [entry(7, "", None, applied=25)], 0),
    }
    view = cluster_view(NODES, docs, {})
    by_group = {p["group"]: p for p in view["partitions"]}
    assert by_group[7]["leader"] == "node-2"
    # A follower read after the leader may be past the commit the leader reported: lag 0, not -3.
    assert [r["lag"] for r in by_group[7]["replicas"]] == [2, 1, 0]
    assert [r["role"] for r in by_group[9]["replicas"]] == ["missing", "leader", "missing"]


def test_availability_adds_up_every_nodes_probes_window_by_window():
    before = CURRENT - WINDOW
    # Group 7 was led by node-1 (one failed request last window), then by node-2 in this window.
    docs = {
        "node-1": doc(1, [entry(7, "", None, windows=[(before, 9, 10), (CURRENT, 4, 4)])], 0),
        "node-2": doc(2, [entry(7, "", None, role="leader", lease=True, ballot=[2, 2], windows=[(CURRENT, 3, 4)]),
                          entry(8, "02", None, windows=[])], 1),
        "node-3": doc(3, [entry(7, "", None), entry(8, "02", None, role="leader", lease=True, ballot=[1, 3],
                                                 windows=[(CURRENT, 6, 6)])], 1),
    }
    view = cluster_view(NODES, docs, {})
    by_group = {p["group"]: p["availability"] for p in view["partitions"]}
    seven = by_group[7]
    assert (seven["window"], seven["window_requests"]) == (7 / 8, 8)  # both nodes' probes of this window
    assert seven["day"] == pytest.approx((0.9 + 7 / 8) / 2) and seven["day_requests"] == 18
    assert (by_group[8]["window"], by_group[8]["window_requests"]) == (1.0, 6)
    everything = view["availability"]
    assert (everything["window"], everything["window_requests"]) == (13 / 14, 14)
    nodes = {n["id"]: n["availability"] for n in view["nodes"]}
    assert (nodes["node-1"]["window"], nodes["node-1"]["day_requests"]) == (1.0, 14)
    assert nodes["node-3"]["window"] == 1.0
    # The view's time is the latest node clock: a day later the old windows are gone.
    later = {k: dict(d, time=NOW + 86_400) for k, d in docs.items()}
    assert cluster_view(NODES, later, {})["availability"]["day"] is None


def test_partitions_are_in_key_order_per_table_and_numbered_again():
    other = dict(entry(5, "", None, role="leader", lease=True, ballot=[1, 1]), table="accounts",
                 table_id="5f0b7a2e-0000-4000-8000-000000000002")
    # node-1 has not applied the last split: it numbers group 9 differently, and lacks group 11.
    docs = {
        "node-1": doc(1, [other, entry(9, "01c0", None, role="leader", lease=True, ballot=[1, 1], partition=1),
                          entry(7, "", "01c0", role="leader", lease=True, ballot=[1, 1], partition=0)], 3),
        "node-2": doc(2, [entry(7, "", "0180", partition=0), entry(11, "0180", "01c0", role="leader", lease=True,
                                                                    ballot=[1, 2], partition=1),
                          entry(9, "01c0", None, partition=2)], 1),
    }
    view = cluster_view(NODES, docs, {"node-3": "timed out"})
    shown = [(p["table"], p["partition"], p["group"], p["start"], p["end"]) for p in view["partitions"]]
    # Ranges are the leader's: node-1 leads group 7 and has not applied its split yet.
    assert shown == [("accounts", 0, 5, "", None), ("orders", 0, 7, "", "01c0"), ("orders", 1, 11, "0180", "01c0"),
                     ("orders", 2, 9, "01c0", None)]


def test_rendered_view_shows_nodes_partitions_replicas_and_availability():
    docs = {
        "node-1": doc(1, [entry(7, "", "01aabbccddeeff", role="leader", lease=True, ballot=[3, 1], commit=40,
                                applied=40, windows=[(CURRENT, 3, 4)])], 2),
        "node-3": doc(3, [entry(7, "", "01aabbccddeeff", commit=40, applied=38)], 0),
    }
    out = io.StringIO()
    render(cluster_view(NODES, docs, {"node-2": "Connection refused"}), Console(file=out, width=220))
    text = out.getvalue()
    assert "down (Connection refused)" in text
    assert "node-1 leader lag 0, node-2 down, node-3 follower lag 2" in text
    assert "-∞ .. 01aabbccdd…" in text
    assert "75.00%" in text and "orders" in text and "zone-c" in text
