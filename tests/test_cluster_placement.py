"""Tables placed on three of six nodes: `dynstore up --nodes 6`, two nodes in each of three zones.

Each table's partitions have their replicas on three nodes, one per zone, and the tables are
spread over the six; a node keeps files only for the tables placed on it. Every node answers
for every table, sending a request for a table placed elsewhere to a node that holds it, so
a client reads its own writes through any endpoint. A table placed on three nodes splits
there; two busy tables that share a node are moved apart, each to its own node of the zone,
while clients write to them; and a kill -9 of the node leading a table, while clients write
through nodes that do not hold it, loses no acknowledged write. The tests share one cluster,
in this order: the kill comes last.
"""
import itertools
import os
import time

import pytest

from dynstore.router.cluster import place
from test_cluster import Cluster, Writers, assert_all_present, create_table, item, kill_leader

NODES = 6
SPLIT_BYTES = 12_000


def zone(node: int) -> str:
    return "zone-" + "abc"[(node - 1) % 3]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("placement") / "data", "--split-bytes", str(SPLIT_BYTES), nodes=NODES)
    c.start()
    yield c
    c.stop()


@pytest.mark.parametrize("zones", [
    {1: "a", 2: "b", 3: "c", 4: "a", 5: "b", 6: "c"},
    {1: "a", 2: "a", 3: "b", 4: "b", 5: "c", 6: "c", 7: "c"},
    {1: "a", 2: "b", 3: "a", 4: "b"},  # two zones: the third replica goes to the emptiest node
])
def test_placement_takes_a_node_per_zone_and_evens_out(zones):
    tables_on: dict[int, int] = {}
    for _ in range(60):
        chosen = place(zones, tables_on)
        assert len(chosen) == 3 == len(set(chosen))
        assert len({zones[n] for n in chosen}) == min(3, len(set(zones.values())))
        for node in chosen:
            tables_on[node] = tables_on.get(node, 0) + 1
        # No node of a zone is more than one table ahead of another node of that zone.
        for z in set(zones.values()):
            counts = [tables_on.get(n, 0) for n in zones if zones[n] == z]
            assert max(counts) - min(counts) <= 1, (zones, tables_on)
    assert place({1: "a", 2: "b"}, {}) == [1, 2]  # a cluster this small holds every table everywhere


def holders(cluster: Cluster, table: str) -> dict[int, list[dict]]:
    """node -> its status entries of the table's partitions, for the nodes that hold any."""
    found = {}
    for node in cluster.endpoints:
        entries = [p for p in cluster.status(node)["partitions"] if p["table"] == table]
        if entries:
            found[node] = entries
    return found


def create_placed(cluster: Cluster, node: int, table: str) -> list[int]:
    """Create ``table`` through ``node``; the nodes holding it, once three report it."""
    create_table(cluster.client(node), table)
    deadline = time.monotonic() + 20
    while len(holders(cluster, table)) != 3:
        assert time.monotonic() < deadline, (table, holders(cluster, table), cluster.describe())
        time.sleep(0.1)
    return sorted(holders(cluster, table))


def table_id(cluster: Cluster, table: str) -> str:
    return cluster.client(1).describe_table(TableName=table)["Table"]["TableId"]


