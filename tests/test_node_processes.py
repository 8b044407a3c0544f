"""`dynstore-node` with several processes per node: three nodes of two processes each, each
node started from its own node.toml as it would be on its own host.

Each process is a member of the cluster in its node's zone, with its own endpoint. Tables are
placed on three members in three zones and spread over the processes of each node. A process
killed with kill -9 is started again by its node while clients write through the others, and
no acknowledged write is lost; SIGTERM to a node stops every process of it.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dynstore.node.config import NodeAddress, NodeConfig, member_id
from test_cluster import WRITES_AGAIN_WITHIN_S, client_of, create_table, item, node_children, status_of

PROCESSES = 2
ZONES = {1: "zone-a", 2: "zone-b", 3: "zone-c"}


def free_run(count: int) -> int:
    """A port p with p .. p + count - 1 free on the loopback address at the time of the call."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


class Node:
    def __init__(self, directory, node_id: int, config: NodeConfig):
        self.id = node_id
        self.path = os.path.join(directory, f"node-{node_id}.toml")
        with open(self.path, "w") as f:
            f.write(config.dump())
        self.proc = subprocess.Popen([sys.executable, "-m", "dynstore.node.main", "--config", self.path],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_serving(self) -> None:
        output, deadline = b"", time.monotonic() + 90
        while b"press Ctrl-C" not in output:
            line = self.proc.stdout.readline()
            assert line and time.monotonic() < deadline, output + line
            output += line
        assert output.count(b"serves DynamoDB at") == PROCESSES, output

    def process_pids(self) -> dict[int, int]:
        """member id -> pid of each process the node runs now."""
        return node_children(self.proc.pid)


@pytest.fixture
def nodes(tmp_path):
    secret = tmp_path / "cluster.secret"
    secret.write_text(os.urandom(32).hex())
    addresses = tuple(NodeAddress(i, ZONES[i], ("127.0.0.1", free_run(PROCESSES)), ("127.0.0.1", free_run(PROCESSES)),
                                  ("127.0.0.1", free_run(PROCESSES)), processes=PROCESSES) for i in ZONES)
    running = [Node(tmp_path, i, NodeConfig(i, str(tmp_path / f"node-{i}"), addresses, cluster_secret_file=str(secret),
                                            canary_interval_s=0.5))
               for i in ZONES]
    try:
        for node in running:
            node.wait_serving()
        yield running, {m.id: f"http://127.0.0.1:{m.endpoint[1]}" for a in addresses for m in a.members()}
    finally:
        members = [pid for node in running if node.proc.poll() is None for pid in node.process_pids().values()]
        for node in running:
            node.proc.send_signal(signal.SIGTERM)
        for node in running:
            try:
                assert node.proc.wait(30) == 0
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                raise
        for pid in members:  # every process of the node stopped with it
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def holders(endpoints: dict[int, str], table: str) -> dict[int, dict]:
    """member -> its status entry of the table's first partition, for the members holding it."""
    found = {}
    for member, url in endpoints.items():
        try:
            entries = [p for p in status_of(url)["partitions"] if p["table"] == table]
        except OSError:
            continue
        if entries:
            found[member] = entries[0]
    return found


def test_processes_of_each_node_share_its_tables_and_survive_kill(nodes):
    running, endpoints = nodes
    assert sorted(endpoints) == sorted(member_id(i, k) for i in ZONES for k in range(PROCESSES))
    shown = status_of(endpoints[1])["nodes"]
    assert sorted((n["id"], n["zone"]) for n in shown) == sorted(
        (f"node-{member_id(i, k)}", ZONES[i]) for i in ZONES for k in range(PROCESSES))
    tables = [f"tab{n}" for n in range(4)]
    members = list(endpoints)
    for n, table in enumerate(tables):
        create_table(client_of(endpoints[members[n % len(members)]]), table)
    placement = {}
    deadline = time.monotonic() + 30
    for table in tables:
        while len(holders(endpoints, table)) != 3:
            assert time.monotonic() < deadline, (table, holders(endpoints, table))
            time.sleep(0.1)
        placement[table] = sorted(holders(endpoints, table))
        assert sorted(ZONES[m % 1000] for m in placement[table]) == sorted(ZONES.values()), placement
    # Four tables of three replicas over six processes: every process of every node holds some.
    assert {m for hosts in placement.values() for m in hosts} == set(endpoints), placement
    for member, url in endpoints.items():
        for table in tables:
            client_of(url).put_item(TableName=table, Item=item(f"via-{member}", 1, v=table))
    for url in endpoints.values():
        for table in tables:
            assert client_of(url).scan(TableName=table, ConsistentRead=True)["Count"] == len(endpoints)

    # kill -9 the process leading tab0; its node starts it again while clients write through the others.
    deadline = time.monotonic() + 10
    while True:
        leaders = [m for m, p in holders(endpoints, "tab0").items() if p["role"] == "leader" and p["lease_valid"]]
        if leaders:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    leader = leaders[0]
    node = next(n for n in running if n.id == leader % 1000)
    pid = node.process_pids()[leader]
    others = [m for m in endpoints if m != leader]
    acked, n = {}, 0
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while True:
        pk = f"after-{n}"
        try:
            client_of(endpoints[others[n % len(others)]]).put_item(TableName="tab0", Item=item(pk, 2, v=pk))
            acked[pk] = pk
            break
        except Exception:  # noqa: BLE001 - retried until the bound
            assert time.monotonic() - killed_at < WRITES_AGAIN_WITHIN_S
            n += 1
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while node.process_pids().get(leader) in (None, pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for n in range(20):
        pk = f"more-{n}"
        client_of(endpoints[others[n % len(others)]]).put_item(TableName="tab0", Item=item(pk, 2, v=pk))
        acked[pk] = pk
    deadline = time.monotonic() + 30
    while True:  # the restarted process serves again, with every acknowledged write
        try:
            got = client_of(endpoints[leader]).scan(TableName="tab0", ConsistentRead=True)
            found = {i["pk"]["S"] for i in got["Items"]}
            if set(acked) <= found:
                break
        except Exception:  # noqa: BLE001 - still starting
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_node_of_one_process_is_not_restarted_as_several(tmp_path):
    """Replicas kept by a node of one process are not silently left behind when its entry
    starts asking for several processes: the node refuses to start."""
    (tmp_path / "node-1" / "meta").mkdir(parents=True)
    addresses = tuple(NodeAddress(i, ZONES[i], ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3), processes=2)
                      for i in ZONES)
    path = tmp_path / "node-1.toml"
    path.write_text(NodeConfig(1, str(tmp_path / "node-1"), addresses).dump())
    done = subprocess.run([sys.executable, "-m", "dynstore.node.main", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "processes = 1" in done.stderr, done
    assert sorted(os.listdir(tmp_path / "node-1")) == ["meta"]  # nothing started beside it
