"""Durable 1 KB appends per second: group commit against a plain write + fdatasync loop.

Run: pytest bench/bench_wal.py --benchmark-only -p no:cacheprovider -s

Each case appends 1 KB records for DURATION_S from N concurrent appenders, each waiting
for its record to be durable before appending the next, and counts acknowledged records.
Appenders are threads (append + wait_durable) or asyncio tasks on uvloop (append + await
durable), the way the server drives the log. The plain loop is what one appender gets
without group commit: os.write then os.fdatasync per record on an O_APPEND file in the same
directory. A shared disk's speed drifts a lot from second to second, so every case runs the
plain loop right before itself and reports its ratio to that neighbour. The summary printed
at the end gives each rate and ratio (the goal: 64 appenders reach at least 20x).

The paced cases measure latency rather than rate: one append at a time, PACED_RATE a second,
through the WAL and as a bare pwrite + fdatasync, so the disk and the processes are idle
between appends, as at a replica under light load.
"""
import asyncio
import os
import threading
import time

import pytest
import uvloop

from dynstore.storage.wal import WAL

DURATION_S = 2.0
RECORD = os.urandom(1024)
RESULTS: dict[str, tuple[float, float]] = {}  # case -> (rate, the plain loop's rate beside it)
PLAIN: dict = {}  # directory of a case -> the plain loop's rate measured just before it
PACED_RATE = 200  # paced cases: appends a second, one at a time, as at a lightly loaded replica
PACED_COUNT = 400
PACED: dict[str, dict[str, float]] = {}  # paced case -> its latency percentiles


def plain_loop(path, duration: float = DURATION_S) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    count, deadline = 0, time.perf_counter() + duration
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        os.write(fd, RECORD)
        os.fdatasync(fd)
        count += 1
    elapsed = time.perf_counter() - start
    os.close(fd)
    return count / elapsed


def with_threads(wal: WAL, appenders: int) -> int:
    counts = [0] * appenders
    deadline = time.perf_counter() + DURATION_S

    def appender(i: int):
        while time.perf_counter() < deadline:
            wal.wait_durable(wal.append(1, 0, RECORD))
            counts[i] += 1

    threads = [threading.Thread(target=appender, args=(i,)) for i in range(appenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def with_tasks(wal: WAL, appenders: int) -> int:
    async def appender(deadline: float) -> int:
        count = 0
        while time.perf_counter() < deadline:
            await wal.durable(wal.append(1, 0, RECORD))
            count += 1
        return count

    async def main() -> int:
        deadline = time.perf_counter() + DURATION_S
        return sum(await asyncio.gather(*(appender(deadline) for _ in range(appenders))))

    return uvloop.run(main())


def group_commit(directory, sync: str, appenders: int, drive) -> float:
    PLAIN[directory] = plain_loop(directory.parent / "plain", DURATION_S / 2)
    with WAL(directory, sync=sync, backend="native") as wal:
        assert wal.io_path == sync
        start = time.perf_counter()
        count = drive(wal, appenders)
        elapsed = time.perf_counter() - start
    return count / elapsed


def record(benchmark, name: str, rate: float, plain: float):
    benchmark.extra_info["appends_per_s"] = rate
    benchmark.extra_info["plain_appends_per_s"] = plain
    RESULTS[name] = (rate, plain)


def test_plain_write_fdatasync(benchmark, tmp_path):
    rate = benchmark.pedantic(plain_loop, args=(tmp_path / "plain",), rounds=1, iterations=1)
    record(benchmark, "plain os.write+fdatasync", rate, rate)


@pytest.mark.parametrize("appenders", [1, 8, 64])
@pytest.mark.parametrize("sync", ["uring", "fdatasync"])
@pytest.mark.parametrize("drive", [with_threads, with_tasks], ids=["threads", "asyncio"])
def test_group_commit(benchmark, tmp_path, sync, appenders, drive):
    rate = benchmark.pedantic(group_commit, args=(tmp_path / "wal", sync, appenders, drive), rounds=1, iterations=1)
    kind = "threads" if drive is with_threads else "tasks"
    record(benchmark, f"WAL {sync:9s} {appenders:2d} {kind}", rate, PLAIN[tmp_path / "wal"])


def paced(path, append) -> dict[str, float]:
    """One durable append at a time, PACED_RATE a second, the disk idle between appends: the
    median and p90 latency, in us, of ``durable()``, where ``append(path)`` gives ``(durable,
    close)``."""
    async def main() -> list[float]:
        durable, close = append(path)
        latencies = []
        try:
            for _ in range(PACED_COUNT):
                await asyncio.sleep(1 / PACED_RATE)
                start = time.perf_counter()
                await durable()
                latencies.append(time.perf_counter() - start)
        finally:
            close()
        return sorted(latencies)

    latencies = uvloop.run(main())
    return {f"p{q}_us": round(latencies[len(latencies) * q // 100] * 1e6) for q in (50, 90)}


def plain_pwrite(path):
    """pwrite + fdatasync into a file written with zeros beforehand (as the WAL keeps its
    segments), so that a sync carries no metadata: the least a durable append can cost."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, bytes(len(RECORD) * PACED_COUNT))
    os.fsync(fd)
    offsets = iter(range(0, len(RECORD) * PACED_COUNT, len(RECORD)))

    async def durable():
        os.pwrite(fd, RECORD, next(offsets))
        os.fdatasync(fd)
    return durable, lambda: os.close(fd)


def wal_append(path):
    wal = WAL(path, backend="native")

    async def durable():
        await wal.durable(wal.append(1, 0, RECORD))
    return durable, wal.close


@pytest.mark.parametrize("append", [plain_pwrite, wal_append], ids=["plain", "wal"])
def test_paced_append_latency(benchmark, tmp_path, append):
    latency = benchmark.pedantic(paced, args=(tmp_path / "log", append), rounds=1, iterations=1)
    benchmark.extra_info.update(latency)
    PACED[append.__name__] = latency


def teardown_module():
    print("\ndurable 1 KB appends/s, and the plain loop measured just before each case")
    for name, (rate, plain) in RESULTS.items():
        print(f"  {name:28s} {rate:8.0f}/s   plain {plain:6.0f}/s   {rate / plain:5.1f}x")
    print(f"\none durable 1 KB append at a time, {PACED_RATE} a second")
    for name, latency in PACED.items():
        print(f"  {name:12s} p50 {latency['p50_us']:6d} us   p90 {latency['p90_us']:6d} us")
