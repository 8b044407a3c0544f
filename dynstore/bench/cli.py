"""``dynstore bench``: measure a DynamoDB endpoint, side by side with a peer, in one command.

Order of a run: create the table on every endpoint when missing and load the keys
(``--load``, BatchWriteItem); then for each rate of ``--rates`` (or ``--rate``, or the one
closed-loop run of ``--closed``) run the endpoint, then the peer, one after the other, with
the same seed, so both see the same arrival schedule and the same keys in the same order.
They never run at the same time: on a small machine they would compete for the cores and
each would measure the other.

``--compare moto`` (or ``--compare`` alone) starts ``moto_server -p <free port>`` as the peer
and stops it at the end; ``--compare floor`` starts the floor (floor.py: answers at once,
without a table), what the machine and the generator cost before any endpoint does work;
``--compare URL`` uses a running endpoint.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dynstore import limits
from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.bench.workloads import ARRIVALS, DISTRIBUTIONS, WORKLOADS

DEFAULT_CHART = "bench.png"
PEER_START_S_MAX = 30.0  # moto_server imports a lot before it listens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server():
    """A moto_server on a free loopback port for the length of the block; yields its URL."""
    executable = shutil.which("moto_server")
    if executable is None:
        raise click.UsageError("--compare moto needs moto_server on PATH: pip install 'moto[server]'")
    port = _free_port()
    return _server("moto_server", [executable, "-H", "127.0.0.1", "-p", str(port)], port)


def _floor_server(item_size: int):
    """The floor (floor.py) on a free loopback port for the length of the block; yields its URL."""
    port = _free_port()
    return _server("the floor server", [sys.executable, "-m", "dynstore.bench.floor", "--port", str(port),
                                        "--item-size", str(item_size)], port)


@contextlib.contextmanager
def _server(name: str, argv: list[str], port: int):
    """The process ``argv``, serving HTTP on loopback ``port``, for the length of the block;
    yields its URL once it answers."""
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + PEER_START_S_MAX
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answered: listening
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException(f"{name} did not start on port {port}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rates(rate: float, rates: str | None, closed: bool) -> list[float | None]:
    if closed:
        return [None]
    if rates is None:
        return [rate]
    try:
        out = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"expected rates like 500,1000,2000, not {rates!r}", param_hint="--rates") from None
    if not out or min(out) <= 0:
        raise click.BadParameter("rates must be positive numbers", param_hint="--rates")
    return out


@click.command()
@click.option("--endpoint", default="http://127.0.0.1:8000", show_default=True, help="The endpoint to measure.")
@click.option("--label", default="dynstore", show_default=True, help="Its name in the report.")
@click.option("--compare", "peer", is_flag=False, flag_value="moto", default=None,
              help="Also run the same workload against this endpoint URL; 'moto' or no value starts moto_server, "
                   "'floor' a server that answers at once.")
@click.option("--workload", type=click.Choice(list(WORKLOADS)), default="A", show_default=True,
              help="A: 50/50 get/put, B: 95/5, C: get only, W: put only.")
@click.option("--distribution", type=click.Choice(DISTRIBUTIONS), default="zipfian", show_default=True)
@click.option("--keys", type=click.IntRange(1), default=10_000, show_default=True, help="Items in the table.")
@click.option("--item-size", type=click.IntRange(1), default=1024, show_default=True, help="Bytes per item.")
@click.option("--rate", type=click.FloatRange(0, min_open=True), default=1000.0, show_default=True,
              help="Open loop: requests per second.")
@click.option("--rates", default=None, help="Open loop at each of these rates in turn, e.g. 500,1000,2000.")
@click.option("--arrival", type=click.Choice(ARRIVALS), default="constant", show_default=True,
              help="Gaps between sends: fixed, or exponential (Poisson arrivals).")
@click.option("--closed", is_flag=True, help="Closed loop instead: --concurrency requests always in flight.")
@click.option("--concurrency", type=click.IntRange(1), default=32, show_default=True)
@click.option("--duration", type=click.FloatRange(0, limits.BENCH_DURATION_S_MAX, min_open=True), default=10.0,
              show_default=True, help="Seconds per run.")
@click.option("--consistent/--eventual", default=False, show_default=True, help="ConsistentRead of GetItem.")
@click.option("--load/--no-load", default=True, show_default=True, help="Write every key before measuring.")
@click.option("--table", default="bench", show_default=True, help="Created (on demand) when missing.")
@click.option("--workers", type=click.IntRange(1), default=os.cpu_count() or 1, show_default=True,
              help="Generator processes.")
@click.option("--connections", type=click.IntRange(1, limits.BENCH_CONNECTIONS_PER_WORKER_MAX),
              default=limits.BENCH_CONNECTIONS_PER_WORKER_MAX, show_default=True,
              help="Most connections per generator process.")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--access-key-id", envvar="DYNSTORE_ACCESS_KEY_ID", default=DEVELOPMENT_ACCESS_KEY_ID,
              help="Default: $DYNSTORE_ACCESS_KEY_ID, else the development key.")
@click.option("--secret-access-key", envvar="DYNSTORE_SECRET_ACCESS_KEY", default=DEVELOPMENT_SECRET_ACCESS_KEY,
              show_default=False, help="Default: $DYNSTORE_SECRET_ACCESS_KEY, else the development secret.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", default="bench.json", show_default=True, help="JSON results ('' for none).")
@click.option("--chart", default=None,
              help=f"PNG chart ('' for none). Default: {DEFAULT_CHART} when matplotlib is installed (the bench extra).")
def bench(endpoint, label, peer, workload, distribution, keys, item_size, rate, rates, arrival, closed,
          concurrency, duration, consistent, load, table, workers, connections, region, access_key_id,
          secret_access_key, seed, out, chart):
    """Measure latency and throughput of a DynamoDB endpoint, open loop (latency from the
    scheduled send, so queueing shows) or closed loop (--closed, to find saturation).

    With --compare, the same workload runs against a peer endpoint too, one after the other at
    each rate, and the ratio of the two is printed last.
    """
    # The generator and the report need the ``bench`` extra (hdrhistogram, matplotlib); imported
    # here so that the rest of the dynstore command works without it.
    from dynstore.bench import loadgen, report

    console = Console()
    chart = _chart_path(console, chart)
    with contextlib.ExitStack() as stack:
        targets = [(label, endpoint)]
        if peer is not None:
            if peer == "moto":
                with console.status("starting moto_server"):
                    targets.append(("moto", stack.enter_context(_moto_server())))
            elif peer == "floor":
                targets.append(("floor", stack.enter_context(_floor_server(item_size))))
            else:
                targets.append((urlsplit(peer).netloc or peer, peer))
        try:
            plans = {name: {r: loadgen.Plan(url=url, table=table, workload=workload, keys=keys, item_size=item_size,
                                            distribution=distribution, consistent=consistent,
                                            duration_s=duration, rate=r, arrival=arrival, concurrency=concurrency,
                                            workers=workers, connections=connections, seed=seed, region=region,
                                            key_id=access_key_id, secret=secret_access_key)
                            for r in _rates(rate, rates, closed)}
                     for name, url in targets}
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        records = []
        try:
            _prepare(console, loadgen, plans, load)
            for r in _rates(rate, rates, closed):
                for name, _ in targets:
                    record = report.run_record(name, _run(console, loadgen, name, plans[name][r]))
                    console.print(report.one_line(record))
                    records.append(record)
        except loadgen.BenchError as e:
            raise click.ClickException(str(e)) from None
    console.print(report.table(records))
    compared = report.comparisons(records, targets[0][0], targets[1][0]) if len(targets) > 1 else []
    if out:
        report.write_json(out, records, compared)
        console.print(f"results: {out}")
    if chart:
        report.chart(chart, records)
        console.print(f"chart: {chart}")
    for line in report.headline(compared):
        console.print(f"[bold]{line}[/bold]")


def _chart_path(console: Console, chart: str | None) -> str:
    """Where the chart goes ('' for nowhere), decided before a run rather than after it: a chart asked
    for without matplotlib is a usage error; the default one is skipped, with a word why."""
    if chart == "":
        return chart
    if importlib.util.find_spec("matplotlib") is not None:
        return chart or DEFAULT_CHART
    if chart is not None:
        raise click.UsageError("--chart needs matplotlib: pip install 'dynstore[bench]', or pass --chart ''")
    console.print("no chart: matplotlib is not installed (pip install 'dynstore[bench]')", markup=False)
    return ""


def _prepare(console: Console, loadgen, plans: dict, load: bool) -> None:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                  console=console, transient=True) as progress:
        for name, by_rate in plans.items():
            if name == "floor":
                continue  # it has no tables
            plan = next(iter(by_rate.values()))
            task = progress.add_task(f"{name}: creating table {plan.table}" + (", loading keys" if load else ""),
                                     total=plan.keys if load else 1)
            loadgen.prepare(plan, load=load, progress=lambda n: progress.update(task, completed=n))
            progress.update(task, completed=plan.keys if load else 1)


def _run(console: Console, loadgen, name: str, plan):
    load = f"{plan.rate:g} req/s" if plan.open_loop else f"closed loop x{plan.concurrency}"
    with Progress(TextColumn(f"{name} {plan.workload} {load}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[counts]}"), console=console, transient=True) as progress:
        task = progress.add_task("", total=plan.duration_s, counts="")

        def show(completed: int, failed: int, elapsed: float) -> None:
            rate_now = completed / elapsed if elapsed > 0 else 0.0
            progress.update(task, completed=min(elapsed, plan.duration_s),
                            counts=f"{completed} ok, {failed} failed, {rate_now:.0f}/s")

        return loadgen.run(plan, show)
