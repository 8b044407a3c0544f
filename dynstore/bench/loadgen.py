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

Process layout: ``workers`` processes (multiprocessing, spawned), each with its own share of
the rate (constant arrivals are interleaved: process w sends requests w, w+W, w+2W, ...).
In each, Python builds and signs the requests, ``BUILD_AHEAD_S`` ahead of their instants,
and records what finished; the sending, the connections and the timestamps are the native
sender's (sender.py), on a thread of its own, so that no Python work delays a send or the
instant an answer is seen to come in. Each process talks to the parent over a pipe::

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

import collections
import itertools
import multiprocessing
import multiprocessing.connection
import random
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import orjson
from hdrh.histogram import HdrHistogram

from dynstore import limits
from dynstore.bench import histogram
from dynstore.bench.sender import FAILURES, UNFINISHED, Sender
from dynstore.bench.workloads import ARRIVALS, DISTRIBUTIONS, KEY_ATTRIBUTE, WORKLOADS, Requests, item, make_filler
from dynstore.client import errors
from dynstore.client.core import Endpoint, RequestBuilder
from dynstore.client.sync import Client

OPERATIONS = ("GetItem", "PutItem")
START_DELAY_S = 0.2  # from the parent's start message to request 0: every process is awake by then
READY_TIMEOUT_S = 60.0  # a process that has not opened its connections by then is stuck
OPEN_LOOP_CONNECTIONS_AHEAD = 16  # opened before an open-loop run; more open on demand, counted in latency
BUILD_AHEAD_S = 0.05  # open loop: a request is built and signed this long before its instant
CLOSED_LOOP_AHEAD = 64  # closed loop: requests built beyond one per slot, for slots that come free
POLL_S = 0.005  # how often the Python side looks for finished requests while it waits
COLLECT_EVERY = 64  # open loop: submissions between looks when the generator is behind
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

    def response(self, operation: str, status: int, body: bytes, has_item: bool, began: float, done: float) -> None:
        """A response to a request that began (was scheduled, or sent) at ``began``; ``body``
        is (the start of) a non-200 answer's, ``has_item`` whether a 200 held an item."""
        self.last_done = max(self.last_done, done)
        if status != 200:
            self.failed += 1
            self.errors[_error_name(status, body)] += 1
            return
        self.completed += 1
        if operation == "GetItem" and not has_item:
            self.misses += 1
        latency = done - began
        histogram.record(self.operations[operation], latency)
        second = int(began - self.start)
        window = self.windows.get(second)
        if window is None:
            window = self.windows[second] = histogram.new()
        histogram.record(window, latency)

    def failure(self, name: str) -> None:
        self.failed += 1
        self.errors[name] += 1

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


class _Feed:
    """Builds, signs and submits the requests of one process, and records what finished."""

    def __init__(self, plan: Plan, index: int, pipe, sender: Sender, recorder: _Recorder):
        self.plan = plan
        self.pipe = pipe
        self.sender = sender
        self.recorder = recorder
        self.requests = Requests(WORKLOADS[plan.workload], table=plan.table, keys=plan.keys,
                                 item_size=plan.item_size, distribution=plan.distribution,
                                 consistent=plan.consistent, rng=random.Random(f"{plan.seed}/requests/{index}"))
        self.builder = RequestBuilder(Endpoint.parse(plan.url), plan.key_id, plan.secret, plan.region)
        self.operations: dict[int, str] = {}  # tag -> operation, for requests not finished yet
        self.tags = itertools.count()
        self.next_progress = recorder.start

    def submit(self, instant: float) -> None:
        operation, body = self.requests.next()
        tag = next(self.tags)
        self.operations[tag] = operation
        self.sender.submit(self.builder.build(operation, body, time.time()), instant, tag)

    def collect(self) -> None:
        """Record what finished; report progress when it is due."""
        recorder, open_loop = self.recorder, self.plan.open_loop
        for r in self.sender.take():
            operation = self.operations.pop(r.tag)
            if r.status == UNFINISHED:
                recorder.unfinished += 1
            elif r.status < 0:
                recorder.failure(FAILURES[r.status])
            else:
                if open_loop:
                    histogram.record(recorder.send_lag, r.sent - r.scheduled)
                recorder.response(operation, r.status, r.body, r.has_item, r.scheduled if open_loop else r.sent,
                                  r.done)
        now = time.monotonic()
        if now >= self.next_progress:
            self.pipe.send(("progress", recorder.completed, recorder.failed))
            self.next_progress = now + limits.BENCH_PROGRESS_S

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)
        self.collect()


