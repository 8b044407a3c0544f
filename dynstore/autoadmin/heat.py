"""Hot partitions: a partition that takes a large share of a node's requests, fast, for long.

DynamoDB splits a partition for heat as well as for size, so that the two halves can be led
from different nodes and neither is held to one log's rate. Here a partition is hot on a
node when, between two readings of the node's request counters, its requests were at least
``share_min`` of all the node's requests and came at ``rate_min`` per second or more; it is
split once it has stayed hot for ``sustain_s`` (a burst does not split a table).

The split key comes from the keys the partition was asked for lately (a sample the node
keeps, router/replicated.py): the partition-key boundary at the median of the sample, so
each half takes about half of the requests, whatever their share of the bytes.

The same readings give each group's request rate on each node over the last ``window_s``,
which the control plane evens out leads and tables by (balance.py).

Pure: counters and samples come in with the time they were read; no clock, no I/O.
"""
from __future__ import annotations

from collections import deque

from dynstore.api.operations.schema import ITEMS, Table


def _deltas(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    # A counter that went down was reset (the node restarted): it counts from zero.
    return {group: count - before.get(group, 0) if count >= before.get(group, 0) else count
            for group, count in after.items()}


class HeatTracker:
    def __init__(self, share_min: float, rate_min: float, sustain_s: float, window_s: float = 0.0):
        self.share_min = share_min
        self.rate_min = rate_min
        self.sustain_s = sustain_s
        self.window_s = window_s
        # node -> (time, group -> requests) of its readings, the oldest kept at least window_s old
        self._readings: dict[int, deque[tuple[float, dict[int, int]]]] = {}
        self._hot_since: dict[tuple[int, int], float] = {}  # (node, group) -> when it became hot

    def observe(self, now: float, node: int, counts: dict[int, int]) -> None:
        """The request counters of every group on ``node``, read at ``now``."""
        readings = self._readings.setdefault(node, deque())
        previous = readings[-1] if readings else None
        if previous is not None and now <= previous[0]:
            readings.clear()  # a clock that went back: start over
            previous = None
        readings.append((now, dict(counts)))
        while len(readings) > 2 and now - readings[1][0] >= self.window_s:
            readings.popleft()
        if previous is None:
            return
        elapsed = now - previous[0]
        deltas = _deltas(previous[1], counts)
        total = sum(deltas.values())
        for group, delta in deltas.items():
            hot = total > 0 and delta / total >= self.share_min and delta / elapsed >= self.rate_min
            if hot:
                self._hot_since.setdefault((node, group), now)
            else:
                self._hot_since.pop((node, group), None)
        for node_group in [k for k in self._hot_since if k[0] == node and k[1] not in counts]:
            del self._hot_since[node_group]

    def rates(self, node: int) -> dict[int, float]:
        """Requests a second of each group on ``node`` from its oldest kept reading (window_s
        before the newest, once it was read that long) to its newest."""
        readings = self._readings.get(node, ())
        if len(readings) < 2:
            return {}
        (start, before), (end, after) = readings[0], readings[-1]
        return {group: n / (end - start) for group, n in _deltas(before, after).items()}

    def hot(self, now: float) -> list[tuple[int, int]]:
        """(node, group) of each partition that has stayed hot for sustain_s."""
        return sorted(k for k, since in self._hot_since.items() if now - since >= self.sustain_s)

    def forget(self, group: int) -> None:
        """The group was split: its halves start cold."""
        for node_group in [k for k in self._hot_since if k[1] == group]:
            del self._hot_since[node_group]


def hot_split_key(desc: dict, keys: list[bytes], start: bytes, end: bytes | None) -> bytes | None:
    """The partition-key boundary at the median of the sampled item storage ``keys`` within
    [start, end), or None when the sample does not span two partition keys."""
    schema = Table(desc).schema
    inside = sorted(k for k in keys if k.startswith(ITEMS) and start <= k and (end is None or k < end))
    if not inside:
        return None
    boundaries = [ITEMS + schema.partition_prefix(k[len(ITEMS):]) for k in inside]
    median = boundaries[len(boundaries) // 2]
    if median > start and median > boundaries[0]:
        return median
    # Most of the sample is the first partition key: cut just after it, if anything follows.
    following = [b for b in boundaries if b > median]
    return following[0] if following else None
