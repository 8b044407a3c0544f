"""Leaders even out: `dynstore up` with three nodes and six tables; and hand-overs fail no write.

Writes and strongly consistent reads run at a partition's leader. A node killed and started
again leads nothing at first (the others won every election while it was gone), so the
control plane hands it leads, one partition a round, until no node leads two more than
another, while clients keep writing to every table through every node and see no failed
request.
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
        found[node] = sorted(name for name, g in groups.items() if name.startswith("lead") and g["role"] == "leader")
    return found


def test_a_restarted_node_is_handed_leads_until_the_nodes_lead_alike(cluster):
    for n in range(TABLES):
        create_table(cluster.client(1), f"lead{n}")
    writers = Writers(cluster, "lead0")
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

    config = NodeConfig.load(str(cluster.directory / "node-1" / "node.toml"))
    links = NodeLinks({n.id: n.forward for n in config.nodes}, config.cluster_secret(), ROUTER)

    async def hand_over(to: int) -> bool:
        group = cluster.status(1)["groups"]["race"]["group"]
        answer = await links.call(1, "Transfer", {"table": "race", "group": group, "to": to}, hops=0)
        return bool(answer and answer["ok"] and answer["result"]["moved"])

    threads = [threading.Thread(target=increment, args=(node,), daemon=True) for node in (1, 2, 3) for _ in range(2)]
    for t in threads:
        t.start()
    moves = 0
    try:
        loop = asyncio.new_event_loop()
        deadline = time.monotonic() + 60
        while moves < HAND_OVERS and not errors:
            assert time.monotonic() < deadline, (moves, cluster.describe())
            leader = cluster.leader_of("race")
            moves += loop.run_until_complete(hand_over(leader % 3 + 1))
            time.sleep(0.05)
        loop.run_until_complete(links.close())
        loop.close()
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
