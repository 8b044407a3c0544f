"""`dynstore up --nodes 3` as real processes: every node an endpoint, writes surviving kill -9.

Each test starts the supervisor (three node processes, one replica of every partition and of
the metadata partition on each) on free ports, talks to it with boto3 through every node's
endpoint, and kills real processes with SIGKILL. Bounds stated here:

- after the node leading a table is killed, a write begun after the kill is acknowledged
  within WRITES_AGAIN_WITHIN_S (10 s);
- no acknowledged write is lost: once the supervisor has restarted the node, all three
  replicas hold every acknowledged write, and after a kill -9 of the whole process tree
  and a new `dynstore up` on the same data directory every acknowledged write is read back.

``--long`` kills the leading node four times in a row instead of once.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
import orjson
import pytest
from botocore.config import Config

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.replication.group_process import free_ports

WRITES_AGAIN_WITHIN_S = 10.0
_SERVES = re.compile(rb"node (\d+) \(zone-[a-z]\) serves DynamoDB at (http://\S+)")


def client_of(url: str):
    """boto3 on one endpoint, with retries off: every failed request shows."""
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=DEVELOPMENT_ACCESS_KEY_ID,
                        aws_secret_access_key=DEVELOPMENT_SECRET_ACCESS_KEY, config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=15))


def status_of(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/status", timeout=5) as response:
        return orjson.loads(response.read())


def node_children(parent: int) -> dict[int, int]:
    """node (or member) id -> pid of each node process ``parent`` supervises now, found by the
    ``<dir>/node-<id>/node.toml`` it was started with."""
    pids = {}
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        children = [int(p) for p in f.read().split()]
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--config" not in args:
            continue  # forked a moment ago: not yet the node program
        pids[int(re.search(rb"node-(\d+)/node\.toml", args[args.index(b"--config") + 1]).group(1))] = pid
    return pids


class Cluster:
    """`dynstore up --nodes N` (3 unless told) on ``directory``, in a process group of its own."""

    def __init__(self, directory, *extra_args: str, nodes: int = 3):
        self.directory = directory
        self.extra_args = extra_args
        self.nodes = nodes
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None
        self.endpoints: dict[int, str] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from dynstore.cli import main; main()", "up", "--nodes", str(self.nodes), "--port",
             str(self.port), "--data-dir", str(self.directory), *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        output = b""
        deadline = time.monotonic() + 60
        while b"press Ctrl-C" not in output:
            line = self.proc.stdout.readline()
            assert line and time.monotonic() < deadline, output + line + self.logs().encode()
            output += line
        self.endpoints = {int(m.group(1)): m.group(2).decode() for m in _SERVES.finditer(output)}
        assert sorted(self.endpoints) == list(range(1, self.nodes + 1)), output
        assert self.endpoints[1].endswith(f":{self.port}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def client(self, node: int):
        return client_of(self.endpoints[node])

    def status(self, node: int) -> dict:
        return status_of(self.endpoints[node])

    def node_pids(self) -> dict[int, int]:
        """node id -> pid of the node processes the supervisor runs now."""
        return node_children(self.proc.pid)

    def kill_tree(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_tree()

    def logs(self, tail_chars: int = 3000) -> str:
        out = []
        for node in range(1, self.nodes + 1):
            path = os.path.join(self.directory, f"node-{node}", "node.log")
            if os.path.exists(path):
                with open(path) as f:
                    out.append(f"--- node {node} ---\n" + f.read()[-tail_chars:])
        return "\n".join(out)

    def describe(self) -> str:
        """Each node's replicas (role, leader, commit, applied), and the node logs, for a failure."""
        out = []
        for node in sorted(self.endpoints):
            try:
                groups = self.status(node)["groups"]
            except OSError as exc:
                out.append(f"node {node}: {exc}")
                continue
            out.append(f"node {node}: " + ", ".join(
                f"{name}: {g['role']} leader={g['leader']} commit={g['commit']} applied={g['applied']} "
                f"lease={g['lease_valid']} members={[m for m, _ in g['members']]}" for name, g in groups.items()))
        return "\n".join(out) + "\n" + self.logs()

    def leader_of(self, table: str, within: float = 10) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for node in self.endpoints:
                try:
                    group = self.status(node)["groups"].get(table)
                except OSError:
                    continue
                if group and group["lease_valid"]:
                    return node
            time.sleep(0.05)
        raise AssertionError(f"no leader of {table}\n{self.logs()}")

    def wait_converged(self, table: str, within: float = 20) -> None:
        """On every node the same partitions of the table, each replica having applied every
        slot its group had committed anywhere when the wait began. The canary writes to every
        partition all the time, so the replicas of a group rarely stand at one slot at once;
        what was acknowledged before the wait is committed by then, and so applied after it."""
        deadline = time.monotonic() + within
        target = None
        while True:
            try:
                groups = [{name: (g["commit"], g["applied"]) for name, g in self.status(node)["groups"].items()
                           if name == table or name.startswith(table + "#")} for node in (1, 2, 3)]
            except OSError:
                groups = [None]
            if all(groups) and all(g.keys() == groups[0].keys() for g in groups):
                if target is None or target.keys() != groups[0].keys():
                    target = {name: max(g[name][0] for g in groups) for name in groups[0]}
                elif all(g[name][1] >= slot for g in groups for name, slot in target.items()):
                    return
            assert time.monotonic() < deadline, f"replicas did not converge: {groups}\n{self.logs()}"
            time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data")
    c.start()
    yield c
    c.stop()


