"""Leaders even out: `dynstore up` with three nodes and six tables; and hand-overs fail no write.

Writes and strongly consistent reads run at a partition's leader. A node killed and started
again leads nothing at first (the others won every election while it was gone), so the
control plane hands it leads, one partition a round, until no node leads two more than
another (the tables take alike requests, so even loads are even counts), while clients keep
writing to every table through every node and see no failed request. Where the tables'
requests differ, the leads of the busiest are spread first.
"""
import asyncio
import threading
import time

from test_cluster import (Writers, assert_all_present, cluster, create_table, item,  # noqa: F401  (a fixture)
                          kill_leader)

from dynstore.node.config import NodeConfig
from dynstore.node.links import ROUTER, NodeLinks

TABLES = 6
EVEN_WITHIN_S = 30  # a hand-over a round (1 s); the first waits for the node to be heard again


def leads(cluster) -> dict[int, list[str]]:
    """node -> the table partitions its replicas lead."""
    found: dict[int, list[str]] = {}
    for node in cluster.endpoints:
        try:
            groups = cluster.status(node)["groups"]
        except OSError:
            groups = {}
        found[node] = sorted(name for name, g in groups.items() if name != "meta" and g["role"] == "leader")
    return found


def test_a_restarted_node_is_handed_leads_until_the_nodes_lead_alike(cluster):
    for n in range(TABLES):
        create_table(cluster.client(1), f"lead{n}")
    writers = Writers(cluster, "lead0", count=1)
    others = [Writers(cluster, f"lead{n}", count=1) for n in range(1, TABLES)]
    everyone = [writers] + others
    try:
        writers.wait_acked(30)
        victim = kill_leader(cluster, writers, "lead0")
        errors = [w.errors for w in everyone]
        deadline = time.monotonic() + EVEN_WITHIN_S
        while True:
            found = leads(cluster)
            counts = [len(tables) for tables in found.values()]
            if sum(counts) == TABLES and max(counts) - min(counts) <= 1 and found[victim]:
                break
            assert time.monotonic() < deadline, (found, cluster.describe())
            time.sleep(0.2)
        print(f"leads after node {victim} came back: {found}")
        for w in everyone:
            w.wait_acked(len(w.acked) + 20)
        # The hand-overs failed no write.
        assert [w.errors for w in everyone] == errors, [w.last_error for w in everyone]
    finally:
        for w in everyone:
            w.join()
    # Every table has one leader under a lease, and the writes are all there.
    for n, w in enumerate(everyone):
        cluster.leader_of(f"lead{n}")
        assert_all_present(cluster.client(victim), f"lead{n}", w.acked, consistent=True)


HAND_OVERS = 40


class HandOvers:
    """The control plane's Transfer call, over the cluster's authenticated forward port: hands
    the lead of a table's partition to a node; True if it moved."""

    def __init__(self, cluster):
        self.cluster = cluster
        config = NodeConfig.load(str(cluster.directory / "node-1" / "node.toml"))
        self.links = NodeLinks({n.id: n.forward for n in config.nodes}, config.cluster_secret(), ROUTER)
        self.loop = asyncio.new_event_loop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.loop.run_until_complete(self.links.close())
        self.loop.close()

    def __call__(self, table: str, to: int) -> bool:
        group = self.cluster.status(1)["groups"][table]["group"]
        answer = self.loop.run_until_complete(
            self.links.call(1, "Transfer", {"table": table, "group": group, "to": to}, hops=0))
        return bool(answer and answer["ok"] and answer["result"]["moved"])


def test_writes_racing_hand_overs_are_applied_once_and_none_fails(cluster):
    """Increments through every node while the lead of their partition moves from node to node
    (the control plane's Transfer call, as leader evening makes it): a write cut off before
    its proposal runs again at the next leader, and none is applied twice."""
    create_table(cluster.client(1), "race")
    key = {"pk": {"S": "counter"}, "sk": {"N": "0"}}
    acked, errors, stop = [0], [], threading.Event()

    def increment(node: int) -> None:
        client = cluster.client(node)
        while not stop.is_set():
            try:
                client.update_item(TableName="race", Key=key, UpdateExpression="ADD n :one",
                                   ExpressionAttributeValues={":one": {"N": "1"}})
            except Exception as exc:
                errors.append((node, exc))
                continue
            acked[0] += 1

    threads = [threading.Thread(target=increment, args=(node,), daemon=True) for node in (1, 2, 3) for _ in range(2)]
    for t in threads:
        t.start()
    moves = 0
    try:
        with HandOvers(cluster) as hand_over:
            deadline = time.monotonic() + 60
            while moves < HAND_OVERS and not errors:
                assert time.monotonic() < deadline, (moves, cluster.describe())
                moves += hand_over("race", cluster.leader_of("race") % 3 + 1)
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    got = cluster.client(2).get_item(TableName="race", Key=key, ConsistentRead=True)["Item"]
    assert int(got["n"]["N"]) == acked[0] > HAND_OVERS, (got, acked)
    print(f"{moves} hand-overs, {acked[0]} increments")


def test_concurrent_writes_at_a_steady_leader_never_wait_for_a_leader(cluster):
    """A write runs at its partition's leader once that leader has applied all it committed (its
    read barrier). A write of another client may commit in between: the barrier then waits for
    that to be applied, a fraction of a millisecond, and never for FORWARD_POLL_S as it does for
    a new leader."""
    create_table(cluster.client(1), "steady")
    leader = cluster.leader_of("steady")
    before = cluster.status(leader)["leader_waits"]
    errors = []

    def write(w: int) -> None:
        client = cluster.client(leader)
        for n in range(150):
            try:
                client.put_item(TableName="steady", Item=item(f"w{w}", n, v="x" * 1000))
            except Exception as exc:
                errors.append(exc)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert cluster.leader_of("steady") == leader
    assert cluster.status(leader)["leader_waits"] == before


BUSY_APART_WITHIN_S = 30  # a window of rates (5 s) to see the load, then a hand-over a round


def test_the_busiest_partitions_are_led_from_different_nodes_though_every_node_leads_two(cluster):
    """Six tables, two led by each node, but the two that take the writes both on node 1: even
    by count, node 1 does all the work. The control plane hands one of the busy leads to
    another node (and a cold one back), while the writes go on and none fails."""
    want = {"busy0": 1, "busy1": 1, "cold2": 2, "cold3": 2, "cold4": 3, "cold5": 3}
    for name in want:
        create_table(cluster.client(1), name)
    with HandOvers(cluster) as hand_over:
        deadline = time.monotonic() + 30
        while {name: cluster.leader_of(name) for name in want} != want:
            assert time.monotonic() < deadline, cluster.describe()
            for name, node in want.items():
                if cluster.leader_of(name) != node:
                    hand_over(name, node)
            time.sleep(0.2)
    writers = [Writers(cluster, name, count=2, nodes=(1,)) for name in ("busy0", "busy1")]
    try:
        deadline = time.monotonic() + BUSY_APART_WITHIN_S
        while cluster.leader_of("busy0") == cluster.leader_of("busy1"):
            assert time.monotonic() < deadline, ([len(w.acked) for w in writers], leads(cluster), cluster.describe())
            time.sleep(0.5)
        found = leads(cluster)
        print(f"leads once the busy tables were led apart: {found}")
        for w in writers:
            w.wait_acked(len(w.acked) + 50)
        assert [w.errors for w in writers] == [0, 0], [w.last_error for w in writers]
    finally:
        for w in writers:
            w.join()
