"""The availability canary: every partition of every table, probed at a steady rate.

Inside the serving process, each round (``limits.CANARY_INTERVAL_S``) sends each partition it
probes a probe: a durable write of a fresh value to the partition's canary key, then a read
that must return that value. The probes of a round are spread evenly over it: sent at one
instant, the writes of many partitions were a burst, once a round, that clients' requests
queued behind (it more than doubled PutItem's p99 beside a table of 30 partitions). Both go
through the ``Partition`` face (router/partition.py), the path item writes and reads take, so
a probe fails when a client's request would: the disk is full or failing, the engine is
closed after a fault, a leader loses its group while the write is in flight, or the write
does not become durable within ``limits.CANARY_PROBE_TIMEOUT_S``. A partition whose probe is
still outstanding at the next round fails that round too, without a second probe piling up
behind the first.

Who probes what (``partitions``, a function of the router):

* ``every_partition`` — a single node (router/local.py) probes all its partitions, each named
  ``(TableId, position in key order)``.
* ``led_partitions`` — a cluster node (router/cluster.py) probes the partitions whose
  replication group it leads, each named ``(TableId, group id)``, as a write forwarded to
  that leader runs (node/routing.py): ``read_barrier``, then a write replicated to a quorum and
  applied, then a read of the leader's tree. A leader that lost its group before the write
  (``read_barrier`` says NotLeader) skips the round: the new leader probes. A write refused
  because the group split under it (StaleRange, not applied) is sent once more, as the
  request router routes a client's write again. The figures of a group stay with the node
  that measured them when leadership moves; ``dynstore status`` adds up, per window, the
  figures of every node (dynstore/status.py). What this does not see: a partition with no
  leader at all (an election after the leader's node died) is probed by no one, so those
  seconds are missing from its windows rather than counted as failed; a client's write waits
  for the election (up to ``limits.FORWARD_WAIT_S``) in that time.

Availability is measured as DynamoDB states its own: per fixed 5-minute window
(``limits.CANARY_WINDOW_S``, aligned to the clock), successful requests / requests; a day's
availability is the mean of its windows' availabilities (DynamoDB's "monthly uptime
percentage" is 100% minus the average error rate of the 5-minute intervals). The write and
the read of a probe count as one request each. The last day of windows is kept in memory
per partition (``limits.CANARY_WINDOWS_KEPT``) and forgotten with the table; nothing is
persisted, so a restart starts the figures afresh.

On disk, the canary key is ``schema.CANARY_KEY`` (0xFF), a key space of its own in each
partition's Engine or replica tree: value = the probe's sequence number, 8 bytes big-endian.
Item keys start with 0x01 and index entries with 0x02, so no user key can reach it; Query,
Scan and TTL expiry scan only those spaces, ItemCount / TableSizeBytes come from the
statistics record that only item writes change (operations/store.py), and a split leaves the
key in the lower part (operations/split.py). The probes do count in the partition's
``dynstore_partition_reads_total`` / ``_writes_total`` (one each per round).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import time
from typing import Awaitable, Callable, Iterable, NamedTuple

from dynstore import limits
from dynstore.api.operations.schema import CANARY_KEY
from dynstore.replication.errors import NotLeader, StaleRange

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

    __slots__ = ("window_s", "_windows")

    def __init__(self, window_s: float = limits.CANARY_WINDOW_S, kept: int = limits.CANARY_WINDOWS_KEPT):
        self.window_s = window_s
        self._windows: collections.deque[list] = collections.deque(maxlen=kept)  # [start, successes, requests]

    def record(self, now: float, ok: bool) -> None:
        start = now - now % self.window_s
        # A clock stepped back lands in the newest window rather than reordering the history.
        if not self._windows or self._windows[-1][0] < start:
            self._windows.append([start, 0, 0])
        window = self._windows[-1]
        window[1] += ok
        window[2] += 1

    def windows(self) -> list[tuple[float, int, int]]:
        """(start, successes, requests) of each window kept, oldest first (at most ``kept``; an
        idle series may still hold windows older than a day, which ``availability`` leaves out)."""
        return [tuple(w) for w in self._windows]


def availability(windows: Iterable[tuple[float, int, int]], now: float, window_s: float = limits.CANARY_WINDOW_S,
                 kept: int = limits.CANARY_WINDOWS_KEPT) -> Availability:
    """The availability of ``windows`` (start, successes, requests) taken together: one partition's,
    every partition's of a node, or the windows several nodes measured of one partition; windows
    with the same start add up. Only the day ending with ``now``'s window counts."""
    current = now - now % window_s
    first = current - (kept - 1) * window_s
    buckets: dict[float, list[int]] = {}
    for start, successes, requests in windows:
        if start >= first:
            bucket = buckets.setdefault(start, [0, 0])
            bucket[0] += successes
            bucket[1] += requests
    ok, requests = buckets.get(current, (0, 0))
    ratios = [s / r for s, r in buckets.values() if r]
    return Availability(current, ok / requests if requests else None, requests,
                        sum(ratios) / len(ratios) if ratios else None, sum(r for _, r in buckets.values()))


