"""The availability canary: window arithmetic, probes of real partitions, and ``dynstore status``."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from operations_harness import Node
from test_operations_clients import client, endpoint  # noqa: F401  (fixtures: a `dynstore up` and boto3 on it)

from dynstore.api.operations.schema import CANARY_KEY
from dynstore.canary import AvailabilityWindows, Canary, availability

WINDOW = 300
T0 = 1_700_000_100.0  # 100 s into a window (1_700_000_000 is not a multiple of 300)


# --- window arithmetic -------------------------------------------------------------------------

def test_failures_lower_the_window_and_the_day_is_the_mean_of_windows():
    windows = AvailabilityWindows(WINDOW, kept=288)
    start = T0 - T0 % WINDOW
    for ok in (True, True, True, False):
        windows.record(start + 10, ok)
    first = availability(windows.windows(), start + 299)
    assert (first.window_start, first.window, first.window_requests) == (start, 0.75, 4)
    # The next window starts exactly at the boundary.
    for _ in range(10):
        windows.record(start + WINDOW, True)
    second = availability(windows.windows(), start + WINDOW + 1)
    assert (second.window_start, second.window, second.window_requests) == (start + WINDOW, 1.0, 10)
    # DynamoDB's way: the mean of the windows' availabilities (0.875), not 13/14 of requests.
    assert second.day == pytest.approx(0.875)
    assert second.day_requests == 14
    # A window without probes yet has no availability; the day still has.
    third = availability(windows.windows(), start + 2 * WINDOW)
    assert third.window is None and third.window_requests == 0 and third.day == pytest.approx(0.875)


def test_only_the_last_day_of_windows_counts_and_memory_is_bounded():
    kept = 288
    windows = AvailabilityWindows(WINDOW, kept=kept)
    start = T0 - T0 % WINDOW
    windows.record(start, False)  # a bad window, then a day of good ones
    for i in range(1, kept):
        windows.record(start + i * WINDOW, True)
    assert availability(windows.windows(), start + (kept - 1) * WINDOW).day == pytest.approx((kept - 1) / kept)
    windows.record(start + kept * WINDOW, True)  # a day later the bad window is gone
    assert availability(windows.windows(), start + kept * WINDOW).day == 1.0
    assert len(windows.windows()) == kept  # the oldest window left the deque
    # Windows older than a day leave the figures even when no newer window pushed them out.
    idle = AvailabilityWindows(WINDOW, kept=kept)
    idle.record(start, False)
    assert availability(idle.windows(), start + (kept - 1) * WINDOW).day == 0.0
    assert availability(idle.windows(), start + kept * WINDOW).day is None


def test_partitions_taken_together_add_up_per_window():
    a, b = AvailabilityWindows(WINDOW), AvailabilityWindows(WINDOW)
    a.record(T0, True)
    b.record(T0, False)
    both = availability(a.windows() + b.windows(), T0)
    assert (both.window, both.window_requests) == (0.5, 2)
    assert availability([], T0).window is None


def test_a_clock_stepped_back_stays_in_the_newest_window():
    windows = AvailabilityWindows(WINDOW)
    windows.record(T0 + WINDOW, True)
    windows.record(T0, False)
    assert [w[1:] for w in windows.windows()] == [(1, 2)]


# --- probes of real partitions -----------------------------------------------------------------

@pytest.fixture
def node(tmp_path, storage_backend):
    n = Node(str(tmp_path / "data"))
    yield n
    n.close()


def test_probes_succeed_and_a_closed_engine_fails_them(node):
    node.create("aaa")
    table_id = node.state.router.table("aaa")["TableId"]
    canary = Canary(node.state.router, clock=node.clock)
    node.run(canary.round())
    node.now += 1
    node.run(canary.round())
    assert canary.availability([(table_id, 0)])[1:3] == (1.0, 4)
    partition = node.state.router.partitions(node.state.router.table("aaa"))[0]
    assert partition.get(CANARY_KEY) is not None
    partition.engine.close()  # the partition stops serving: writes and reads raise ClosedError
    node.run(canary.round())
    assert canary.availability([(table_id, 0)])[1:3] == (4 / 6, 6)
    # The next window sees only the failures.
    node.now += WINDOW
    node.run(canary.round())
    now = canary.availability([(table_id, 0)])
    assert (now.window, now.window_requests) == (0.0, 2)


def test_only_partitions_led_here_are_probed_and_counted(node):
    """A cluster node probes the partitions whose groups it leads (canary.led_partitions names
    them; here the partition function says which is led, and how its probe behaves)."""
    node.create("aaa")
    pid = (node.state.router.table("aaa")["TableId"], 0)
    stuck = asyncio.Event()
    leading = ["stuck"]

    async def stuck_probe(value: bytes):  # a write that does not commit: a leader cut off from its peers
        await stuck.wait()
        return True, True

    async def lost_probe(value: bytes):  # read_barrier found the group led elsewhere: not sent
        return None

    def partitions(router):
        return {pid: {"stuck": stuck_probe, "lost": lost_probe, "elsewhere": None}[leading[0]]}

    canary = Canary(node.state.router, partitions=partitions, clock=node.clock, timeout_s=0.05)
    node.run(canary.round())
    node.run(canary.round())  # still outstanding and still led here: failed again
    assert canary.availability([pid])[1:3] == (0.0, 4)
    leading[0] = "elsewhere"  # another node leads it now, and probes it
    node.run(canary.round())
    assert canary.availability([pid])[1:3] == (0.0, 4)
    stuck.set()
    node.run(asyncio.sleep(0.01))
    leading[0] = "lost"
    node.run(canary.round())  # the late probe is not counted again, the probe not sent is not counted
    assert canary.availability([pid])[1:3] == (0.0, 4) and canary._in_flight == {}
    # The figures stay while the partition exists, for `dynstore status` to add to the new leader's.
    assert canary.measured(pid)[0][1:] == (0, 4)


def test_a_deleted_table_is_forgotten_not_failed(node):
    node.create("aaa")
    node.create("bbb")
    canary = Canary(node.state.router, clock=node.clock)
    node.run(canary.round())
    node("DeleteTable", TableName="aaa")
    node.run(canary.round())
    assert len(canary.windows) == 1
    assert canary.availability(canary.windows).window == 1.0


def test_canary_writes_are_invisible_to_items_counts_and_sizes(node):
    node.create("aaa", range_type="N")
    for i in range(3):
        node("PutItem", TableName="aaa", Item={"p": {"S": "k"}, "s": {"N": str(i)}})
    before = node("DescribeTable", TableName="aaa")["Table"]
    canary = Canary(node.state.router, clock=node.clock)
    for _ in range(3):
        node.run(canary.round())
    after = node("DescribeTable", TableName="aaa")["Table"]
    assert (after["ItemCount"], after["TableSizeBytes"]) == (before["ItemCount"], before["TableSizeBytes"])
    assert after["ItemCount"] == 3
    assert node("Scan", TableName="aaa")["Count"] == 3
    assert sum(node("Scan", TableName="aaa", Segment=s, TotalSegments=4)["Count"] for s in range(4)) == 3
    assert node("Query", TableName="aaa", KeyConditionExpression="p = :p",
                ExpressionAttributeValues={":p": {"S": "k"}})["Count"] == 3


# --- `dynstore up` and `dynstore status` -------------------------------------------------------

def _status_json(url: str) -> dict:
    out = subprocess.run([sys.executable, "-c", "from dynstore.cli import main; main()", "status", "--endpoint", url,
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def _partition(doc: dict, table: str) -> dict | None:
    return next((p for p in doc["partitions"] if p["table"] == table), None)


def test_status_shows_the_canary_of_a_running_node(endpoint, client):  # noqa: F811
    client.create_table(TableName="canaried", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    for i in range(5):
        client.put_item(TableName="canaried", Item={"id": {"S": f"item-{i}"}})
    deadline = time.monotonic() + 15
    while True:
        doc = _status_json(endpoint)
        part = _partition(doc, "canaried")
        if part is not None and part["availability"]["window_requests"] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert part is not None, doc
    assert part["availability"]["window"] == 1.0 and part["availability"]["day"] == 1.0
    assert part["availability"]["window_requests"] >= 4
    [replica] = part["replicas"]
    assert part["leader"] == replica["node"] == "node-1" and (replica["role"], replica["lag"]) == ("leader", 0)
    assert [(n["id"], n["zone"], n["reachable"], n["leads"]) for n in doc["nodes"]] == [("node-1", "zone-a", True, 1)]
    assert (part["partition"], part["items"], part["group"], part["start"], part["end"]) == (0, 5, None, "", None)
    assert doc["availability"]["window"] == 1.0 and doc["nodes"][0]["availability"]["window"] == 1.0

    # The canary keeps writing (the applied LSN moves without client writes) and clients never see it.
    lsn = replica["applied"]
    time.sleep(2.5)
    assert _partition(_status_json(endpoint), "canaried")["replicas"][0]["applied"] > lsn
    assert client.scan(TableName="canaried")["Count"] == 5
    assert client.query(TableName="canaried", KeyConditionExpression="id = :i",
                        ExpressionAttributeValues={":i": {"S": "item-1"}})["Count"] == 1
    assert client.describe_table(TableName="canaried")["Table"]["ItemCount"] == 5

    # The node's own document over plain HTTP, and the table view for people.
    with urllib.request.urlopen(f"{endpoint}/status", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        node_doc = json.loads(response.read())
    mine = _partition(node_doc, "canaried")
    assert (node_doc["node"]["id"], mine["leader"], mine["role"], mine["items"]) == ("node-1", "node-1", "leader", 5)
    assert sum(requests for _, _, requests in mine["windows"]) == mine["availability"]["day_requests"] > 0
    shown = subprocess.run([sys.executable, "-c", "from dynstore.cli import main; main()", "status", "--endpoint",
                            endpoint], capture_output=True, text=True, timeout=30, check=True, env=dict(os.environ, COLUMNS="200"))
    assert "canaried" in shown.stdout and "100.00%" in shown.stdout and "zone-a" in shown.stdout


def test_status_of_an_unreachable_endpoint_is_an_error():
    out = subprocess.run([sys.executable, "-c", "from dynstore.cli import main; main()", "status", "--endpoint",
                          "http://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot read the status" in out.stderr


def test_the_probes_of_a_round_are_spread_over_it(node):
    """Probes sent at one instant would be a burst of writes that clients' requests queue
    behind: a round of four partitions starts one every quarter of the interval."""
    started = []

    async def probe(value: bytes):
        started.append(asyncio.get_running_loop().time())
        return True, True

    def partitions(router):
        return {("t", n): probe for n in range(4)}

    canary = Canary(node.state.router, partitions=partitions, clock=node.clock, interval_s=0.2)
    node.run(canary.round())
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert len(started) == 4 and all(0.04 <= gap < 0.1 for gap in gaps), gaps
    assert canary.availability([("t", n) for n in range(4)])[1:3] == (1.0, 8)
