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


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "data", "--split-bytes", "10000")
    c.start()
    yield c
    c.stop()


def _key(register: str) -> dict:
    return {"pk": {"S": register}, "sk": {"N": "0"}}


def test_registers_are_linearizable_across_splits_and_a_node_kill(cluster):
    create_table(cluster.client(1), "registers")
    history: list[Op] = []
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []

    def record(op: Op) -> None:
        with lock:
            history.append(op)

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        clients = {node: cluster.client(node) for node in (1, 2, 3)}
        n = 0
        while not stop.is_set():
            client = clients[rng.choice((1, 2, 3))]
            register = rng.choice(REGISTERS)
            kind = rng.choice(("get", "get", "put", "append"))
            value = f"{seed}.{n};"
            n += 1
            call = time.monotonic()
            try:
                if kind == "get":
                    got = client.get_item(TableName="registers", Key=_key(register), ConsistentRead=True)
                    parts = got.get("Item", {}).get("v")
                    value = None if parts is None else "".join(p["S"] for p in parts["L"])
                elif kind == "put":
                    client.put_item(TableName="registers", Item={**_key(register), "v": {"L": [{"S": value}]}})
                else:
                    client.update_item(TableName="registers", Key=_key(register),
                                       UpdateExpression="SET v = list_append(if_not_exists(v, :empty), :x)",
                                       ExpressionAttributeValues={":empty": {"L": []}, ":x": {"L": [{"S": value}]}})
            except Exception as exc:  # noqa: BLE001 - classified below
                name = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
                if name in DEFINITE:
                    errors.append(f"{kind} {register}: {exc!r}")
                if kind != "get":
                    record(Op(kind, register, value, call, None))  # it may or may not have happened
                time.sleep(0.02)
                continue
            record(Op(kind, register, value, call, time.monotonic()))

    def filler() -> None:
        client = cluster.client(2)
        n = 0
        while not stop.is_set():
            try:
                client.put_item(TableName="registers", Item=item(f"filler-{n:05d}", 0, pad="x" * 200))
                n += 1
            except Exception:  # noqa: BLE001 - only there to grow the table
                time.sleep(0.05)

    threads = [threading.Thread(target=client_loop, args=(seed,), daemon=True) for seed in range(5)]
    threads.append(threading.Thread(target=filler, daemon=True))
    for t in threads:
        t.start()
    try:
        time.sleep(6)
        victim = cluster.leader_of("registers")
        os.kill(cluster.node_pids()[victim], signal.SIGKILL)
        time.sleep(10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    partitions = [p for p in cluster.status(victim % 3 + 1)["partitions"] if p["table"] == "registers"]
    assert len(partitions) >= 2, partitions
    answered = [op for op in history if op.ret is not None]
    assert len(answered) > 200 and any(op.kind == "get" and op.value for op in answered)
    result = check(history, budget_per_key=2_000_000)
    assert result.ok, f"register {result.key} is not linearizable"
    assert result.unknown == 0
