"""Strongly consistent reads and writes of a `dynstore up --nodes 3` cluster are linearizable
while its partitions split under them and a node is killed with SIGKILL.

Clients on threads read (ConsistentRead GetItem), overwrite (PutItem) and append to
(UpdateItem list_append) a few registers through every node, with retries off; a filler
writer grows the table past the small split size so that the registers' partitions split
during the run. Every call and return is timed on one clock; a write that fails without a
definite answer may or may not have taken effect (its return is unknown), a read that fails
is left out. The history is then checked per register by the linearizability checker
(dynstore/replication/linearizability.py).
"""
import os
import random
import signal
import threading
import time

import pytest

from dynstore.replication.linearizability import Op, check
from test_cluster import Cluster, create_table, item

REGISTERS = [f"register-{i}" for i in range(4)]
DEFINITE = ("ConditionalCheckFailedException", "ValidationException", "ResourceNotFoundException")
# No connection to the node could be made (the killed one): the request was never sent. Kept in
# the history, each would be a write that may take effect at any later time, and the checker's
# search grows with every one of them.
NOT_SENT = ("EndpointConnectionError",)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data", "--split-bytes", "10000")
    c.start()
    yield c
    c.stop()


def _key(register: str) -> dict:
    return {"pk": {"S": register}, "sk": {"N": "0"}}


class Registers:
    """Client threads reading, overwriting and appending to REGISTERS through every node of
    ``cluster``, and a filler writer through ``filler_node`` growing the table; ``history``
    holds every operation, ``errors`` the definite errors no operation here should get."""

    def __init__(self, cluster: Cluster, table: str, clients: int = 5, filler_node: int | None = 2):
        self.cluster, self.table = cluster, table
        self.history: list[Op] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(seed,), daemon=True) for seed in range(clients)]
        if filler_node is not None:
            self.threads.append(threading.Thread(target=self._filler, args=(filler_node,), daemon=True))
        for t in self.threads:
            t.start()

    def _record(self, op: Op) -> None:
        with self._lock:
            self.history.append(op)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        clients = {node: self.cluster.client(node) for node in sorted(self.cluster.endpoints)}
        n = 0
        while not self.stop.is_set():
            client = clients[rng.choice(sorted(clients))]
            register = rng.choice(REGISTERS)
            kind = rng.choice(("get", "get", "put", "append"))
            value = f"{seed}.{n};"
            n += 1
            call = time.monotonic()
            try:
                if kind == "get":
                    got = client.get_item(TableName=self.table, Key=_key(register), ConsistentRead=True)
                    parts = got.get("Item", {}).get("v")
                    value = None if parts is None else "".join(p["S"] for p in parts["L"])
                elif kind == "put":
                    client.put_item(TableName=self.table, Item={**_key(register), "v": {"L": [{"S": value}]}})
                else:
                    client.update_item(TableName=self.table, Key=_key(register),
                                       UpdateExpression="SET v = list_append(if_not_exists(v, :empty), :x)",
                                       ExpressionAttributeValues={":empty": {"L": []}, ":x": {"L": [{"S": value}]}})
            except Exception as exc:  # noqa: BLE001 - classified below
                name = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", type(exc).__name__)
                if name in DEFINITE:
                    self.errors.append(f"{kind} {register}: {exc!r}")
                if kind != "get" and name not in NOT_SENT:
                    self._record(Op(kind, register, value, call, None))  # it may or may not have happened
                time.sleep(0.02)
                continue
            self._record(Op(kind, register, value, call, time.monotonic()))

    def _filler(self, node: int) -> None:
        client = self.cluster.client(node)
        n = 0
        while not self.stop.is_set():
            try:
                client.put_item(TableName=self.table, Item=item(f"filler-{n:05d}", 0, pad="x" * 200))
                n += 1
            except Exception:  # noqa: BLE001 - only there to grow the table
                time.sleep(0.05)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def assert_linearizable(self, answered_min: int = 200) -> None:
        assert not self.errors, self.errors[:5]
        answered = [op for op in self.history if op.ret is not None]
        assert len(answered) > answered_min and any(op.kind == "get" and op.value for op in answered)
        result = check(self.history, budget_per_key=2_000_000)
        if not result.ok:
            ops = sorted((op for op in self.history if op.key == result.key), key=lambda op: op.call)
            start = ops[0].call
            lines = [f"{op.call - start:9.4f} {'?' if op.ret is None else f'{op.ret - start:9.4f}'} {op.kind:6} "
                     f"{op.value}" for op in ops]
            raise AssertionError(f"register {result.key} is not linearizable; its history (call, return, "
                                 f"operation, value):\n" + "\n".join(lines))
        assert result.unknown == 0


def test_registers_are_linearizable_across_splits_and_a_node_kill(cluster):
    create_table(cluster.client(1), "registers")
    registers = Registers(cluster, "registers")
    try:
        time.sleep(6)
        victim = cluster.leader_of("registers")
        os.kill(cluster.node_pids()[victim], signal.SIGKILL)
        time.sleep(10)
    finally:
        registers.join()
    partitions = [p for p in cluster.status(victim % 3 + 1)["partitions"] if p["table"] == "registers"]
    assert len(partitions) >= 2, partitions
    registers.assert_linearizable()
