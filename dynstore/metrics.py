"""The node's Prometheus metrics: every metric, its help text, and the registry holding them.

A node serves its metrics at ``GET /metrics`` on the DynamoDB endpoint's own port, in
Prometheus' text format (server.py). DynamoDB clients only ever POST, so the path is free,
and answering on the event loop that owns the storage means a scrape reads the engines and
B-trees from the one thread allowed to touch them; a separate exporter port would run in a
thread of its own and race them. The endpoint is not authenticated: the figures hold table
names and rates, never keys, items or credentials.

Each ``Metrics`` owns a ``CollectorRegistry``, never prometheus_client's global one: a node
process has one, and a test can run several nodes in one process without their counts
mixing.

Metrics (every name starts ``dynstore_``)::

    front end (server.py)
      request_seconds{table,operation}       histogram  request read -> answer ready, per DynamoDB operation
      request_errors_total{operation,type}   counter    error answers by DynamoDB error name
      http_connections                        gauge      open client connections, read at scrape time
    storage engine (engine.py), all partitions of the node together
      wal_durable_seconds                     histogram  a write batch's wait from append to durable
      wal_group_commit_batches                histogram  batches made durable together, as the engine sees them
      wal_appended_bytes_total                counter    payload bytes appended to the WAL
      engine_apply_seconds                    histogram  applying one group of durable batches to the B-tree
      engine_checkpoint_seconds               histogram  one checkpoint (its _count is the number taken)
    per partition{table,partition}, read from the router at scrape time
      partition_items, partition_bytes        gauge      DynamoDB's ItemCount and TableSizeBytes of the range
      partition_reads_total, _writes_total    counter    key lookups and range scans, and write batches, routed
      btree_cache_hits_total, _misses_total   counter    buffer-pool lookups; hit ratio = rate(hits) /
                                                         (rate(hits) + rate(misses))
      btree_cache_evictions_total             counter    pages evicted from the buffer pool
      btree_cache_bytes, btree_cache_bytes_max gauge     buffer-pool memory in use and its bound
      btree_pages, btree_dirty_pages          gauge      file size in pages, pages changed since the checkpoint

Cardinality is bounded by design. ``table`` is set only on a request that succeeded (so it
names a table that exists, or existed: the labels of a deleted table are dropped), and is
empty for requests that fail or span several tables (BatchGetItem, TransactWriteItems);
``operation`` is empty unless it names an operation the node serves; ``type`` is one of the
error classes in dynstore/api/errors.py. No label carries a key, an item or a client address.

Hot-path cost: counters and histograms are plain numbers updated on the event loop (see
``HistogramSeries``), well under 1 µs an update; the per-partition and buffer-pool figures cost
nothing until scraped. A scrape runs on the loop too and holds it while prometheus_client
formats the text, about 10 µs per sample (a histogram series is 18 samples): 20 tables
with 5 busy operations each is ~2,000 samples and ~20 ms, once per scrape interval.

Throttling has no counter of its own: when admission control refuses a request, its
ProvisionedThroughputExceededException or ThrottlingException is counted in
request_errors_total like every other error.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

# A GetItem is answered in tens of µs, a durable write in 0.5-2 ms, a 1 MB Query or Scan
# page in tens of ms; the buckets resolve each of these and show stalls up to seconds.
REQUEST_SECONDS_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                           250e-3, 500e-3, 1.0, 2.5)
# fdatasync on NVMe takes tens of µs to 1 ms, on cloud block storage a few ms; applying a
# batch to the tree takes µs unless it misses the buffer pool.
STORAGE_SECONDS_BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                           50e-3, 100e-3, 250e-3, 1.0)
# Powers of two up to the most writers one event loop has in flight in practice.
GROUP_COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A checkpoint writes every page dirtied since the last one: from ms to tens of seconds
# for a partition whose WAL reached CHECKPOINT_WAL_BYTES.
CHECKPOINT_SECONDS_BUCKETS = (1e-3, 5e-3, 25e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# --- series updated on the event loop ------------------------------------------------------
#
# prometheus_client's Histogram and Counter take a lock per update (one per bucket touched),
# which costs 5-7 µs per request in the server's loop. Here every update and every scrape run
# on the node's one event loop thread (scrapes are answered by the server on that loop), so a
# series is plain numbers: an observation is a bisect and two additions, and the families
# below hand them to the registry at scrape time.

class HistogramSeries:
    """One histogram series: counts per bucket (the last one +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket: Prometheus' "le".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _Family:
    """A metric family: its series by label values, created on first use, exported when scraped."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._series: dict[tuple[str, ...], object] = {}

    def __call__(self, *values: str):
        series = self._series.get(values)
        if series is None:
            assert len(values) == len(self.labelnames), (self.name, values)
            series = self._series[values] = self._new_series()
        return series

    def forget(self, first: str) -> None:
        """Drop the series whose first label value is ``first``."""
        for values in [v for v in self._series if v[0] == first]:
            del self._series[values]

    def describe(self):
        # Names only, so the registry can refuse a duplicate without reading the series.
        return [self._metric_family()]

    def collect(self):
        family = self._metric_family()
        for values, series in self._series.items():
            self._add(family, list(values), series)
        return [family]


class HistogramFamily(_Family):
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (), *,
                 buckets: tuple[float, ...]):
        super().__init__(name, documentation, labelnames)
        self.buckets = buckets
        self._le = [floatToGoString(bound) for bound in buckets] + ["+Inf"]

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self.buckets)

    def _metric_family(self):
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family, values, series: HistogramSeries):
        cumulative, total = [], 0
        for le, count in zip(self._le, series.counts):
            total += count
            cumulative.append((le, total))
        family.add_metric(values, cumulative, series.sum)


class CounterFamily(_Family):
    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def _metric_family(self):
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family, values, series: CounterSeries):
        family.add_metric(values, series.value)


class StorageMetrics:
    """What the storage engines of one node report as they work (engine.py).

    Without a registry the figures are kept but not exported: an Engine opened outside a
    node (tools, tests of the storage alone) works the same way.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        families = (
            HistogramFamily("dynstore_wal_durable_seconds",
                            "Time a write batch waits from its WAL append until it is durable (group commit, "
                            "fdatasync or io_uring, and the event loop's wake-up).",
                            buckets=STORAGE_SECONDS_BUCKETS),
            HistogramFamily("dynstore_wal_group_commit_batches",
                            "Write batches that became durable together and were applied to the B-tree in "
                            "one step.", buckets=GROUP_COMMIT_BUCKETS),
            CounterFamily("dynstore_wal_appended_bytes", "Payload bytes of the write batches appended to the WAL."),
            HistogramFamily("dynstore_engine_apply_seconds",
                            "Time to apply one group of durable write batches to the B-tree.",
                            buckets=STORAGE_SECONDS_BUCKETS),
            HistogramFamily("dynstore_engine_checkpoint_seconds",
                            "Time of one B-tree checkpoint (dirty pages written and synced, meta page switched, "
                            "WAL segments below it dropped).", buckets=CHECKPOINT_SECONDS_BUCKETS),
        )
        (self.durable_seconds, self.group_commit_batches, self.appended_bytes, self.apply_seconds,
         self.checkpoint_seconds) = (family() for family in families)
        if registry is not None:
            for family in families:
                registry.register(family)


class PartitionFigures(NamedTuple):
    """One partition's figures at scrape time (built by the operations' store.py)."""

    table: str
    partition: int  # position of the partition in its table's key order
    items: int
    bytes: int
    reads: int
    writes: int
    tree: dict  # BTree.stats()


# (name, family, help, figure) of every per-partition metric.
_PARTITION_METRICS = (
    ("dynstore_partition_items", GaugeMetricFamily, "Items stored in the partition (DynamoDB's ItemCount).",
     lambda f: f.items),
    ("dynstore_partition_bytes", GaugeMetricFamily,
     "Size of the partition's items as DynamoDB counts it (TableSizeBytes).", lambda f: f.bytes),
    ("dynstore_partition_reads", CounterMetricFamily,
     "Reads routed to the partition: one per key lookup and per range scan.", lambda f: f.reads),
    ("dynstore_partition_writes", CounterMetricFamily, "Write batches routed to the partition.",
     lambda f: f.writes),
    ("dynstore_btree_cache_hits", CounterMetricFamily, "B-tree page lookups served by the buffer pool.",
     lambda f: f.tree["cache_hits"]),
    ("dynstore_btree_cache_misses", CounterMetricFamily, "B-tree page lookups that read the page from disk.",
     lambda f: f.tree["cache_misses"]),
    ("dynstore_btree_cache_evictions", CounterMetricFamily, "Pages evicted from the B-tree's buffer pool.",
     lambda f: f.tree["cache_evictions"]),
    ("dynstore_btree_cache_bytes", GaugeMetricFamily, "Memory held by the B-tree's buffer pool.",
     lambda f: f.tree["cache_bytes"]),
    ("dynstore_btree_cache_bytes_max", GaugeMetricFamily, "Bound on the memory of the B-tree's buffer pool.",
     lambda f: f.tree["cache_bytes_max"]),
    ("dynstore_btree_pages", GaugeMetricFamily, "Pages in the B-tree's file.", lambda f: f.tree["pages"]),
    ("dynstore_btree_dirty_pages", GaugeMetricFamily,
     "Buffer-pool pages changed since the last checkpoint.", lambda f: f.tree["dirty_pages"]),
)


class PartitionCollector:
    """Reads every partition's figures when scraped, so serving requests costs nothing."""

    def __init__(self, figures: Callable[[], Iterable[PartitionFigures]]):
        self._figures = figures

    def describe(self):
        # Names only, so the registry can refuse duplicates without walking the partitions.
        return [family(name, help_text, labels=("table", "partition"))
                for name, family, help_text, _ in _PARTITION_METRICS]

    def collect(self):
        families = self.describe()
        for figures in self._figures():
            labels = (figures.table, str(figures.partition))
            for family, (_, _, _, figure) in zip(families, _PARTITION_METRICS):
                family.add_metric(labels, figure(figures))
        return families


class Metrics:
    """Every metric of one node, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._request_seconds = HistogramFamily(
            "dynstore_request_seconds",
            "Time from a complete request to its answer (authentication, validation, the operation, "
            "encoding). table is empty when the request failed or spans several tables.",
            ("table", "operation"), buckets=REQUEST_SECONDS_BUCKETS)
        self._request_errors = CounterFamily(
            "dynstore_request_errors",
            "Error answers by DynamoDB error name; operation is empty when the request named no "
            "operation this node serves.", ("operation", "type"))
        self.registry.register(self._request_seconds)
        self.registry.register(self._request_errors)
        self.connections = Gauge("dynstore_http_connections", "Open client connections.", registry=self.registry)
        self.storage = StorageMetrics(self.registry)

    def count_request(self, table: str, operation: str, error_name: str, seconds: float) -> None:
        """One answered request; ``error_name`` is empty when it succeeded."""
        self._request_seconds(table, operation).observe(seconds)
        if error_name:
            self._request_errors(operation, error_name).inc()
        elif operation == "DeleteTable":
            # The table is gone: drop its series, so churning tables do not grow the registry.
            self._request_seconds.forget(table)

    def count_error(self, operation: str, error_name: str) -> None:
        """An error answered without running an operation (bad HTTP, too many connections)."""
        self._request_errors(operation, error_name).inc()

    def watch_partitions(self, figures: Callable[[], Iterable[PartitionFigures]]) -> None:
        """Export ``figures()`` (every partition of the node) at each scrape."""
        self.registry.register(PartitionCollector(figures))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (content type ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
