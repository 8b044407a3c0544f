"""A three-node cluster under open-loop load, beside moto_server and the floor: the short form
of the latency budget's measurement (DESIGN.md section 6).

    pytest bench/bench_cluster.py --benchmark-only -p no:cacheprovider -s --benchmark-autosave

``dynstore up --nodes 3``, ``moto_server`` and the floor (a server that answers at once,
dynstore/bench/floor.py) run in their own processes, started here, and
``dynstore bench``'s generator (dynstore/bench/loadgen.py) drives each at a few fixed rates:
GetItem eventually consistent (workload C) and PutItem (workload W) of 1 KB items, open
loop, latency from the scheduled send. Each run is one pytest-benchmark round whose
``extra_info`` holds the percentiles, the generator's own lateness (``send_lag_p99_us``) and
the machine's load average, since on a small shared machine a slow figure may be the
machine's. At the end every run is printed and, per target and operation, the highest rate
whose p99 stayed under P99_BUDGET_US.

The full sweep, with the same generator from the command line (README, "Measuring")::

    dynstore up --nodes 3 --port 8000 --data-dir /tmp/cluster &
    dynstore bench --workload W --rates 250,500,1000,1500 --duration 10 --keys 10000 --compare moto
    dynstore bench --workload C --rates 500,1000,2000,3000 --duration 10 --keys 10000 --compare moto
    dynstore bench --workload C --rates 500,1000,2000,3000 --duration 10 --keys 10000 --compare floor
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.bench import loadgen, report
from dynstore.bench.cli import _floor_server, _moto_server

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_cluster import Cluster  # noqa: E402

KEYS = 2000
ITEM_BYTES = 1024
DURATION_S = 5.0
RATES = (200, 400, 800)
P99_BUDGET_US = 2000  # PutItem's p99 budget, also used for GetItem's sweep here
WORKLOADS = {"GetItem": "C", "PutItem": "W"}  # C: GetItem only (eventually consistent), W: PutItem only
# The floor (dynstore/bench/floor.py) answers at once: what the generator and the machine
# cost before an endpoint does any work, at the same rates in the same run.
TARGETS = ("dynstore", "moto", "floor")
RUNS: list[dict] = []
# The node leading the table's partition before the runs and after them. Requests enter at
# node 1; a write led by another node is forwarded there, two more hops.
LEADERS: list[int] = []
TABLE = "bench_cluster"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        with _moto_server() as moto, _floor_server(ITEM_BYTES) as floor:
            urls = {"dynstore": cluster.endpoints[1], "moto": moto}
            for url in urls.values():
                loadgen.prepare(plan(url, "C", RATES[0]), load=True)
            LEADERS.append(cluster.leader_of(TABLE))
            yield {**urls, "floor": floor}
            LEADERS.append(cluster.leader_of(TABLE))
    finally:
        cluster.stop()
    summary()


def plan(url: str, workload: str, rate: float) -> loadgen.Plan:
    return loadgen.Plan(url=url, table=TABLE, workload=workload, keys=KEYS, item_size=ITEM_BYTES,
                        duration_s=DURATION_S, rate=rate, key_id=DEVELOPMENT_ACCESS_KEY_ID,
                        secret=DEVELOPMENT_SECRET_ACCESS_KEY)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("operation", list(WORKLOADS))
@pytest.mark.parametrize("target", TARGETS)
def test_open_loop(benchmark, endpoints, target, operation, rate):
    benchmark.group = f"{operation} {rate}/s"
    result = benchmark.pedantic(loadgen.run, args=(plan(endpoints[target], WORKLOADS[operation], rate),),
                                rounds=1, iterations=1)
    record = report.run_record(target, result)
    latency = record["latency_us"][operation]
    row = {"target": target, "operation": operation, "rate": rate, "throughput": record["throughput"],
           "errors": sum(record["errors"].values()), **{k: latency[k] for k in ("p50_us", "p90_us", "p99_us",
                                                                                 "p99_9_us")},
           "send_lag_p99_us": record["send_lag_us"]["p99_us"], "load_average": os.getloadavg()[0]}
    benchmark.extra_info.update(row)
    RUNS.append(row)
    assert record["completed"] > 0


def summary() -> None:
    """Every run, and per target and operation the highest rate whose p99 kept the budget."""
    print(f"\n{'target':9} {'operation':8} {'rate':>5} {'ops/s':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} "
          f"{'lag p99':>7} {'load':>5}  (us)")
    for r in RUNS:
        print(f"{r['target']:9} {r['operation']:8} {r['rate']:5} {r['throughput']:6.0f} {r['p50_us']:7} "
              f"{r['p90_us']:7} {r['p99_us']:7} {r['p99_9_us']:7} {r['send_lag_p99_us']:7} {r['load_average']:5.2f}")
    for target in TARGETS:
        for operation in WORKLOADS:
            within = [r["rate"] for r in RUNS if r["target"] == target and r["operation"] == operation
                      and r["p99_us"] <= P99_BUDGET_US and r["errors"] == 0]
            print(f"{target} {operation}: highest rate with p99 <= {P99_BUDGET_US} us: {max(within, default=None)}")
    print(f"dynstore: requests entered at node 1; {TABLE} was led by node {' then node '.join(map(str, LEADERS))}")
