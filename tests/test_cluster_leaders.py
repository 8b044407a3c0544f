"""Leaders even out: `dynstore up` with three nodes and six tables.

Writes and strongly consistent reads run at a partition's leader. A node killed and started
again leads nothing at first (the others won every election while it was gone), so the
control plane hands it leads, one partition a round, until no node leads two more than
another, while clients keep writing to every table through every node and see no failed
request.
"""
import time

from test_cluster import Writers, assert_all_present, cluster, create_table, kill_leader  # noqa: F401  (a fixture)

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