def test_tables_are_placed_one_per_zone_and_served_through_every_node(cluster):
    tables = [f"placed{n}" for n in range(4)]
    placement = {table: create_placed(cluster, 1 + n % NODES, table) for n, table in enumerate(tables)}
    for table in tables:
        assert sorted(zone(n) for n in placement[table]) == ["zone-a", "zone-b", "zone-c"], placement
        for entries in holders(cluster, table).values():
            assert all(sorted(p["replicas"]) == [f"node-{n}" for n in placement[table]] for p in entries)
    # Four tables of three replicas on six nodes: two on each node.
    per_node = {node: sum(node in hosts for hosts in placement.values()) for node in range(1, NODES + 1)}
    assert set(per_node.values()) == {2}, placement
    for table, hosts in placement.items():
        tid = table_id(cluster, table)
        for node in range(1, NODES + 1):
            here = os.path.exists(os.path.join(cluster.directory, f"node-{node}", "data", "tables", tid))
            assert here == (node in hosts), (table, node, hosts)

    clients = {node: cluster.client(node) for node in cluster.endpoints}
    for node, client in clients.items():
        for table in tables:
            client.put_item(TableName=table, Item=item(f"via-{node}", 1, v=f"{table}@{node}"))
            # An eventually consistent read through the same node sees the write at once, placed
            # there or not.
            got = client.get_item(TableName=table, Key={"pk": {"S": f"via-{node}"}, "sk": {"N": "1"}})
            assert got["Item"]["v"] == {"S": f"{table}@{node}"}, (node, table, placement[table])
    for node, client in clients.items():
        for table in tables:
            assert client.scan(TableName=table, ConsistentRead=True)["Count"] == NODES
            q = client.query(TableName=table, KeyConditionExpression="pk = :p", ConsistentRead=True,
                             ExpressionAttributeValues={":p": {"S": f"via-{NODES + 1 - node}"}})
            assert q["Count"] == 1
            assert client.describe_table(TableName=table)["Table"]["ItemCount"] == NODES
    # A conditional write decides at the table's leader, whichever node takes it.
    outsider = next(n for n in clients if n not in placement["placed0"])
    with pytest.raises(clients[outsider].exceptions.ConditionalCheckFailedException):
        clients[outsider].put_item(TableName="placed0", Item=item("via-1", 1),
                                   ConditionExpression="attribute_not_exists(pk)")
    # A batch over tables placed on different nodes: each part goes to its own.
    clients[outsider].batch_write_item(RequestItems={
        table: [{"PutRequest": {"Item": item("batch", 7)}}] for table in tables})
    got = clients[outsider].batch_get_item(RequestItems={
        table: {"Keys": [{"pk": {"S": "batch"}, "sk": {"N": "7"}}], "ConsistentRead": True} for table in tables})
    assert sorted(got["Responses"]) == sorted(tables) and all(len(v) == 1 for v in got["Responses"].values())
    # UpdateTable and DeleteTable run at the metadata leader, which holds two of the four tables:
    # their answers count each table's items wherever it is placed, as a node holding it knows
    # them (the batch's item reaches that node's replicas within a heartbeat or so).
    for table in tables:
        deadline = time.monotonic() + 5
        while True:
            described = clients[1].update_table(TableName=table, DeletionProtectionEnabled=False)["TableDescription"]
            assert described["ItemCount"] >= NODES and described["TableSizeBytes"] > 0, (table, placement[table])
            if described["ItemCount"] == NODES + 1:
                break
            assert time.monotonic() < deadline, (table, placement[table], described["ItemCount"])
            time.sleep(0.1)
    # DeleteTable through a node that does not hold the table: its nodes remove their files.
    tid = table_id(cluster, "placed3")
    outsider = next(n for n in clients if n not in placement["placed3"])
    assert clients[outsider].delete_table(TableName="placed3")["TableDescription"]["ItemCount"] == NODES + 1
    deadline = time.monotonic() + 10
    for node in placement["placed3"]:
        while os.path.exists(os.path.join(cluster.directory, f"node-{node}", "data", "tables", tid)):
            assert time.monotonic() < deadline, cluster.describe()
            time.sleep(0.05)


def test_a_table_splits_on_its_own_nodes(cluster):
    hosts = create_placed(cluster, 2, "growing")
    outsiders = [n for n in cluster.endpoints if n not in hosts]
    client = cluster.client(outsiders[0])
    acked = {}
    for n in range(240):  # ~6 split sizes of items, written through a node that does not hold the table
        pk = f"k{n:04d}"
        client.put_item(TableName="growing", Item=item(pk, 0, v=pk + "y" * 200))
        acked[pk] = (pk + "y" * 200, 0.0)
    deadline = time.monotonic() + 30
    while True:
        found = holders(cluster, "growing")
        counts = {node: len(entries) for node, entries in found.items()}
        if sorted(found) == hosts and min(counts.values()) >= 3 and len(set(counts.values())) == 1:
            break
        assert time.monotonic() < deadline, (counts, cluster.describe())
        time.sleep(0.2)
    for entries in found.values():
        assert all(sorted(p["replicas"]) == [f"node-{n}" for n in hosts] for p in entries)
    for node in outsiders + hosts:
        assert_all_present(cluster.client(node), "growing", acked, consistent=True)


def test_busy_tables_on_one_node_are_moved_apart_while_clients_write(cluster):
    hosts = {table: create_placed(cluster, 1, table) for table in ("hot0", "hot1", "hot2", "hot3")}
    # Four tables on the two nodes of each zone: two of them share a node.
    busy = next(pair for pair in itertools.combinations(hosts, 2) if set(hosts[pair[0]]) & set(hosts[pair[1]]))
    writers = [Writers(cluster, table, count=2, nodes=range(1, NODES + 1)) for table in busy]
    try:
        deadline = time.monotonic() + 90
        while True:
            now = [sorted(holders(cluster, table)) for table in busy]
            if all(len(h) == 3 for h in now) and not set(now[0]) & set(now[1]):
                break
            assert time.monotonic() < deadline, (hosts, now, cluster.describe())
            time.sleep(0.5)
        for w in writers:
            w.wait_acked(len(w.acked) + 50)
    finally:
        for w in writers:
            w.join()
    for w in writers:
        assert w.errors == 0, w.last_error
        for node in cluster.endpoints:
            assert_all_present(cluster.client(node), w.table, w.acked, consistent=True)


def test_node_holding_a_table_killed_while_clients_write_through_others(cluster):
    hosts = create_placed(cluster, 3, "events")
    outsiders = [n for n in cluster.endpoints if n not in hosts]
    writers = Writers(cluster, "events", nodes=outsiders)
    try:
        writers.wait_acked(50)
        assert kill_leader(cluster, writers, "events") in hosts
    finally:
        writers.join()
    for node in cluster.endpoints:
        assert_all_present(cluster.client(node), "events", writers.acked, consistent=True)
