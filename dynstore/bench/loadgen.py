"""Load against a DynamoDB endpoint from several processes, open loop or closed loop.

Open loop (``Plan.rate`` set): request i is *scheduled* at a fixed instant, at a constant
rate (``start + i / rate``) or as a Poisson process (exponential gaps), whatever happened to
the requests before it. Its latency is measured from that scheduled instant to the last byte
of its response, so time spent queued anywhere (in the server, in a full connection pool, in
a generator that woke up late) is counted: no coordinated omission. How late the generator
itself was is reported separately as ``send_lag`` (scheduled instant to the write on the
socket), which says whether a run measured the target or the generator.

Closed loop (``Plan.rate`` None): ``concurrency`` requests in flight, each sent as soon as the
previous one on its slot answered, latency measured from the actual send. It finds the
saturation throughput; its latencies hide queueing by construction.

Process layout: ``workers`` processes (multiprocessing, spawned), each running a uvloop event
loop with its own connection pool and its own share of the rate (constant arrivals are
interleaved: process w sends requests w, w+W, w+2W, ...). Each process talks to the parent
over a pipe::

    worker -> parent  ("ready",)                          connections open, waiting for the start
    parent -> worker  start                               time.monotonic() instant of request 0
    worker -> parent  ("progress", completed, failed)     every limits.BENCH_PROGRESS_S
    worker -> parent  ("result", {...})                   histograms (HdrHistogram encoding) and counts
    worker -> parent  ("error", traceback text)           the process failed; the run is void

``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process of the machine, so the
parent's start instant means the same to all of them.

Faults handled: an endpoint that refuses or drops connections (counted per error, the run
goes on), an endpoint that stops answering (requests still running ``limits.BENCH_DRAIN_S``
after the last send are reported unfinished), a generator process that dies (BenchError).
"""
from __future__ import annotations

import asyncio
import collections
import multiprocessing
import multiprocessing.connection
import random
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import orjson
import uvloop
from hdrh.histogram import HdrHistogram

from dynstore import limits
from dynstore.bench import histogram
from dynstore.bench.connection import Pool
from dynstore.bench.timer import Timer
from dynstore.bench.workloads import ARRIVALS, DISTRIBUTIONS, KEY_ATTRIBUTE, WORKLOADS, Requests, item, make_filler
from dynstore.client import errors
from dynstore.client.sync import Client

OPERATIONS = ("GetItem", "PutItem")
START_DELAY_S = 0.2  # from the parent's start message to request 0: every process is awake by then
READY_TIMEOUT_S = 60.0  # a process that has not opened its connections by then is stuck
OPEN_LOOP_CONNECTIONS_AHEAD = 16  # opened before an open-loop run; more open on demand, counted in latency
LOAD_ITEMS_PER_TASK = 1000  # items one loading thread writes per BatchWriteItem series
LOAD_THREADS = 4


class BenchError(Exception):
    """The run could not be carried out; the message says what failed."""


