"""PutItem latency while the lead of the table's partition changes hands, beside the same load
with a steady leader, on one three-node cluster.

    pytest bench/bench_handover.py --benchmark-only -p no:cacheprovider -s

``dynstore bench``'s generator writes 1 KB items open loop at RATE a second through node 1 (a
write led elsewhere is forwarded), once with the lead left where it is and once while the
control plane's Transfer call (as leader evening makes it) hands the lead to the next node
every HAND_OVER_EVERY_S. A write refused during a hand-over runs again at the next leader, so
every one succeeds; what a hand-over costs shows in the tail. Reported per run: p50, p99,
p99.9, max, errors and the hand-overs made.
"""
from __future__ import annotations

import pathlib
import sys
import threading
import time

import pytest

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.bench import histogram, loadgen

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_cluster import Cluster  # noqa: E402
from test_cluster_leaders import HandOvers  # noqa: E402

TABLE = "handover"
KEYS = 2000
RATE = 200
DURATION_S = 10.0
HAND_OVER_EVERY_S = 0.5
RUNS: list[dict] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        loadgen.prepare(plan(cluster.endpoints[1]), load=False)
        yield cluster
    finally:
        cluster.stop()
    print()
    print(f"{'run':<12} {'ops/s':>6} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'err':>4} {'moves':>5}  (us)")
    for r in RUNS:
        print(f"{r['run']:<12} {r['ops_s']:>6.0f} {r['p50_us']:>7} {r['p99_us']:>7} {r['p99_9_us']:>7} "
              f"{r['max_us']:>7} {r['errors']:>4} {r['moves']:>5}")


def plan(url: str) -> loadgen.Plan:
    return loadgen.Plan(url=url, table=TABLE, workload="W", keys=KEYS, duration_s=DURATION_S, rate=RATE,
                        key_id=DEVELOPMENT_ACCESS_KEY_ID, secret=DEVELOPMENT_SECRET_ACCESS_KEY)


def _hand_overs(cluster, stop: threading.Event, moves: list) -> None:
    with HandOvers(cluster) as hand_over:
        while not stop.wait(HAND_OVER_EVERY_S):
            moves.append(hand_over(TABLE, cluster.leader_of(TABLE) % 3 + 1))


@pytest.mark.parametrize("run", ["steady", "hand-overs"])
def test_put_item_latency(benchmark, cluster, run):
    moves: list[bool] = []
    stop = threading.Event()
    mover = threading.Thread(target=_hand_overs, args=(cluster, stop, moves), daemon=True)

    def measure() -> loadgen.Result:
        if run == "hand-overs":
            mover.start()
        try:
            return loadgen.run(plan(cluster.endpoints[1]))
        finally:
            stop.set()
            if run == "hand-overs":
                mover.join(30)

    started = time.monotonic()
    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    summary = histogram.summary(result.latency)
    row = {"run": run, "ops_s": result.throughput, "errors": sum(result.errors.values()), "moves": sum(moves),
           **{k: summary[k] for k in ("p50_us", "p99_us", "p99_9_us", "max_us")}}
    RUNS.append(row)
    benchmark.extra_info.update(row)
    assert result.completed > 0 and time.monotonic() - started < 10 * DURATION_S
    assert run == "steady" or sum(moves) > 0
