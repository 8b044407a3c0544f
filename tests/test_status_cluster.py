"""`dynstore status` and the availability canary of a real `dynstore up --nodes 3`.

The cluster runs with a small split size (a table of a few hundred items splits into several
partitions) and a short canary interval, so every partition is probed several times a second
by the node that leads its group. Checked through the nodes' endpoints: every partition of
every table is shown with its leader, replicas, lag, items and measured availability; a
kill -9 of the node leading the most groups does not stop the measurement of the partitions
whose leadership moved; a node that does not answer (stopped with SIGSTOP) is shown as down.
"""
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from dynstore.status import fetch, read_cluster
from test_cluster import Cluster, create_table, item

SPLIT_BYTES = 6_000
CANARY_INTERVAL_S = 0.1
ITEMS = 250  # ~80 bytes each: about three split sizes
PROBED_REQUESTS_MIN = 6  # three probes (a write and a read each) of every partition


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data", "--split-bytes", str(SPLIT_BYTES), "--canary-interval", str(CANARY_INTERVAL_S))
    c.start()
    yield c
    c.stop()


def _wait(what: str, check, cluster: Cluster, within: float = 40):
    """check() until it returns something true (which is returned); the last answer on failure."""
    deadline = time.monotonic() + within
    while True:
        try:
            found = check()
        except OSError as exc:  # the endpoint asked is restarting
            found = exc
        if found and not isinstance(found, OSError):
            return found
        assert time.monotonic() < deadline, f"{what}: {found!r}\n{cluster.describe()}"
        time.sleep(0.2)


def _measured(view: dict) -> dict | None:
    """The view once every node answers, the table has split as far as it will, every partition
    has a leader, and the canary has measured every partition; None before."""
    parts = view["partitions"]
    if not all(n["reachable"] for n in view["nodes"]) or {p["table"] for p in parts} != {"orders", "users"}:
        return None
    if sum(p["table"] == "orders" for p in parts) < 2 or any(p["bytes"] >= SPLIT_BYTES for p in parts):
        return None  # not split yet, or more splits to come
    if any(p["leader"] is None or p["availability"]["window_requests"] < PROBED_REQUESTS_MIN for p in parts):
        return None
    if sum(n["leads"] for n in view["nodes"]) != len(parts) + 1:  # and the metadata group: an election
        return None
    return view


def test_status_shows_every_partition_measured_and_survives_a_killed_leader(cluster):
    clients = {node: cluster.client(node) for node in (1, 2, 3)}
    create_table(clients[1], "orders")
    create_table(clients[2], "users")
    for i in range(ITEMS):
        clients[1 + i % 3].put_item(TableName="orders", Item=item(f"pk-{i:04d}", i % 2, v="x" * 40))
    clients[3].put_item(TableName="users", Item=item("someone", 0))

    view = _wait("every partition measured", lambda: _measured(read_cluster(cluster.endpoints[2])), cluster)
    orders = [p for p in view["partitions"] if p["table"] == "orders"]
    assert [p["partition"] for p in orders] == list(range(len(orders)))
    assert orders[0]["start"] == "" and orders[-1]["end"] is None
    assert all(a["end"] == b["start"] for a, b in zip(orders, orders[1:]))  # the ranges tile the key space
    for p in view["partitions"]:
        assert [r["node"] for r in p["replicas"]] == ["node-1", "node-2", "node-3"]
        assert [r["role"] for r in p["replicas"]].count("leader") == 1
        assert next(r["node"] for r in p["replicas"] if r["role"] == "leader") == p["leader"]
        assert all(isinstance(r["lag"], int) and r["lag"] >= 0 for r in p["replicas"])
        # No probe of a healthy cluster fails.
        assert p["availability"]["window"] == 1.0 and p["availability"]["day"] == 1.0, p
    assert view["availability"]["window"] == 1.0
    for endpoint in cluster.endpoints.values():
        # What lives as long as the node (modules, classes, replicas) is out of the collector's
        # walk: a full collection walks a few thousand objects, not tens of thousands.
        collector = fetch(endpoint, 5)["collector"]
        assert collector["frozen"] >= 4 * collector["tracked"], collector
    assert [(n["id"], n["zone"]) for n in view["nodes"]] == [("node-1", "zone-a"), ("node-2", "zone-b"),
                                                              ("node-3", "zone-c")]
    # Every probe counted is one a node made of a partition it led: the nodes' figures add up.
    assert sum(n["availability"]["day_requests"] for n in view["nodes"]) == view["availability"]["day_requests"]
    cluster.wait_converged("orders")
    settled = read_cluster(cluster.endpoints[3])
    assert sum(p["items"] for p in settled["partitions"] if p["table"] == "orders") == ITEMS

    # The command itself, as JSON and as tables for people.
    command = [sys.executable, "-c", "from dynstore.cli import main; main()", "status", "--endpoint",
               cluster.endpoints[1]]
    shown = orjson.loads(subprocess.run(command + ["--json"], capture_output=True, timeout=30, check=True).stdout)
    assert {p["group"] for p in shown["partitions"]} == {p["group"] for p in view["partitions"]}
    text = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True,
                          env=dict(os.environ, COLUMNS="250")).stdout
    assert "zone-c" in text and "orders" in text and " leader lag 0" in text and "100.00%" in text

    # kill -9 the node leading the most groups: the groups it led get new leaders, which probe them.
    led: dict[str, list[int]] = {}
    for p in view["partitions"]:
        led.setdefault(p["leader"], []).append(p["group"])
    victim = max(led, key=lambda node: len(led[node]))
    os.kill(cluster.node_pids()[int(victim.removeprefix("node-"))], signal.SIGKILL)
    survivors = [node for node in (1, 2, 3) if f"node-{node}" != victim]

    def measured_again():
        # Whoever leads each of those groups now probes it: a survivor, or the victim itself once
        # the supervisor restarted it (it may win some back); its figures from before the kill
        # died with it, so every request counted here was probed after the kill.
        requests = {group: 0 for group in led[victim]}
        for node in (1, 2, 3):
            try:
                doc = fetch(cluster.endpoints[node], 5)
            except OSError:
                continue  # the victim, not serving again yet
            for p in doc["partitions"]:
                if p["group"] in requests:
                    requests[p["group"]] += sum(r for _, _, r in p["windows"])
        return all(r >= PROBED_REQUESTS_MIN for r in requests.values()) and requests
    _wait(f"the groups {victim} led measured again after it was killed", measured_again, cluster)
    clients[survivors[0]].put_item(TableName="orders", Item=item("after-the-kill", 0))

    def victim_serves():
        try:
            return fetch(cluster.endpoints[int(victim.removeprefix("node-"))], 5)
        except OSError:
            return None
    _wait(f"{victim} serving again after its restart", victim_serves, cluster)

    # A node that does not answer is shown as down, and the others still are shown.
    stopped = survivors[1]
    pid = cluster.node_pids()[stopped]
    os.kill(pid, signal.SIGSTOP)
    try:
        view = read_cluster(cluster.endpoints[survivors[0]])
    finally:
        os.kill(pid, signal.SIGCONT)
    down = next(n for n in view["nodes"] if n["id"] == f"node-{stopped}")
    assert (down["reachable"], down["leads"]) == (False, None) and "timed out" in down["error"]
    assert all(n["reachable"] for n in view["nodes"] if n is not down)
    assert all(r["role"] == "down" for p in view["partitions"] for r in p["replicas"] if r["node"] == down["id"])
    assert {p["table"] for p in view["partitions"]} == {"orders", "users"}
