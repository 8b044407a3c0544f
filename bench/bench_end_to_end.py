"""End to end: one client, GetItem and PutItem of 1 KB items, dynstore beside moto_server.

    pytest bench/bench_end_to_end.py --benchmark-only -p no:cacheprovider -s --benchmark-autosave

Both servers run in their own processes, started here, and are driven by the same
client (dynstore.client, so the client's cost is alike on both sides) one request at a
time: this is the service time of a request, wall clock, with nothing queued. Open-loop
latency under load is ``dynstore bench``'s job. The table printed at the end gives each
median and moto's over dynstore's, the headline ratio; rounds of both interleave so that
load from elsewhere on the machine hits them alike.
"""
from __future__ import annotations

import pathlib
import statistics
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_client import _start_dynstore, _start_moto  # noqa: E402

TABLE = "bench_e2e"
ITEM_BYTES = 1024
ITEMS = 1000
ROUNDS = 5
CALLS_PER_ROUND = 500


def item(i: int) -> dict:
    key = f"user#{i:06d}"
    # pk + "v" attribute names and values add up to ITEM_BYTES by DynamoDB's size rule.
    return {"pk": key, "v": "x" * (ITEM_BYTES - len("pk") - len(key) - len("v"))}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = {"dynstore": _start_dynstore(tmp_path_factory.mktemp("e2e") / "data"), "moto": _start_moto()}
    if started["dynstore"] is None:
        started["moto"].stop()
        pytest.fail("dynstore up did not start")
    tables = {}
    for name, peer in started.items():
        client = peer.client()
        client.create_table(TABLE, partition_key=("pk", "S"))
        table = client.table(TABLE)
        table.batch_write(puts=[item(i) for i in range(ITEMS)])
        tables[name] = (client, table)
    yield tables
    for name, peer in started.items():
        tables[name][0].close()
        peer.stop()


def operations(table):
    counter = iter(range(10**9))
    return {
        "GetItem": lambda: table.get({"pk": f"user#{next(counter) % ITEMS:06d}"}),
        "PutItem": lambda: table.put(item(next(counter) % ITEMS)),
    }


@pytest.mark.parametrize("server", ["dynstore", "moto"])
@pytest.mark.parametrize("operation", ["GetItem", "PutItem"])
def test_request(benchmark, servers, server, operation):
    benchmark.group = operation
    benchmark(operations(servers[server][1])[operation])


def test_ratio_against_moto(benchmark, servers):
    per_call: dict[tuple[str, str], list[float]] = {}
    benchmark.group = "interleaved rounds"
    benchmark.pedantic(interleave, args=(servers, per_call), rounds=1, iterations=1)
    print(f"\n1 KB items, one client, {ROUNDS} interleaved rounds of {CALLS_PER_ROUND}: median of round means")
    for operation in ("GetItem", "PutItem"):
        ours = statistics.median(per_call[("dynstore", operation)])
        moto = statistics.median(per_call[("moto", operation)])
        print(f"  {operation}: dynstore {ours:8.1f} us   moto {moto:8.1f} us   moto/dynstore {moto / ours:5.1f}x")
        assert ours < moto


def interleave(servers, per_call: dict) -> None:
    ops = {name: operations(table) for name, (_, table) in servers.items()}
    for _ in range(ROUNDS):
        for operation in ("GetItem", "PutItem"):
            for name in ops:
                fn = ops[name][operation]
                started = time.perf_counter()
                for _ in range(CALLS_PER_ROUND):
                    fn()
                per_call.setdefault((name, operation), []).append(
                    (time.perf_counter() - started) / CALLS_PER_ROUND * 1e6)