def create_table(client, name: str) -> None:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                              {"AttributeName": "sk", "AttributeType": "N"}])


def item(pk: str, sk: int, **attrs) -> dict:
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}, **{k: {"S": v} for k, v in attrs.items()}}


def test_every_node_serves_tables_and_items(cluster):
    clients = {node: cluster.client(node) for node in (1, 2, 3)}
    create_table(clients[1], "orders")
    for node, client in clients.items():  # the catalog change is visible through every node at once
        assert client.describe_table(TableName="orders")["Table"]["TableStatus"] == "ACTIVE"
    for node, client in clients.items():
        for sk in range(5):
            client.put_item(TableName="orders", Item=item(f"from-{node}", sk, v=f"{node}:{sk}"))
    for node, client in clients.items():
        got = client.get_item(TableName="orders", Key={"pk": {"S": "from-2"}, "sk": {"N": "3"}}, ConsistentRead=True)
        assert got["Item"]["v"] == {"S": "2:3"}
        q = client.query(TableName="orders", KeyConditionExpression="pk = :p AND sk >= :s", ConsistentRead=True,
                         ExpressionAttributeValues={":p": {"S": "from-3"}, ":s": {"N": "2"}})
        assert [i["sk"]["N"] for i in q["Items"]] == ["2", "3", "4"]
        assert client.scan(TableName="orders", ConsistentRead=True)["Count"] == 15
    # Eventually consistent reads are served by each node's own replica, which catches up.
    cluster.wait_converged("orders")
    for client in clients.values():
        assert client.scan(TableName="orders")["Count"] == 15
    # A conditional write decides at the leader, whichever node takes it.
    with pytest.raises(clients[3].exceptions.ConditionalCheckFailedException):
        clients[3].put_item(TableName="orders", Item=item("from-1", 0), ConditionExpression="attribute_not_exists(pk)")
    clients[2].update_item(TableName="orders", Key={"pk": {"S": "from-1"}, "sk": {"N": "0"}},
                           UpdateExpression="SET n = if_not_exists(n, :z) + :one",
                           ExpressionAttributeValues={":z": {"N": "0"}, ":one": {"N": "1"}})
    clients[3].update_item(TableName="orders", Key={"pk": {"S": "from-1"}, "sk": {"N": "0"}},
                           UpdateExpression="SET n = n + :one", ExpressionAttributeValues={":one": {"N": "1"}})
    got = clients[1].get_item(TableName="orders", Key={"pk": {"S": "from-1"}, "sk": {"N": "0"}}, ConsistentRead=True)
    assert got["Item"]["n"] == {"N": "2"}
    # An eventually consistent read through a node that does not lead the table sees the write
    # just acknowledged through that node, and without waiting for the leader's next heartbeat
    # (HEARTBEAT_INTERVAL_S, 100 ms): the leader's answer told the node's replica the write is chosen.
    for node in set(clients) - {cluster.leader_of("orders")}:
        waits = []
        for n in range(20):
            clients[node].put_item(TableName="orders", Item=item("ryw", n, v=f"{node}:{n}"))
            started = time.monotonic()
            got = clients[node].get_item(TableName="orders", Key={"pk": {"S": "ryw"}, "sk": {"N": str(n)}})
            waits.append(time.monotonic() - started)
            assert got["Item"]["v"] == {"S": f"{node}:{n}"}
        assert sorted(waits)[len(waits) // 2] < 0.04, (node, waits)
    # A single-item request goes by its key to the leader, which validates the rest of it:
    # every node answers a bad one as the leader does.
    key = {"pk": {"S": "from-1"}, "sk": {"N": "0"}}
    bad = [("put_item", {"Item": dict(item("from-1", 0), tags={"SS": []})}),
           ("put_item", {"Item": item("from-1", 0), "ConditionExpression": "attribute_exists(#n)"}),
           ("update_item", {"Key": key, "UpdateExpression": "SET n = n +"}),
           ("update_item", {"Key": key, "UpdateExpression": "SET n = :v",
                            "ExpressionAttributeValues": {":w": {"N": "1"}}}),
           ("delete_item", {"Key": {"pk": {"S": "from-1"}, "sk": {"S": "0"}}}),
           ("get_item", {"Key": dict(key, extra={"S": "x"}), "ConsistentRead": True})]
    for call, args in bad:
        answers = set()
        for client in clients.values():
            with pytest.raises(client.exceptions.ClientError) as raised:
                getattr(client, call)(TableName="orders", **args)
            answers.add((raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]))
        assert len(answers) == 1 and answers.pop()[0] == "ValidationException", (call, args, answers)
    # A batch over two tables is split by table and each part goes to its own leader.
    create_table(clients[2], "returns")
    clients[3].batch_write_item(RequestItems={
        "orders": [{"PutRequest": {"Item": item("batch", 1)}}],
        "returns": [{"PutRequest": {"Item": item("batch", 2)}}]})
    got = clients[1].batch_get_item(RequestItems={
        "orders": {"Keys": [{"pk": {"S": "batch"}, "sk": {"N": "1"}}], "ConsistentRead": True},
        "returns": {"Keys": [{"pk": {"S": "batch"}, "sk": {"N": "2"}}], "ConsistentRead": True}})
    assert len(got["Responses"]["orders"]) == 1 and len(got["Responses"]["returns"]) == 1
    assert sorted(clients[3].list_tables()["TableNames"]) == ["orders", "returns"]
    # DeleteTable answers DELETING; each node's catalog drops the table within a heartbeat or so.
    assert clients[2].delete_table(TableName="returns")["TableDescription"]["TableStatus"] == "DELETING"
    deadline = time.monotonic() + 2
    for client in clients.values():
        while not _gone(client, "returns"):
            assert time.monotonic() < deadline, cluster.describe()
            time.sleep(0.02)
    assert clients[1].list_tables()["TableNames"] == ["orders"]


