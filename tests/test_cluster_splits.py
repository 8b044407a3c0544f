"""Partitions of a `dynstore up --nodes 3` cluster split by themselves under load, through boto3.

The split size is set small, so a table of a few hundred items splits several times while
clients write and read through every node with retries off: no request may fail, and
afterwards Query, Scan (paged, parallel, strongly and eventually consistent) and
DescribeTable see every acknowledged item exactly once, on every node.
"""
import os
import random
import signal
import threading
import time

import pytest

from dynstore.replication.replica import SEED_SLOT
from test_cluster import Cluster, Writers, assert_all_present, create_table, item

SPLIT_BYTES = 12_000
PARTITIONS_MIN = 3  # the load below is ~6 split sizes of items


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data", "--split-bytes", str(SPLIT_BYTES))
    c.start()
    yield c
    c.stop()


def partitions(cluster: Cluster, node: int, table: str) -> list[dict]:
    return [p for p in cluster.status(node)["partitions"] if p["table"] == table]


class Load:
    """Writers and readers through every node; every failure is kept."""

    def __init__(self, cluster: Cluster, table: str, writers: int = 3, readers: int = 2, nodes=(1, 2, 3)):
        self.cluster, self.table, self.nodes = cluster, table, nodes
        self.acked: dict[tuple[str, int], str] = {}
        self.failures: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(writers)]
        self.threads += [threading.Thread(target=self._read, args=(r,), daemon=True) for r in range(readers)]
        for t in self.threads:
            t.start()

    def _write(self, w: int) -> None:
        client = self.cluster.client(self.nodes[w % len(self.nodes)])
        n = 0
        while not self.stop.is_set():
            pk, sk = f"w{w}-{n // 3:05d}", n % 3
            value = f"{pk}/{sk}" + "x" * 60
            try:
                client.put_item(TableName=self.table, Item=item(pk, sk, v=value))
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                self.failures.append(f"put {pk}/{sk}: {exc!r}")
                return
            self.acked[(pk, sk)] = value
            n += 1

    def _read(self, r: int) -> None:
        client = self.cluster.client(self.nodes[-1 - r % len(self.nodes)])
        rng = random.Random(r)
        while not self.stop.is_set():
            if not self.acked:
                time.sleep(0.01)
                continue
            (pk, sk), value = rng.choice(list(self.acked.items()))
            try:
                got = client.get_item(TableName=self.table, Key={"pk": {"S": pk}, "sk": {"N": str(sk)}},
                                      ConsistentRead=True)
                q = client.query(TableName=self.table, KeyConditionExpression="pk = :p", ConsistentRead=True,
                                 ExpressionAttributeValues={":p": {"S": pk}})
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"read {pk}/{sk}: {exc!r}")
                return
            if got.get("Item", {}).get("v") != {"S": value}:
                self.failures.append(f"read {pk}/{sk}: {got.get('Item')!r}, acknowledged {value!r}")
            if sk not in {int(i["sk"]["N"]) for i in q["Items"]}:
                self.failures.append(f"query {pk} lacks acknowledged sort key {sk}: {q['Items']!r}")
            self.reads += 1

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def scan_all(client, table: str, **kwargs) -> list[tuple[str, int]]:
    keys = []
    while True:
        page = client.scan(TableName=table, **kwargs)
        keys += [(i["pk"]["S"], int(i["sk"]["N"])) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return keys
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_table_splits_under_load_without_failed_requests(cluster):
    create_table(cluster.client(1), "orders")
    load = Load(cluster, "orders")
    deadline = time.monotonic() + 90
    try:
        while len(partitions(cluster, 1, "orders")) < PARTITIONS_MIN or len(load.acked) < 600:
            assert not load.failures, load.failures[:5]
            assert time.monotonic() < deadline, (len(load.acked), partitions(cluster, 1, "orders"),
                                                 cluster.describe())
            time.sleep(0.1)
    finally:
        load.join()
    assert not load.failures, load.failures[:5]
    assert load.reads > 50
    acked = set(load.acked)
    client = cluster.client(2)
    for kwargs in ({"ConsistentRead": True}, {"ConsistentRead": True, "Limit": 37}):
        keys = scan_all(client, "orders", **kwargs)
        assert len(keys) == len(set(keys)) and set(keys) == acked, kwargs
    cluster.wait_converged("orders")
    for node in (1, 2, 3):  # each node's own replicas, in parallel segments
        client = cluster.client(node)
        keys = [k for segment in range(4)
                for k in scan_all(client, "orders", Segment=segment, TotalSegments=4, Limit=50)]
        assert len(keys) == len(set(keys)) and set(keys) == acked, node
        assert client.describe_table(TableName="orders")["Table"]["ItemCount"] == len(acked)
    parts = partitions(cluster, 1, "orders")
    assert len(parts) >= PARTITIONS_MIN
    assert sum(p["items"] for p in parts) == len(acked)
    # The ranges tile the key space, in order.
    assert parts[0]["start"] == "" and parts[-1]["end"] is None
    assert all(a["end"] == b["start"] for a, b in zip(parts, parts[1:]))
    # Every item collection is whole in one partition: Query of each partition key sees all its items.
    for pk in {pk for pk, _ in acked}:
        q = client.query(TableName="orders", KeyConditionExpression="pk = :p",
                         ExpressionAttributeValues={":p": {"S": pk}})
        assert {(pk, int(i["sk"]["N"])) for i in q["Items"]} == {k for k in acked if k[0] == pk}


def test_splits_survive_the_whole_cluster_killed(cluster):
    create_table(cluster.client(1), "ledger")
    load = Load(cluster, "ledger", readers=0)
    deadline = time.monotonic() + 90
    while len(partitions(cluster, 1, "ledger")) < 2 or len(load.acked) < 300:
        assert not load.failures and time.monotonic() < deadline, (load.failures[:5], cluster.describe())
        time.sleep(0.05)
    cluster.kill_tree()  # splits and writes in flight
    load.join()
    acked = dict(load.acked)
    cluster.start()
    client = cluster.client(3)
    found = scan_all(client, "ledger", ConsistentRead=True)
    assert len(found) == len(set(found))
    assert acked.keys() <= set(found), len(acked.keys() - set(found))


def test_a_hot_partition_splits_though_it_is_small(tmp_path):
    """A partition that takes the node's requests at the hot rate splits without growing;
    the readers see every item throughout."""
    cluster = Cluster(tmp_path / "hot", "--hot-rate", "40", "--hot-seconds", "2")
    cluster.start()
    try:
        client = cluster.client(1)
        create_table(client, "hot")
        keys = [(f"user{i:03d}", 0) for i in range(60)]
        for pk, sk in keys:
            client.put_item(TableName="hot", Item=item(pk, sk, v=pk))
        assert len(partitions(cluster, 1, "hot")) == 1
        deadline = time.monotonic() + 60
        rng = random.Random(7)
        while len(partitions(cluster, 1, "hot")) < 2:
            assert time.monotonic() < deadline, cluster.describe()
            pk, sk = rng.choice(keys)  # eventually consistent: served by node 1's own replicas
            got = client.get_item(TableName="hot", Key={"pk": {"S": pk}, "sk": {"N": str(sk)}})
            assert got["Item"]["v"] == {"S": pk}
        cluster.wait_converged("hot")
        assert sorted(scan_all(client, "hot", ConsistentRead=True)) == sorted(keys)
    finally:
        cluster.stop()


def test_node_killed_while_partitions_split(cluster):
    """kill -9 of a node in the middle of splits: it recovers (re-applying a split it had not
    checkpointed), every acknowledged write is there once, on every node."""
    create_table(cluster.client(1), "events")
    writers = Writers(cluster, "events")
    try:
        # Killed after the first split, while the next ones come: ~36 bytes an item.
        writers.wait_acked(SPLIT_BYTES // 36 + 50, within=60)
        victim = cluster.leader_of("events")
        os.kill(cluster.node_pids()[victim], signal.SIGKILL)
        writers.wait_acked(len(writers.acked) + SPLIT_BYTES // 36, within=60)
        # The control plane may have been on the killed node: its successor splits once elected.
        deadline = time.monotonic() + 30
        while len(partitions(cluster, 1 if victim != 1 else 2, "events")) < 2:
            assert time.monotonic() < deadline, cluster.describe()
            time.sleep(0.1)
    finally:
        writers.join()
    deadline = time.monotonic() + 30
    while victim not in cluster.node_pids():
        assert time.monotonic() < deadline, cluster.describe()
        time.sleep(0.1)
    cluster.wait_converged("events", within=60)
    for node in (1, 2, 3):
        assert_all_present(cluster.client(node), "events", writers.acked, consistent=False)
        keys = scan_all(cluster.client(node), "events")
        assert len(keys) == len(set(keys))


def compacted_splits(cluster: Cluster, nodes, table: str) -> int:
    """Partitions split off ``table`` whose log starts past their seed on each of ``nodes``: a
    replica that missed the split can only get their state as a snapshot."""
    logs = [cluster.status(node)["groups"] for node in nodes]
    return sum(1 for name in logs[0] if name.startswith(table + "#")
               and all(name in groups and groups[name]["snapshot_index"] > SEED_SLOT for groups in logs))


def test_a_node_that_missed_the_splits_catches_up_from_snapshots(tmp_path):
    """A node paused while its peers split a table and compact their logs past the splits
    learns of the new partitions from a snapshot of the old one (or from the old one's log,
    which its leader may have sent it before it was compacted and which waits in the paused
    node's socket), gets theirs as snapshots, and then serves every item from its own
    replicas."""
    cluster = Cluster(tmp_path / "data", "--split-bytes", str(SPLIT_BYTES), "--checkpoint-entries", "20",
                      "--log-keep-entries", "5")
    cluster.start()
    try:
        create_table(cluster.client(1), "orders")
        cluster.wait_converged("orders")
        behind = next(node for node in (3, 2, 1) if node != cluster.leader_of("orders"))
        others = tuple(node for node in (1, 2, 3) if node != behind)
        paused = cluster.node_pids()[behind]
        os.kill(paused, signal.SIGSTOP)
        try:
            load = Load(cluster, "orders", writers=2, readers=0, nodes=others)
            deadline = time.monotonic() + 90
            while len(partitions(cluster, others[0], "orders")) < PARTITIONS_MIN or len(load.acked) < 500 \
                    or compacted_splits(cluster, others, "orders") < 2:
                assert not load.failures and time.monotonic() < deadline, (load.failures[:5], cluster.describe())
                time.sleep(0.1)
            load.join()
            assert not load.failures, load.failures[:5]
        finally:
            os.kill(paused, signal.SIGCONT)
        cluster.wait_converged("orders", within=60)
        groups = cluster.status(behind)["groups"]
        assert sum(g["snapshots_installed"] for name, g in groups.items() if name.startswith("orders")) >= 2, \
            (groups, cluster.logs())  # a restart in between would show as counts started afresh
        client = cluster.client(behind)
        keys = scan_all(client, "orders")  # the node's own replicas
        assert len(keys) == len(set(keys)) and set(keys) == set(load.acked)
        assert client.describe_table(TableName="orders")["Table"]["ItemCount"] == len(load.acked)
    finally:
        cluster.stop()


def test_a_global_index_reads_across_partitions_in_key_order(cluster):
    """A global index's entries live with their items, so after splits an index Query merges
    every partition's entries: in index-key order, both ways, page after page."""
    client = cluster.client(1)
    client.create_table(TableName="people", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                              {"AttributeName": "sk", "AttributeType": "N"},
                                              {"AttributeName": "city", "AttributeType": "S"},
                                              {"AttributeName": "age", "AttributeType": "N"}],
                        GlobalSecondaryIndexes=[{"IndexName": "by_city",
                                                 "KeySchema": [{"AttributeName": "city", "KeyType": "HASH"},
                                                               {"AttributeName": "age", "KeyType": "RANGE"}],
                                                 "Projection": {"ProjectionType": "ALL"}}])
    people = {(f"person-{n:03d}", 0): (f"city-{n % 4}", n) for n in range(240)}
    for (pk, sk), (city, age) in people.items():
        client.put_item(TableName="people", Item={**item(pk, sk, pad="x" * 40), "city": {"S": city},
                                                  "age": {"N": str(age)}})
    deadline = time.monotonic() + 30
    while len(partitions(cluster, 1, "people")) < 2:  # ~16 KB of items
        assert time.monotonic() < deadline, partitions(cluster, 1, "people")
        time.sleep(0.1)
    cluster.wait_converged("people")
    for forward in (True, False):
        for city in ("city-1", "city-3"):
            ages, kwargs = [], {}
            while True:
                page = client.query(TableName="people", IndexName="by_city", KeyConditionExpression="city = :c",
                                    ExpressionAttributeValues={":c": {"S": city}}, Limit=7,
                                    ScanIndexForward=forward, **kwargs)
                ages += [int(i["age"]["N"]) for i in page["Items"]]
                if "LastEvaluatedKey" not in page:
                    break
                kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
            expected = sorted((age for c, age in people.values() if c == city), reverse=not forward)
            assert ages == expected