@dataclass(frozen=True)
class Plan:
    """One run against one endpoint. ``rate`` None means closed loop at ``concurrency``."""

    url: str
    table: str = "bench"
    workload: str = "A"
    keys: int = 10_000
    item_size: int = 1024
    distribution: str = "zipfian"
    consistent: bool = False
    duration_s: float = 10.0
    rate: float | None = 1000.0  # requests per second, all processes together
    arrival: str = "constant"
    concurrency: int = 16  # closed loop: requests in flight, all processes together
    workers: int = 2
    connections: int = limits.BENCH_CONNECTIONS_PER_WORKER_MAX  # per process
    seed: int = 1
    region: str = "us-east-1"
    key_id: str = ""
    secret: str = field(default="", repr=False)

    def __post_init__(self):
        problems = []
        if self.workload not in WORKLOADS:
            problems.append(f"workload must be one of {', '.join(WORKLOADS)}")
        if self.distribution not in DISTRIBUTIONS:
            problems.append(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if self.arrival not in ARRIVALS:
            problems.append(f"arrival must be one of {', '.join(ARRIVALS)}")
        if not 0 < self.duration_s <= limits.BENCH_DURATION_S_MAX:
            problems.append(f"duration must be more than 0 and at most {limits.BENCH_DURATION_S_MAX:.0f} s")
        if self.rate is not None and self.rate <= 0:
            problems.append("rate must be positive")
        if self.workers < 1:
            problems.append("at least one generator process is needed")
        if not 1 <= self.connections <= limits.BENCH_CONNECTIONS_PER_WORKER_MAX:
            problems.append(f"connections per process must be from 1 to {limits.BENCH_CONNECTIONS_PER_WORKER_MAX}")
        if self.rate is None and not self.workers <= self.concurrency <= self.workers * self.connections:
            problems.append("closed-loop concurrency must be at least the process count and at most "
                            "processes x connections")
        if problems:
            raise ValueError("; ".join(problems))
        make_filler(self.item_size)  # raises when the item cannot be that small

    @property
    def open_loop(self) -> bool:
        return self.rate is not None


@dataclass
class Result:
    """The merged outcome of one run. Latencies in microseconds (see histogram.py)."""

    plan: Plan
    operations: dict[str, HdrHistogram]  # per operation, every request that got a 200
    windows: dict[int, HdrHistogram]  # second of the run (by scheduled send) -> its latencies
    send_lag: HdrHistogram  # open loop: scheduled instant -> request written to a socket
    completed: int  # 200 responses
    errors: collections.Counter  # error type (DynamoDB __type, "HTTP <status>", or connection) -> count
    misses: int  # GetItem answered without an item: the table was not loaded with these keys
    unfinished: int  # still running BENCH_DRAIN_S after the last send, abandoned
    elapsed_s: float  # start to the last response
    cpu_s: float  # CPU time of all generator processes during the run

    @property
    def cpu_us_per_request(self) -> float:
        """The generator's own cost: what it can sustain is about cores / this."""
        requests = self.completed + sum(self.errors.values())
        return self.cpu_s / requests * 1e6 if requests else 0.0

    @property
    def latency(self) -> HdrHistogram:
        total = histogram.new()
        for h in self.operations.values():
            total.add(h)
        return total

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --- the generator process ----------------------------------------------------------------


def _error_name(status: int, body: bytes) -> str:
    try:
        wire_type = orjson.loads(body).get("__type", "")
    except (orjson.JSONDecodeError, AttributeError):
        wire_type = ""
    return wire_type.rpartition("#")[2] or f"HTTP {status}"


class _Recorder:
    """What one process saw; ``payload()`` is its part of the result."""

    def __init__(self, start: float):
        self.start = start
        self.operations = {name: histogram.new() for name in OPERATIONS}
        self.windows: dict[int, HdrHistogram] = {}
        self.send_lag = histogram.new()
        self.completed = 0
        self.failed = 0
        self.errors = collections.Counter()
        self.misses = 0
        self.unfinished = 0
        self.last_done = start
        self.cpu_s = 0.0  # CPU time the process spent on the run: the generator's own cost

    def response(self, operation: str, status: int, body: bytes, began: float, done: float) -> None:
        """A response to a request that began (was scheduled, or sent) at ``began``."""
        self.last_done = max(self.last_done, done)
        if status != 200:
            self.failed += 1
            self.errors[_error_name(status, body)] += 1
            return
        self.completed += 1
        if operation == "GetItem" and b'"Item"' not in body:
            self.misses += 1
        latency = done - began
        histogram.record(self.operations[operation], latency)
        second = int(began - self.start)
        window = self.windows.get(second)
        if window is None:
            window = self.windows[second] = histogram.new()
        histogram.record(window, latency)

    def failure(self, error: Exception) -> None:
        self.failed += 1
        self.errors[f"{type(error).__name__}"] += 1

    def payload(self) -> dict:
        return {
            "operations": {name: h.encode() for name, h in self.operations.items()},
            "windows": {second: h.encode() for second, h in self.windows.items()},
            "send_lag": self.send_lag.encode(),
            "completed": self.completed,
            "errors": dict(self.errors),
            "misses": self.misses,
            "unfinished": self.unfinished,
            "last_done": self.last_done,
            "cpu_s": self.cpu_s,
        }


async def _request(recorder: _Recorder, operation: str, call: Awaitable, scheduled: float, open_loop: bool) -> None:
    """Await ``call`` (Pool.call, sent already when a connection was idle) and record it."""
    try:
        response, sent, received = await call
    except OSError as error:  # ConnectionError and refused connects alike
        recorder.failure(error)
        return
    if open_loop:
        histogram.record(recorder.send_lag, sent - scheduled)
    recorder.response(operation, response.status, response.body, scheduled if open_loop else sent, received)


async def _open_loop(plan: Plan, index: int, pool: Pool, requests: Requests, recorder: _Recorder,
                     timer: Timer) -> None:
    loop = asyncio.get_running_loop()
    start, end = recorder.start, recorder.start + plan.duration_s
    inflight: set[asyncio.Task] = set()
    arrivals = random.Random(f"{plan.seed}/arrivals/{index}")
    share = plan.rate / plan.workers
    n = 0
    scheduled = start + (index / plan.rate if plan.arrival == "constant" else arrivals.expovariate(share))
    while scheduled < end:
        # Built and signed before its instant: that is the generator's work, not the endpoint's,
        # and at the instant the request goes out at once, with no turn of the loop between.
        operation, body = requests.next()
        request = pool.build(operation, body)
        await timer.sleep_until(scheduled)
        task = loop.create_task(_request(recorder, operation, pool.call(request), scheduled, True))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        n += 1
        if n % 32 == 0:
            # A generator that has fallen behind finds every next instant passed and would
            # otherwise create tasks for the whole run before any of them runs.
            await asyncio.sleep(0)
        if plan.arrival == "constant":
            scheduled = start + (index + n * plan.workers) / plan.rate  # no drift from summed gaps
        else:
            scheduled += arrivals.expovariate(share)
    if inflight:
        _, pending = await asyncio.wait(inflight, timeout=limits.BENCH_DRAIN_S)
        for task in pending:
            task.cancel()
        recorder.unfinished = len(pending)


async def _closed_loop(plan: Plan, index: int, pool: Pool, requests: Requests, recorder: _Recorder) -> None:
    end = recorder.start + plan.duration_s

    async def slot():
        while time.monotonic() < end:
            operation, body = requests.next()
            await _request(recorder, operation, pool.call(pool.build(operation, body)), 0.0, False)

    await asyncio.gather(*(slot() for _ in range(_slots(plan, index))))


def _slots(plan: Plan, index: int) -> int:
    """Closed loop: the requests process ``index`` keeps in flight."""
    return plan.concurrency // plan.workers + (index < plan.concurrency % plan.workers)


async def _report_progress(recorder: _Recorder, pipe) -> None:
    while True:
        await asyncio.sleep(limits.BENCH_PROGRESS_S)
        pipe.send(("progress", recorder.completed, recorder.failed))


async def _work(plan: Plan, index: int, pipe) -> dict:
    loop = asyncio.get_running_loop()
    pool = Pool(loop, plan.url, plan.key_id, plan.secret, plan.region, plan.connections)
    await pool.open(min(OPEN_LOOP_CONNECTIONS_AHEAD, plan.connections) if plan.open_loop else _slots(plan, index))
    requests = Requests(WORKLOADS[plan.workload], table=plan.table, keys=plan.keys, item_size=plan.item_size,
                        distribution=plan.distribution, consistent=plan.consistent,
                        rng=random.Random(f"{plan.seed}/requests/{index}"))
    timer = Timer(loop)
    pipe.send(("ready",))
    recorder = _Recorder(pipe.recv())
    progress = loop.create_task(_report_progress(recorder, pipe))
    await timer.sleep_until(recorder.start)
    cpu_start = time.process_time()
    try:
        if plan.open_loop:
            await _open_loop(plan, index, pool, requests, recorder, timer)
        else:
            await _closed_loop(plan, index, pool, requests, recorder)
    finally:
        recorder.cpu_s = time.process_time() - cpu_start
        progress.cancel()
        timer.close()
        pool.close()
    return recorder.payload()


def _worker(plan: Plan, index: int, pipe) -> None:
    try:
        pipe.send(("result", uvloop.run(_work(plan, index, pipe))))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        raise


# --- the parent ---------------------------------------------------------------------------


def run(plan: Plan, progress: Callable[[int, int, float], None] | None = None) -> Result:
    """Carry out ``plan``; ``progress(completed, failed, seconds since start)`` is called as it goes."""
    context = multiprocessing.get_context("spawn")  # a forked copy of a threaded parent can deadlock
    pipes, processes = [], []
    try:
        for index in range(plan.workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker, args=(plan, index, child_end), daemon=True,
                                      name=f"dynstore-bench-{index}")
            process.start()
            child_end.close()
            pipes.append(parent_end)
            processes.append(process)
        for index, pipe in enumerate(pipes):
            if not pipe.poll(READY_TIMEOUT_S):
                raise BenchError(f"generator process {index} did not get ready in {READY_TIMEOUT_S:.0f} s")
            _expect(_receive(pipe, index), "ready", index)
        start = time.monotonic() + START_DELAY_S
        for pipe in pipes:
            pipe.send(start)
        payloads = _collect(pipes, start, progress)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    return _merge(plan, start, payloads)


def _receive(pipe, index: int):
    try:
        message = pipe.recv()
    except EOFError:
        raise BenchError(f"generator process {index} exited without a result") from None
    if message[0] == "error":
        raise BenchError(f"generator process {index} failed:\n{message[1]}")
    return message


def _expect(message, kind: str, index: int) -> None:
    if message[0] != kind:
        raise BenchError(f"generator process {index} sent {message[0]!r} where {kind!r} was expected")


def _collect(pipes, start: float, progress) -> list[dict]:
    results: dict[int, dict] = {}
    counts = [(0, 0)] * len(pipes)
    index_of = {id(pipe): index for index, pipe in enumerate(pipes)}
    while len(results) < len(pipes):
        waiting = [pipe for index, pipe in enumerate(pipes) if index not in results]
        for pipe in multiprocessing.connection.wait(waiting, timeout=limits.BENCH_PROGRESS_S):
            index = index_of[id(pipe)]
            message = _receive(pipe, index)
            if message[0] == "progress":
                counts[index] = message[1:]
            else:
                _expect(message, "result", index)
                results[index] = message[1]
                counts[index] = (message[1]["completed"], sum(message[1]["errors"].values()))
        if progress is not None:
            progress(sum(c for c, _ in counts), sum(f for _, f in counts), time.monotonic() - start)
    return [results[index] for index in range(len(pipes))]


def _merge(plan: Plan, start: float, payloads: list[dict]) -> Result:
    windows: dict[int, list[bytes]] = collections.defaultdict(list)
    for payload in payloads:
        for second, encoded in payload["windows"].items():
            windows[second].append(encoded)
    errors_seen = collections.Counter()
    for payload in payloads:
        errors_seen.update(payload["errors"])
    return Result(
        plan=plan,
        operations={name: histogram.merge(p["operations"][name] for p in payloads) for name in OPERATIONS},
        windows={second: histogram.merge(encoded) for second, encoded in sorted(windows.items())},
        send_lag=histogram.merge(p["send_lag"] for p in payloads),
        completed=sum(p["completed"] for p in payloads),
        errors=errors_seen,
        misses=sum(p["misses"] for p in payloads),
        unfinished=sum(p["unfinished"] for p in payloads),
        elapsed_s=max(p["last_done"] for p in payloads) - start,
        cpu_s=sum(p["cpu_s"] for p in payloads),
    )


# --- setup --------------------------------------------------------------------------------


def prepare(plan: Plan, *, load: bool, progress: Callable[[int], None] | None = None) -> None:
    """Create the table when missing (on demand, keyed by ``pk``), then with ``load`` write every
    key of the plan once (BatchWriteItem, 25 items a request, from a few threads) so that reads
    find items. ``progress(items written so far)`` is called as it goes."""
    try:
        with Client(plan.url, plan.key_id, plan.secret, plan.region) as client:
            try:
                client.describe_table(plan.table)
            except errors.ResourceNotFoundException:
                client.create_table(plan.table, partition_key=(KEY_ATTRIBUTE, "S"))
            if load:
                _load(client.table(plan.table), plan, progress)
    except (errors.DynamoDBError, errors.UnprocessedError, errors.ChecksumMismatchError, OSError) as e:
        raise BenchError(f"setting up table {plan.table} at {plan.url} failed: {type(e).__name__}: {e}") from e


def _load(table, plan: Plan, progress) -> None:
    filler = make_filler(plan.item_size)

    def write(first: int) -> int:
        return table.batch_write(puts=[item(i, filler) for i in range(first, min(first + LOAD_ITEMS_PER_TASK,
                                                                                 plan.keys))])

    written = 0
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for count in pool.map(write, range(0, plan.keys, LOAD_ITEMS_PER_TASK)):
            written += count
            if progress is not None:
                progress(written)