def _open_loop(feed: _Feed, index: int) -> None:
    plan = feed.plan
    start, end = feed.recorder.start, feed.recorder.start + plan.duration_s
    arrivals = random.Random(f"{plan.seed}/arrivals/{index}")
    share = plan.rate / plan.workers
    n = 0
    scheduled = start + (index / plan.rate if plan.arrival == "constant" else arrivals.expovariate(share))
    while scheduled < end:
        # Built and signed ahead of its instant: that is the generator's work, not the endpoint's.
        ahead = scheduled - time.monotonic() - BUILD_AHEAD_S
        if ahead > 0:
            feed.wait(min(ahead, POLL_S))
            continue
        feed.submit(scheduled)
        n += 1
        if n % COLLECT_EVERY == 0:  # a generator that has fallen behind still reports
            feed.collect()
        if plan.arrival == "constant":
            scheduled = start + (index + n * plan.workers) / plan.rate  # no drift from summed gaps
        else:
            scheduled += arrivals.expovariate(share)
    feed.sender.finish()


def _closed_loop(feed: _Feed, slots: int) -> None:
    end = feed.recorder.start + feed.plan.duration_s
    while time.monotonic() < end:
        while feed.sender.backlog() < slots + CLOSED_LOOP_AHEAD:
            feed.submit(0.0)
        feed.wait(POLL_S)
    feed.sender.finish(discard=True)


def _slots(plan: Plan, index: int) -> int:
    """Closed loop: the requests process ``index`` keeps in flight."""
    return plan.concurrency // plan.workers + (index < plan.concurrency % plan.workers)


def _run_sender(sender: Sender, failures: list) -> None:
    try:
        sender.run(limits.BENCH_DRAIN_S)
    except BaseException:
        failures.append(traceback.format_exc())


def _work(plan: Plan, index: int, pipe) -> dict:
    slots = plan.connections if plan.open_loop else _slots(plan, index)
    sender = Sender(plan.url, slots)
    try:
        sender.connect(min(OPEN_LOOP_CONNECTIONS_AHEAD, slots) if plan.open_loop else slots)
        pipe.send(("ready",))
        recorder = _Recorder(pipe.recv())
        feed = _Feed(plan, index, pipe, sender, recorder)
        time.sleep(max(0.0, recorder.start - BUILD_AHEAD_S - time.monotonic()))
        failures: list[str] = []
        runner = threading.Thread(target=_run_sender, args=(sender, failures), name="sender", daemon=True)
        cpu_start = time.process_time()
        runner.start()
        try:
            if plan.open_loop:
                _open_loop(feed, index)
            else:
                time.sleep(max(0.0, recorder.start - time.monotonic()))
                _closed_loop(feed, slots)
        except BaseException:
            sender.finish(discard=True)  # the run failed: send nothing more
            raise
        finally:
            while runner.is_alive():
                runner.join(POLL_S)
                feed.collect()
            recorder.cpu_s = time.process_time() - cpu_start
        if failures:
            raise BenchError(f"the sender failed:\n{failures[0]}")
        feed.collect()
    finally:
        sender.close()
    return recorder.payload()


def _worker(plan: Plan, index: int, pipe) -> None:
    try:
        pipe.send(("result", _work(plan, index, pipe)))
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