def _gone(client, table: str) -> bool:
    """The node answers ResourceNotFoundException to a strong read and to DescribeTable."""
    for call in (lambda: client.describe_table(TableName=table),
                 lambda: client.get_item(TableName=table, Key={"pk": {"S": "batch"}, "sk": {"N": "2"}},
                                         ConsistentRead=True)):
        try:
            call()
        except client.exceptions.ResourceNotFoundException:
            continue
        return False
    return True


class Writers:
    """Threads writing unique items through ``nodes`` in turn until stopped; ``acked`` maps
    each acknowledged item's pk to (value, send time)."""

    def __init__(self, cluster: Cluster, table: str, count: int = 3, nodes=(1, 2, 3)):
        self.cluster = cluster
        self.table = table
        self.nodes = list(nodes)
        self.acked: dict[str, tuple[str, float]] = {}
        self.errors = 0
        self.last_error = None  # (node, seconds it took, exception) of the newest failed write
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(count)]
        for t in self.threads:
            t.start()

    def _write(self, w: int) -> None:
        clients = {node: self.cluster.client(node) for node in self.nodes}
        turn, n = w % len(self.nodes), 0
        while not self.stop.is_set():
            pk = f"w{w}-{n:06d}"
            started = time.monotonic()
            node = self.nodes[turn]
            try:
                clients[node].put_item(TableName=self.table, Item=item(pk, 0, v=f"value of {pk}"))
            except Exception as exc:
                self.errors += 1
                self.last_error = (node, time.monotonic() - started, exc)
                turn = (turn + 1) % len(self.nodes)  # that node is down or lost its leader: go through the next
                time.sleep(0.02)
                continue
            self.acked[pk] = (f"value of {pk}", started)
            n += 1

    def wait_acked(self, count: int, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < count:
            assert time.monotonic() < deadline, \
                f"{len(self.acked)} writes acknowledged, {self.errors} errors, last: {self.last_error!r}\n" \
                f"{self.cluster.describe()}"
            time.sleep(0.02)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def assert_all_present(client, table: str, acked: dict, *, consistent: bool) -> None:
    found = {}
    kwargs = {"TableName": table, "ConsistentRead": consistent}
    while True:
        page = client.scan(**kwargs)
        found.update({i["pk"]["S"]: i["v"]["S"] for i in page["Items"]})
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    lost = [pk for pk, (value, _) in acked.items() if found.get(pk) != value]
    assert not lost, f"{len(lost)} acknowledged writes missing, e.g. {lost[:5]}"
    if not consistent:
        # Converged replicas: the partition's statistics record, rewritten by each leader in
        # turn, counts every item (DescribeTable reads it from this node's replica).
        assert client.describe_table(TableName=table)["Table"]["ItemCount"] == len(found)


def kill_leader(cluster: Cluster, writers: Writers, table: str) -> int:
    """kill -9 the node leading ``table`` while ``writers`` write; returns its id once a write
    begun after the kill was acknowledged (within WRITES_AGAIN_WITHIN_S), the supervisor has
    started the node again, and 30 more writes were acknowledged while it rejoins."""
    leader = cluster.leader_of(table)
    pid = cluster.node_pids()[leader]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while not any(started > killed_at for _, started in list(writers.acked.values())):
        assert time.monotonic() - killed_at < WRITES_AGAIN_WITHIN_S, \
            f"{writers.errors} errors, last: {writers.last_error!r}\n{cluster.describe()}"
        time.sleep(0.02)
    deadline = time.monotonic() + 30
    while cluster.node_pids().get(leader) in (None, pid):
        assert time.monotonic() < deadline, cluster.describe()
        time.sleep(0.05)
    writers.wait_acked(len(writers.acked) + 30, within=30)
    return leader


@pytest.mark.parametrize("rounds", [1, pytest.param(4, marks=pytest.mark.long)])
def test_node_killed_while_clients_write(cluster, rounds):
    create_table(cluster.client(1), "events")
    writers = Writers(cluster, "events")
    try:
        for _ in range(rounds):
            writers.wait_acked(len(writers.acked) + 50)
            kill_leader(cluster, writers, "events")
    finally:
        writers.join()
    cluster.wait_converged("events")
    for node in (1, 2, 3):  # each node's own replica, read without going to the leader
        assert_all_present(cluster.client(node), "events", writers.acked, consistent=False)
    assert len(writers.acked) >= 80 * rounds


def test_whole_cluster_killed_and_started_again(cluster):
    create_table(cluster.client(2), "ledger")
    writers = Writers(cluster, "ledger")
    try:
        writers.wait_acked(100)
        cluster.kill_tree()  # supervisor and every node at once, writes in flight
    finally:
        writers.join()
    acked = dict(writers.acked)
    cluster.start()
    for node in (1, 2, 3):
        assert_all_present(cluster.client(node), "ledger", acked, consistent=True)
    cluster.client(3).put_item(TableName="ledger", Item=item("after", 0, v="restart"))
    cluster.wait_converged("ledger")
    for node in (1, 2, 3):
        assert_all_present(cluster.client(node), "ledger", acked, consistent=False)
