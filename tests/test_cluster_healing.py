"""A lost node is replaced: `dynstore up --nodes 6 --heal-after 3`, two nodes per zone.

A node holding a table stops answering (SIGSTOP: the supervisor sees nothing to restart)
while clients write through nodes that do not hold the table. The control plane places the
table on the other node of the lost one's zone, that node's replica of each partition gets a
snapshot of the leader's state and becomes a member, the lost one is removed from every
group, and the table has three full replicas again, all without a person. The new replica
then serves every acknowledged write from its own state. When the lost node comes back it
finds itself out of the placement and removes its files of the table.
"""
import os
import signal
import time

import pytest

from test_cluster import Cluster, Writers, assert_all_present, create_table

NODES = 6
HEAL_AFTER_S = 3
HEALED_WITHIN_S = 40  # heal_after, a control round per membership change, a snapshot per partition


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data", "--split-bytes", "20000", "--heal-after", str(HEAL_AFTER_S), nodes=NODES)
    c.start()
    yield c
    c.stop()


def groups_of(cluster: Cluster, node: int, table: str) -> dict[str, dict]:
    try:
        groups = cluster.status(node)["groups"]
    except OSError:
        return {}
    return {name: g for name, g in groups.items() if name == table or name.startswith(table + "#")}


def summary(node: int, groups: dict[str, dict]) -> list:
    return [(node, name[-6:], g["role"], g["members"], g["joining"], g["applied"], g["commit"])
            for name, g in sorted(groups.items())]


def test_a_lost_node_is_replaced_by_a_new_replica_of_every_partition(cluster):
    create_table(cluster.client(1), "healed")
    deadline = time.monotonic() + 20
    while True:
        hosts = sorted(n for n in cluster.endpoints if groups_of(cluster, n, "healed"))
        if len(hosts) == 3:
            break
        assert time.monotonic() < deadline, cluster.describe()
        time.sleep(0.1)
    outsiders = [n for n in cluster.endpoints if n not in hosts]
    writers = Writers(cluster, "healed", count=2, nodes=outsiders)
    try:
        writers.wait_acked(150)  # a few partitions by now
        leader = cluster.leader_of("healed")
        lost = next(n for n in hosts if n != leader)
        taken = lost + 3 if lost <= 3 else lost - 3  # the other node of its zone
        os.kill(cluster.node_pids()[lost], signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            new_hosts = sorted(set(hosts) - {lost} | {taken})
            while True:
                mine = groups_of(cluster, taken, "healed")
                theirs = {n: groups_of(cluster, n, "healed") for n in new_hosts if n != taken}
                if mine and all(set(g) == set(mine) for g in theirs.values()) and all(
                        sorted(m for m, _ in g["members"]) == new_hosts and not g["joining"] and g["applied"] >= 1
                        for g in list(mine.values()) + [g for gs in theirs.values() for g in gs.values()]):
                    break
                assert time.monotonic() - stopped_at < HEALED_WITHIN_S, (
                    summary(taken, mine), {n: summary(n, g) for n, g in theirs.items()}, writers.errors,
                    writers.last_error, cluster.logs())
                time.sleep(0.2)
            print(f"healed in {time.monotonic() - stopped_at:.1f} s: {len(mine)} partitions on {new_hosts}")
            # Each partition that ran before came as a snapshot; one split off after the new node
            # joined its parent was seeded there by the split itself.
            assert sum(g["snapshots_installed"] for g in mine.values()) >= 1
            writers.wait_acked(len(writers.acked) + 50)  # writes go on with the new replica
        finally:
            os.kill(cluster.node_pids()[lost], signal.SIGCONT)
        # Back, and out of the placement: it removes its replicas of the table.
        table_dir = os.path.join(cluster.directory, f"node-{lost}", "data", "tables",
                                 cluster.client(1).describe_table(TableName="healed")["Table"]["TableId"])
        deadline = time.monotonic() + 20
        while os.path.exists(table_dir):
            assert time.monotonic() < deadline, cluster.describe()
            time.sleep(0.1)
    finally:
        writers.join()
    # The new replica holds everything acknowledged, read from its own state once it caught up.
    deadline = time.monotonic() + 20
    while True:
        try:
            assert_all_present(cluster.client(taken), "healed", writers.acked, consistent=False)
            break
        except AssertionError:
            assert time.monotonic() < deadline, cluster.describe()
            time.sleep(0.2)
    for node in cluster.endpoints:
        assert_all_present(cluster.client(node), "healed", writers.acked, consistent=True)
