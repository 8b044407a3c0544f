"""Latency histograms: HdrHistogram in microseconds, merged across generator processes.

Each generator process records into its own histograms and hands them to the parent in
HdrHistogram's compressed, base64 encoding (the ``.hlog`` payload format, a few hundred
bytes to a few KB each); the parent decodes and adds them. Percentiles come from the merged
histogram, never from averaging per-process percentiles, which is meaningless.

Values are exact to 3 significant digits (``limits.BENCH_LATENCY_DIGITS``) from 1 µs to a
minute; a larger value is clamped to the maximum so that one pathological request is still
counted rather than raising in the middle of a run.
"""
from __future__ import annotations

from typing import Iterable

from hdrh.histogram import HdrHistogram

from dynstore import limits

# The percentiles every report shows, and their names in JSON.
PERCENTILES = ((50.0, "p50_us"), (90.0, "p90_us"), (99.0, "p99_us"), (99.9, "p99_9_us"))


def new() -> HdrHistogram:
    return HdrHistogram(1, limits.BENCH_LATENCY_US_MAX, limits.BENCH_LATENCY_DIGITS)


def record(histogram: HdrHistogram, seconds: float) -> None:
    """Record a latency given in seconds."""
    us = int(seconds * 1_000_000)
    histogram.record_value(1 if us < 1 else min(us, limits.BENCH_LATENCY_US_MAX))


def merge(encoded: Iterable[bytes]) -> HdrHistogram:
    """One histogram holding every value of the ``HdrHistogram.encode()`` payloads given."""
    total = new()
    for payload in encoded:
        total.decode_and_add(payload)
    return total


def summary(histogram: HdrHistogram) -> dict:
    """Count, percentiles, max and mean in microseconds (zeros when nothing was recorded)."""
    out = {"count": histogram.get_total_count()}
    if out["count"] == 0:
        return {**out, **{name: 0 for _, name in PERCENTILES}, "max_us": 0, "mean_us": 0.0}
    for percentile, name in PERCENTILES:
        out[name] = histogram.get_value_at_percentile(percentile)
    out["max_us"] = histogram.get_max_value()
    out["mean_us"] = round(histogram.get_mean_value(), 1)
    return out
