"""The availability canary: every partition of every table, probed at a steady rate.

Inside the serving process, each round (``limits.CANARY_INTERVAL_S``) sends every partition
a probe: a durable write of a fresh value to the partition's canary key, then a read that
must return that value. Both go through the ``Partition`` (router/partition.py), the path
item writes and reads take, so a probe fails when a client's request would: the disk is
full or failing, the engine is closed after a fault, or the write does not become durable
within ``limits.CANARY_PROBE_TIMEOUT_S``. A partition whose probe is still outstanding at the
next round fails that round too, without a second probe piling up behind the first.

Availability is measured as DynamoDB states its own: per fixed 5-minute window
(``limits.CANARY_WINDOW_S``, aligned to the clock), successful requests / requests; a day's
availability is the mean of its windows' availabilities (DynamoDB's "monthly uptime
percentage" is 100% minus the average error rate of the 5-minute intervals). The write and
the read of a probe count as one request each. The last day of windows is kept in memory
per partition (``limits.CANARY_WINDOWS_KEPT``) and forgotten with the table; nothing is
persisted, so a restart starts the figures afresh.

On disk, the canary key is ``schema.CANARY_KEY`` (0xFF), a key space of its own in each
partition's Engine: value = the probe's sequence number, 8 bytes big-endian. Item keys
start with 0x01 and index entries with 0x02, so no user key can reach it; Query, Scan and
TTL expiry scan only those spaces, and ItemCount / TableSizeBytes come from the statistics
record that only item writes change (operations/store.py). The probes do count in the
partition's ``dynstore_partition_reads_total`` / ``_writes_total`` (one each per round).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable, Iterable, NamedTuple

from dynstore import limits
from dynstore.api.operations.schema import CANARY_KEY

log = logging.getLogger(__name__)


class Availability(NamedTuple):
    """Figures of one window or one day; an availability is None when nothing was measured."""

    window_start: float  # start of the current window, seconds since the epoch
    window: float | None  # successful / requests in the current window
    window_requests: int
    day: float | None  # mean of the availabilities of the last day's windows that had requests
    day_requests: int


class AvailabilityWindows:
    """Successful and total requests per window, for the last ``kept`` windows.

    Pure arithmetic over the times it is given: no clock of its own.
    """

    __slots__ = ("window_s", "kept", "_windows")

    def __init__(self, window_s: float = limits.CANARY_WINDOW_S, kept: int = limits.CANARY_WINDOWS_KEPT):
        self.window_s = window_s
        self.kept = kept
        self._windows: collections.deque[list] = collections.deque(maxlen=kept)  # [start, successes, requests]

    def window_start(self, now: float) -> float:
        return now - now % self.window_s

    def record(self, now: float, ok: bool) -> None:
        start = self.window_start(now)
        # A clock stepped back lands in the newest window rather than reordering the history.
        if not self._windows or self._windows[-1][0] < start:
            self._windows.append([start, 0, 0])
        window = self._windows[-1]
        window[1] += ok
        window[2] += 1

    def windows(self, now: float) -> Iterable[tuple[float, int, int]]:
        """(start, successes, requests) of the windows within the day ending with ``now``'s window."""
        first = self.window_start(now) - (self.kept - 1) * self.window_s
        return (tuple(w) for w in self._windows if w[0] >= first)


def availability(series: Iterable[AvailabilityWindows], now: float,
                 window_s: float = limits.CANARY_WINDOW_S) -> Availability:
    """The availability of ``series`` taken together (one partition, or every one of a node)."""
    buckets: dict[float, list[int]] = {}
    for windows in series:
        for start, successes, requests in windows.windows(now):
            bucket = buckets.setdefault(start, [0, 0])
            bucket[0] += successes
            bucket[1] += requests
    current = now - now % window_s
    ok, requests = buckets.get(current, (0, 0))
    ratios = [s / r for s, r in buckets.values() if r]
    return Availability(current, ok / requests if requests else None, requests,
                        sum(ratios) / len(ratios) if ratios else None, sum(r for _, r in buckets.values()))


PartitionId = tuple[str, int]  # (TableId, position of the partition in its table's key order)


class Canary:
    """Probes every partition the router serves; ``windows`` holds the results."""

    def __init__(self, router, *, clock: Callable[[], float] = time.time,
                 interval_s: float = limits.CANARY_INTERVAL_S, timeout_s: float = limits.CANARY_PROBE_TIMEOUT_S):
        self.router = router
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.windows: dict[PartitionId, AvailabilityWindows] = {}
        self._in_flight: dict[PartitionId, asyncio.Task] = {}
        self._failing: set[PartitionId] = set()
        self._sequence = 0
        self._task: asyncio.Task | None = None

    def _live(self) -> dict[PartitionId, object]:
        router = self.router
        live = {}
        for name in router.table_names():
            desc = router.table(name)
            for number, partition in enumerate(router.partitions(desc)):
                live[(desc["TableId"], number)] = partition
        return live

    async def _probe(self, partition) -> tuple[bool, bool]:
        """(write succeeded, read succeeded) of one probe; never raises but for cancellation."""
        self._sequence += 1
        value = self._sequence.to_bytes(8, "big")
        try:
            await partition.write([(CANARY_KEY, value)])
            wrote = True
        except Exception:
            wrote = False
        try:
            stored = partition.get(CANARY_KEY)
            read = stored == value or not wrote  # after a failed write, any answer is an answer
        except Exception:
            read = False
        return wrote, read

    async def round(self) -> None:
        """Probe every partition once and record the outcome in the window of the round's start."""
        now = self.clock()
        for pid, task in list(self._in_flight.items()):
            if task.done():  # a late probe, already counted as failed
                del self._in_flight[pid]
        started: dict[PartitionId, asyncio.Task] = {}
        for pid, partition in self._live().items():
            if pid not in self._in_flight:
                started[pid] = self._in_flight[pid] = asyncio.create_task(self._probe(partition))
        if started:
            await asyncio.wait(started.values(), timeout=self.timeout_s)
        live = self._live()  # a table deleted meanwhile is not a failure: forget it
        for pid in list(self.windows.keys() | self._in_flight.keys()):
            if pid not in live:
                self.windows.pop(pid, None)
                self._failing.discard(pid)
                task = self._in_flight.pop(pid, None)
                if task is not None:
                    task.cancel()
        for pid, task in list(self._in_flight.items()):
            if task.done():
                del self._in_flight[pid]
                wrote, read = task.result() if pid in started else (False, False)
            else:
                wrote = read = False  # still waiting: this round's probe, or an earlier one
            windows = self.windows.get(pid)
            if windows is None:
                windows = self.windows[pid] = AvailabilityWindows()
            windows.record(now, wrote)
            windows.record(now, read)
            self._note(pid, wrote and read)

    def _note(self, pid: PartitionId, ok: bool) -> None:
        # Logged on a change only: a failing partition is probed every second.
        if ok and pid in self._failing:
            self._failing.discard(pid)
            log.warning("canary: partition %s of table %s answers again", pid[1], pid[0])
        elif not ok and pid not in self._failing:
            self._failing.add(pid)
            log.warning("canary: partition %s of table %s failed a probe", pid[1], pid[0])

    def availability(self, pids: Iterable[PartitionId]) -> Availability:
        now = self.clock()
        return availability([self.windows[pid] for pid in pids if pid in self.windows], now)

    async def run(self) -> None:
        """Rounds every ``interval_s``, on a fixed schedule that skips rounds it fell behind on."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.round()
            due += self.interval_s
            now = loop.time()
            if due < now:
                due = now
            await asyncio.sleep(due - now)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._in_flight.clear()
