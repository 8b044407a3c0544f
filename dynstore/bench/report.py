"""What ``dynstore bench`` shows and writes: a table, the headline ratio, JSON and a PNG chart.

JSON document (``--out``), latencies in microseconds::

    {"version": 1,
     "runs": [{"target": "dynstore", "url": "http://...", "workload": "A", "distribution": "zipfian",
               "keys": 10000, "item_size": 1024, "consistent": false, "mode": "open" | "closed",
               "rate": 1000.0 | null, "arrival": "constant", "concurrency": null | 32,
               "duration_s": 10.0, "workers": 2,
               "completed": 9998, "throughput": 999.7, "errors": {"ThrottlingException": 2},
               "misses": 0, "unfinished": 0, "generator_cpu_us_per_request": 95.1,
               "latency_us": {"all": S, "GetItem": S, "PutItem": S},
               "send_lag_us": S,                      (open loop: scheduled send -> written)
               "seconds": [{"second": 0, **S}, ...]}, (by scheduled send time)
              ...],
     "comparisons": [{"rate": 1000.0, "target": "dynstore", "peer": "moto",
                      "p50_ratio": 7.9, "p99_ratio": 11.2, "throughput_ratio": 1.0}, ...]}

    S = {"count", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "mean_us"}

Ratios are peer over target for latencies (above 1: the target is faster) and target over
peer for throughput (above 1: the target does more).

The chart (``--chart``) has latency percentiles per second of each run and, when rates were
swept, percentiles against the offered rate. matplotlib comes with the ``bench`` extra
(``pip install dynstore[bench]``) and is imported only to draw.
"""
from __future__ import annotations

import orjson
from rich import box
from rich.table import Table

from dynstore.bench import histogram
from dynstore.bench.loadgen import Result


def run_record(target: str, result: Result) -> dict:
    plan = result.plan
    return {
        "target": target,
        "url": plan.url,
        "workload": plan.workload,
        "distribution": plan.distribution,
        "keys": plan.keys,
        "item_size": plan.item_size,
        "consistent": plan.consistent,
        "mode": "open" if plan.open_loop else "closed",
        "rate": plan.rate,
        "arrival": plan.arrival if plan.open_loop else None,
        "concurrency": None if plan.open_loop else plan.concurrency,
        "duration_s": plan.duration_s,
        "workers": plan.workers,
        "completed": result.completed,
        "throughput": round(result.throughput, 1),
        "errors": dict(result.errors),
        "misses": result.misses,
        "unfinished": result.unfinished,
        "generator_cpu_us_per_request": round(result.cpu_us_per_request, 1),
        "latency_us": {"all": histogram.summary(result.latency),
                       **{name: histogram.summary(h) for name, h in result.operations.items()
                          if h.get_total_count()}},
        "send_lag_us": histogram.summary(result.send_lag),
        "seconds": [{"second": second, **histogram.summary(h)} for second, h in result.windows.items()],
    }


def comparisons(records: list[dict], target: str, peer: str) -> list[dict]:
    """Peer against target for each rate (or the closed-loop run) both were measured at."""
    by_rate = {(r["target"], r["rate"]): r for r in records}
    out = []
    for record in records:
        other = by_rate.get((peer, record["rate"]))
        if record["target"] != target or other is None:
            continue
        mine, theirs = record["latency_us"]["all"], other["latency_us"]["all"]
        out.append({
            "rate": record["rate"], "target": target, "peer": peer,
            "p50_ratio": round(theirs["p50_us"] / max(mine["p50_us"], 1), 2),
            "p99_ratio": round(theirs["p99_us"] / max(mine["p99_us"], 1), 2),
            "throughput_ratio": round(record["throughput"] / max(other["throughput"], 1e-9), 2),
        })
    return out


def write_json(path: str, records: list[dict], compared: list[dict]) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps({"version": 1, "runs": records, "comparisons": compared}, option=orjson.OPT_INDENT_2))


