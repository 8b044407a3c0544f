"""Replicated 1 KB appends through a group of three processes, beside the single-node WAL.

Run: pytest bench/bench_replication.py --benchmark-only -p no:cacheprovider -s

Cases, all in one run so that the disk and the machine are the same for each:

- latency at low load, open loop: puts of 1 KB values sent at a fixed rate (RATE_PER_S) to
  the leader of a three-process group on loopback (group_process, each replica with its
  own WAL), latency measured from each request's intended send time, so queueing shows;
- throughput with pipelining: CLIENTS concurrent clients, each with one put in flight at
  a time, for DURATION_S; acknowledged puts per second and their latency;
- the same two shapes against one durable WAL in this process (append 1 KB, await
  durable), the single-node floor replication is measured against.

A put is acknowledged once it is committed on a quorum, durable and applied at the
leader (the group_process client protocol, JSON over TCP). The summary printed at the
end gives every figure.
"""
import asyncio
import time

import uvloop

from dynstore.replication.group_process import GroupClient, LocalGroup
from dynstore.storage.wal import WAL

DURATION_S = 3.0
RATE_PER_S = 200
CLIENTS = 64
VALUE = "v" * 1024
RESULTS: dict[str, dict] = {}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(latencies: list[float], elapsed: float) -> dict:
    return {"ops_per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "ops": len(latencies)}


async def open_loop(op) -> dict:
    """op() at RATE_PER_S for DURATION_S; latency from each intended send time (perf_counter:
    uvloop's loop.time() counts whole milliseconds)."""
    latencies: list[float] = []

    async def one(intended: float, i: int) -> None:
        await op(i)
        latencies.append(time.perf_counter() - intended)

    start = time.perf_counter()
    tasks = []
    for i in range(int(RATE_PER_S * DURATION_S)):
        intended = start + i / RATE_PER_S
        await asyncio.sleep(max(0.0, intended - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(intended, i)))
    await asyncio.gather(*tasks)
    return summarize(latencies, time.perf_counter() - start)


async def closed_loop(ops: list) -> dict:
    """One caller per op in ops, each with one call in flight, for DURATION_S."""
    latencies: list[float] = []
    deadline = time.perf_counter() + DURATION_S

    async def client(c: int, op) -> None:
        n = 0
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await op(c * 10_000_000 + n)  # unique keys across callers
            latencies.append(time.perf_counter() - sent)
            n += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(c, op) for c, op in enumerate(ops)))
    return summarize(latencies, time.perf_counter() - start)


async def replicated(directory) -> dict:
    group = LocalGroup(directory)
    await group.start_all()
    try:
        leader = await group.wait_leader(10)
        clients = [await GroupClient.connect(group.client_ports[leader]) for _ in range(CLIENTS)]

        def put_with(client):
            async def put(i: int) -> None:
                r = await client.call("put", key=f"k{i}", value=VALUE)
                assert r["ok"], r
            return put

        await closed_loop([put_with(clients[0])])  # warm up: connections and caches
        results = {"latency": await open_loop(put_with(clients[0])),
                   "throughput": await closed_loop([put_with(c) for c in clients])}
        for client in clients:
            await client.close()
        return results
    finally:
        await group.close()


async def single_node(directory) -> dict:
    record = VALUE.encode()
    with WAL(directory) as wal:
        async def append(_i: int) -> None:
            await wal.durable(wal.append(0, 1, record))

        return {"latency": await open_loop(append), "throughput": await closed_loop([append] * CLIENTS)}


def record(benchmark, name: str, results: dict) -> None:
    for shape, figures in results.items():
        benchmark.extra_info[shape] = figures
        RESULTS[f"{name} {shape}"] = figures


def test_single_node_wal_append(benchmark, tmp_path):
    results = benchmark.pedantic(lambda: uvloop.run(single_node(tmp_path / "wal")), rounds=1, iterations=1)
    record(benchmark, "single-node WAL", results)


def test_replicated_append_three_processes(benchmark, tmp_path):
    results = benchmark.pedantic(lambda: uvloop.run(replicated(tmp_path)), rounds=1, iterations=1)
    record(benchmark, "replicated x3  ", results)


def teardown_module():
    print(f"\n1 KB durable appends: latency open loop at {RATE_PER_S}/s, throughput with {CLIENTS} clients")
    for name, f in RESULTS.items():
        print(f"  {name:28s} {f['ops_per_s']:8.0f}/s   p50 {f['p50_ms']:7.2f} ms   p99 {f['p99_ms']:7.2f} ms")