# A partition's name in the canary: (TableId, its position in key order) on a single node,
# (TableId, its replication group) in a cluster.
PartitionId = tuple[str, int]
# Sends one probe carrying the value given; (write succeeded, read succeeded), or None when the
# probe was not sent (another node probes the partition now). Raises only on cancellation.
Probe = Callable[[bytes], Awaitable["tuple[bool, bool] | None"]]


async def probe_partition(partition, value: bytes) -> tuple[bool, bool]:
    """A durable write of ``value`` to the canary key of ``partition``, then a read of it.
    StaleRange (the write was refused, not applied) is raised, for the caller to send it again."""
    try:
        await partition.write([(CANARY_KEY, value)])
        wrote = True
    except StaleRange:
        raise
    except Exception:  # noqa: BLE001 - any failure of the write is what the probe measures
        wrote = False
    try:
        stored = partition.get(CANARY_KEY)
        read = stored == value or not wrote  # after a failed write, any answer is an answer
    except Exception:  # noqa: BLE001
        read = False
    return wrote, read


def every_partition(router) -> dict[PartitionId, Probe | None]:
    """Every partition of a single node (router/local.py), each probed here."""
    partitions = {}
    for name in router.table_names():
        desc = router.table(name)
        for number, partition in enumerate(router.partitions(desc)):
            partitions[(desc["TableId"], number)] = functools.partial(probe_partition, partition)
    return partitions


async def _probe_as_leader(group, value: bytes) -> tuple[bool, bool] | None:
    try:
        await group.read_barrier()
    except NotLeader:
        return None
    for _ in range(2):  # a write refused by a split is sent once more, as a client's is routed again
        try:
            return await probe_partition(group.view(), value)
        except StaleRange:
            continue
    return False, True


def led_partitions(router) -> dict[PartitionId, Probe | None]:
    """Every partition of a cluster node (router/cluster.py): those whose group this node leads
    probed here, the others (None) probed by their leaders."""
    partitions = {}
    for name in router.table_names():
        desc = router.table(name)
        for group in router.table_groups(desc):
            partitions[(desc["TableId"], group.group)] = (
                functools.partial(_probe_as_leader, group) if group.is_leader() else None)
    return partitions


async def _after(delay: float, probe: Probe, value: bytes) -> tuple[bool, bool] | None:
    if delay:
        await asyncio.sleep(delay)
    return await probe(value)


class Canary:
    """Probes the partitions ``partitions(router)`` names; ``windows`` holds the results."""

    def __init__(self, router, *, partitions: Callable[[object], dict[PartitionId, Probe | None]] = every_partition,
                 clock: Callable[[], float] = time.time, interval_s: float = limits.CANARY_INTERVAL_S,
                 timeout_s: float = limits.CANARY_PROBE_TIMEOUT_S):
        self.router = router
        self.partitions = partitions
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.windows: dict[PartitionId, AvailabilityWindows] = {}
        self._in_flight: dict[PartitionId, asyncio.Task] = {}
        self._failing: set[PartitionId] = set()
        self._sequence = 0
        self._task: asyncio.Task | None = None

    async def round(self) -> None:
        """Probe each partition this node probes once, and record the outcome in the window of
        the round's start."""
        now = self.clock()
        for pid, task in list(self._in_flight.items()):
            if task.done():  # a late probe, already counted as failed
                del self._in_flight[pid]
        due = [(pid, probe) for pid, probe in self.partitions(self.router).items()
               if probe is not None and pid not in self._in_flight]
        # Spread over the round: the probes of many partitions at one instant would be a burst
        # of writes that clients' requests queue behind.
        gap = self.interval_s / len(due) if due else 0.0
        started: dict[PartitionId, asyncio.Task] = {}
        for i, (pid, probe) in enumerate(due):
            self._sequence += 1
            started[pid] = self._in_flight[pid] = asyncio.create_task(
                _after(i * gap, probe, self._sequence.to_bytes(8, "big")))
        if started:
            await asyncio.wait(started.values(), timeout=self.timeout_s + gap * (len(started) - 1))
        partitions = self.partitions(self.router)  # a table deleted meanwhile is not a failure: forget it
        for pid in list(self.windows.keys() | self._in_flight.keys()):
            if pid not in partitions:
                self.windows.pop(pid, None)
                self._failing.discard(pid)
                task = self._in_flight.pop(pid, None)
                if task is not None:
                    task.cancel()
        for pid, task in list(self._in_flight.items()):
            done = task.done()
            if done:
                del self._in_flight[pid]
            if pid in started:
                outcome = task.result() if done else (False, False)
                if outcome is None:
                    continue  # not sent: the partition's new leader probes it
            elif partitions[pid] is not None:
                outcome = (False, False)  # an earlier probe, outstanding at this round's start: failed again
            else:
                continue  # an earlier probe of a group led elsewhere now: counted in the round it started
            wrote, read = outcome
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

    def measured(self, pid: PartitionId) -> list[tuple[float, int, int]]:
        """The windows of ``pid`` this node measured: (start, successes, requests), oldest first."""
        windows = self.windows.get(pid)
        return [] if windows is None else windows.windows()

    def availability(self, pids: Iterable[PartitionId]) -> Availability:
        return availability(itertools.chain.from_iterable(map(self.measured, pids)), self.clock())

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