def _ms(us: float) -> str:
    """Milliseconds to 3 significant digits: 0.245, 12.5, 1340."""
    ms = us / 1000
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def table(records: list[dict]) -> Table:
    out = Table(title="latency in ms (open loop: from the scheduled send)", box=box.SIMPLE_HEAD, padding=(0, 0),
                pad_edge=False)
    # "lag p99": how late the generator itself sent (open loop); when it is near the latencies,
    # the run measured the machine running the generator, not the target.
    for column in ("target", "load", "ops/s", "p50", "p90", "p99", "p99.9", "max", "err", "lag p99", "gen µs"):
        out.add_column(column, justify="left" if column in ("target", "load") else "right", no_wrap=True)
    for r in records:
        s = r["latency_us"]["all"]
        failed = sum(r["errors"].values()) + r["unfinished"]
        out.add_row(r["target"], _load(r), f"{r['throughput']:.0f}", _ms(s["p50_us"]), _ms(s["p90_us"]),
                    _ms(s["p99_us"]), _ms(s["p99_9_us"]), _ms(s["max_us"]), str(failed),
                    _ms(r["send_lag_us"]["p99_us"]) if r["mode"] == "open" else "-",
                    f"{r['generator_cpu_us_per_request']:.0f}")
    return out


def _load(r: dict) -> str:
    """``1000/s`` (constant arrivals), ``1000/s P`` (Poisson) or ``closed x32``."""
    if r["mode"] == "closed":
        return f"closed x{r['concurrency']}"
    return f"{r['rate']:g}/s" + (" P" if r["arrival"] == "poisson" else "")


def one_line(r: dict) -> str:
    s = r["latency_us"]["all"]
    return (f"{r['target']} {r['workload']} {_load(r)}: {r['throughput']:.0f} ops/s, p50 {_ms(s['p50_us'])} ms, "
            f"p99 {_ms(s['p99_us'])} ms, {sum(r['errors'].values())} errors, {r['unfinished']} unfinished")


def headline(compared: list[dict]) -> list[str]:
    lines = []
    for c in compared:
        where = f"at {c['rate']:g} req/s" if c["rate"] is not None else "closed loop"
        lines.append(f"{where}: {c['target']} is {c['p50_ratio']:g}x faster than {c['peer']} at p50, "
                     f"{c['p99_ratio']:g}x at p99; throughput ratio {c['throughput_ratio']:g}")
    return lines


PERCENTILE_STYLES = (("p50_us", "-"), ("p90_us", "--"), ("p99_us", "-."), ("p99_9_us", ":"), ("max_us", (0, (1, 4))))


def chart(path: str, records: list[dict]) -> None:
    """Draw ``records`` to a PNG at ``path``; needs matplotlib (the bench extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["rate"] for r in records if r["rate"] is not None})
    targets = list(dict.fromkeys(r["target"] for r in records))
    colors = {t: f"C{i}" for i, t in enumerate(targets)}
    sweep = len(rates) > 1
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(13 if sweep else 8, 5), squeeze=False)
    over_time = axes[0][0]
    for r in records:
        # One rate: every percentile, a line style each. A sweep: p99 only, a line style per rate.
        styles = PERCENTILE_STYLES if not sweep else (
            ("p99_us", PERCENTILE_STYLES[rates.index(r["rate"]) % len(PERCENTILE_STYLES)][1]),)
        seconds = [w["second"] for w in r["seconds"]]
        load = f"{r['rate']:g}/s" if r["rate"] is not None else "closed"
        for name, style in styles:
            over_time.plot(seconds, [w[name] / 1000 for w in r["seconds"]], linestyle=style,
                           color=colors[r["target"]], label=f"{r['target']} {load} {name[:-3].replace('_', '.')}")
    over_time.set(xlabel="second of the run (by scheduled send)", ylabel="latency (ms)", yscale="log",
                  title="latency percentiles per second")
    over_time.legend(fontsize="small")
    over_time.grid(True, which="both", alpha=0.3)
    if sweep:
        against_rate = axes[0][1]
        for target in targets:
            runs = sorted((r for r in records if r["target"] == target and r["rate"] is not None),
                          key=lambda r: r["rate"])
            for name, style in PERCENTILE_STYLES[:4]:
                against_rate.plot([r["rate"] for r in runs], [r["latency_us"]["all"][name] / 1000 for r in runs],
                                  linestyle=style, marker="o", color=colors[target],
                                  label=f"{target} {name[:-3].replace('_', '.')}")
        against_rate.set(xlabel="offered rate (requests/s)", ylabel="latency (ms)", yscale="log",
                         title="latency percentiles against rate")
        against_rate.legend(fontsize="small")
        against_rate.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
