"""The load generator measured against servers whose latency is known because it is injected.

The server here is a few lines of asyncio on real sockets in a thread of the test process:
it answers DynamoDB-shaped responses after a delay drawn from a seeded distribution, timed
with the same timerfd wake-ups the generator uses (asyncio's own timers are rounded to
milliseconds, which would blur a 5 ms delay by 20%). In serial mode it is a single FIFO
server: each response leaves one service time after the previous one, which is what an
overloaded server looks like.

Tolerances: the generator can never measure less than the server waited (the lower bounds,
less the sampling error of a percentile, 0.1 ms at these counts). On top of the injected
delay come the generator's and the machine's own delays (the upper bounds): 3 ms, plus how
late the generator sent (its send lag) and how late the server woke up to answer, each at
the same percentile: on a busy 2-core machine both are descheduled for milliseconds at a time.
"""
from __future__ import annotations

import asyncio
import importlib.util
import random
import socket
import threading
import time

import httptools
import pytest
import uvloop
from click.testing import CliRunner

from dynstore.bench import histogram
from dynstore.bench.loadgen import Plan, run
from timer import Timer
from dynstore.bench.workloads import Requests, WORKLOADS, make_filler
from dynstore.api.values import item_size
from dynstore.cli import main

GET_RESPONSE = b'{"Item":{"pk":{"S":"user0000000001"},"data":{"S":"x"}}}'


class _Exchange(asyncio.Protocol):
    def __init__(self, server: "DelayServer"):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.target = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_header(self, name, value):
        if name.lower() == b"x-amz-target":
            self.target = value

    def on_message_complete(self):
        asyncio.get_running_loop().create_task(self.server.answer(self.transport, self.target))


class DelayServer:
    """DynamoDB-shaped answers after ``delay()`` seconds; ``serial`` makes it one FIFO server."""

    def __init__(self, delay, *, serial: bool = False, close_every: int = 0, drop_every: int = 0):
        self.delay = delay
        self.serial = serial
        self.close_every = close_every  # every n-th answer says Connection: close, and closes
        self.drop_every = drop_every  # every n-th request gets no answer: its connection is closed
        self.requests = 0
        self.free_at = 0.0  # serial mode: when the server finishes what it was given so far
        self.late = histogram.new()  # how much later than planned each answer left
        self.port = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=uvloop.run, args=(self._serve(),), daemon=True)

    async def _serve(self):
        loop = asyncio.get_running_loop()
        self.timer = Timer(loop)
        self._stop = loop.create_future()
        server = await loop.create_server(lambda: _Exchange(self), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._loop = loop
        self._ready.set()
        await self._stop
        server.close()
        self.timer.close()

    async def answer(self, transport, target: bytes):
        now = time.monotonic()
        if self.serial:
            self.free_at = max(now, self.free_at) + self.delay()
            done = self.free_at
        else:
            done = now + self.delay()
        await self.timer.sleep_until(done)
        histogram.record(self.late, time.monotonic() - done)
        self.requests += 1
        if self.drop_every and self.requests % self.drop_every == 0:
            transport.close()
            return
        close = self.close_every and self.requests % self.close_every == 0
        body = GET_RESPONSE if target.endswith(b"GetItem") else b"{}"
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n%s"
                        b"Content-Length: %d\r\n\r\n%s" % (b"Connection: close\r\n" if close else b"", len(body), body))
        if close:
            transport.close()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


def plan(url: str, **overrides) -> Plan:
    settings = dict(url=url, workload="A", keys=1000, duration_s=3.0, rate=400.0, workers=2,
                    key_id="AKIDBENCHTEST", secret="secret")
    settings.update(overrides)
    return Plan(**settings)


def ms(us: int) -> float:
    return us / 1000


def slack_ms(result, server, percentile: float) -> float:
    """The upper tolerance at ``percentile``: 3 ms plus the generator's and the server's lateness there."""
    return 3.0 + ms(result.send_lag.get_value_at_percentile(percentile) + server.late.get_value_at_percentile(percentile))


def test_fixed_delay_is_measured():
    with DelayServer(lambda: 0.005) as server:
        result = run(plan(server.url))
    s = histogram.summary(result.latency)
    print("fixed 5 ms:", s, "send lag:", histogram.summary(result.send_lag), "server late:",
          histogram.summary(server.late))
    assert s["count"] == result.completed and not result.errors and result.unfinished == 0
    assert result.completed == 400 * 3  # every scheduled request, no more, no fewer
    assert result.misses == 0
    # Nothing can answer sooner than the server waited; what comes on top is the generator's
    # and the machine's own delay, small at the median, noisy in the tail on a busy machine.
    assert ms(result.latency.get_min_value()) >= 5.0
    assert ms(s["p50_us"]) <= 5.0 + slack_ms(result, server, 50)
    assert ms(s["p90_us"]) <= 5.0 + slack_ms(result, server, 90)
    # Two processes' windows merge into one per second, holding every request.
    assert sorted(result.windows) == [0, 1, 2]
    assert sum(h.get_total_count() for h in result.windows.values()) == result.completed
    assert [h.get_total_count() for h in result.windows.values()] == [400, 400, 400]


def test_uniform_delay_percentiles():
    rng = random.Random(7)
    with DelayServer(lambda: rng.uniform(0.002, 0.010)) as server:
        result = run(plan(server.url, arrival="poisson", rate=600.0, workers=1))
    s = histogram.summary(result.latency)
    print("uniform 2-10 ms:", s, "send lag:", histogram.summary(result.send_lag), "server late:",
          histogram.summary(server.late))
    assert 1400 <= result.completed <= 2200  # Poisson count of mean 1800: 9 standard deviations
    # Uniform(2, 10) ms: percentile p is at 2 + 8 p ms.
    for percentile, name in ((50, "p50_us"), (90, "p90_us")):
        expected = 2.0 + 8.0 * percentile / 100
        assert expected - 0.3 <= ms(s[name]) <= expected + slack_ms(result, server, percentile), (name, s[name])
    assert ms(s["p99_us"]) >= 9.92 - 0.3
    assert ms(result.latency.get_min_value()) >= 2.0
    assert ms(s["max_us"]) >= 9.9


def test_open_loop_shows_queueing_that_closed_loop_hides():
    service_s = 0.004  # capacity 250 requests per second
    with DelayServer(lambda: service_s, serial=True) as server:
        overloaded = run(plan(server.url, rate=500.0, duration_s=3.0))
        closed = run(plan(server.url, rate=None, concurrency=2, duration_s=2.0))
    p50s = [ms(histogram.summary(h)["p50_us"]) for h in overloaded.windows.values()]
    print("open loop, p50 per second (ms):", p50s)
    # Twice the capacity: the backlog grows by 250 requests a second, so waiting grows by a
    # second per second of the run: about 0.5 s, 1.5 s, 2.5 s at the median of each second,
    # far above the 4 ms each request costs the server.
    assert len(p50s) == 3 and p50s[0] < p50s[1] < p50s[2]
    assert p50s[2] > 1500 and p50s[2] > 3 * p50s[0]
    assert overloaded.throughput < 300 and overloaded.unfinished == 0
    c = histogram.summary(closed.latency)
    print("closed loop:", c, closed.throughput)
    # Two requests in flight on one server: each waits for the other, 2 service times (less
    # the moment between one answer and the next send), however long the run: no queue builds.
    assert 2 * service_s * 1000 - 0.5 <= ms(c["p50_us"]) <= 2 * service_s * 1000 + 3.0
    assert 150 <= closed.throughput <= 260
    windows = [histogram.summary(h)["p50_us"] for h in closed.windows.values()]
    assert max(windows) < 1.5 * min(windows)


def test_generator_overhead_against_an_instant_server():
    with DelayServer(lambda: 0.0) as server:
        result = run(plan(server.url, rate=3000.0, duration_s=3.0))
    s, lag = histogram.summary(result.latency), histogram.summary(result.send_lag)
    print(f"instant server at 3000/s: throughput {result.throughput:.0f}/s, generator CPU "
          f"{result.cpu_us_per_request:.0f} us/request, latency {s}, send lag {lag}")
    assert result.completed == 9000 and not result.errors
    assert result.throughput >= 0.95 * 3000
    # The generator's own CPU per request bounds what it can offer. About a third of it is the
    # kernel's loopback send, charged to the sender. 300 us is 3300 requests a second per
    # process; the benches offer at most 3000 a second over two, under half a core each.
    assert result.cpu_us_per_request < 300


def test_a_server_that_closes_connections_costs_handshakes_not_requests():
    # Every answer closes its connection, as moto_server's does: each request opens a new one.
    with DelayServer(lambda: 0.001, close_every=1) as server:
        result = run(plan(server.url, rate=300.0, duration_s=2.0))
    s = histogram.summary(result.latency)
    print("closing server:", s, result.errors)
    assert result.completed == 600 and not result.errors and result.unfinished == 0
    assert ms(result.latency.get_min_value()) >= 1.0


def test_requests_whose_connection_is_dropped_are_counted_as_errors():
    with DelayServer(lambda: 0.001, drop_every=5) as server:
        result = run(plan(server.url, rate=300.0, duration_s=2.0, workers=1))
    print("dropping server:", result.completed, result.errors)
    assert result.errors == {"ConnectionError": 120} and result.completed == 480 and result.unfinished == 0
    assert histogram.summary(result.latency)["count"] == 480


def test_items_have_the_requested_size():
    for size in (100, 1024, 4000):
        assert item_size({"pk": {"S": "user0000000001"}, "data": {"S": make_filler(size)}}) == size
    with pytest.raises(ValueError):
        make_filler(20)


def test_workload_mix_and_seeded_repeatability():
    def stream(workload, seed):
        requests = Requests(WORKLOADS[workload], table="t", keys=100, item_size=200, distribution="zipfian",
                            consistent=True, rng=random.Random(seed))
        return [requests.next() for _ in range(2000)]

    assert stream("B", 1) == stream("B", 1)
    reads = sum(op == "GetItem" for op, _ in stream("B", 2))
    assert 1850 <= reads <= 1950
    assert {op for op, _ in stream("C", 1)} == {"GetItem"}
    assert {op for op, _ in stream("W", 1)} == {"PutItem"}


@pytest.mark.parametrize("chart_option, refused", [(["--chart", "run.png"], True), ([], False)])
def test_a_chart_without_matplotlib_is_refused_before_the_run_only_when_asked_for(monkeypatch, chart_option,
                                                                                   refused):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "matplotlib" else real_find_spec(name, *rest))
    with socket.socket() as closed:  # a port nothing listens on: a run that started fails to connect
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = CliRunner().invoke(main, ["bench", "--endpoint", endpoint, "--duration", "1", "--out", "",
                                       *chart_option])
    if refused:
        assert result.exit_code == 2 and "--chart needs matplotlib" in result.output
    else:
        assert "no chart: matplotlib is not installed" in result.output
        assert result.exit_code == 1 and "failed" in result.output  # it went on to the run


def test_the_floor_server_answers_every_request_with_an_item_of_the_asked_size():
    from dynstore.bench.cli import _floor_server
    from dynstore.client.sync import Client

    with _floor_server(2000) as url:
        result = run(plan(url, rate=500.0, duration_s=2.0))
        with Client(url, "AKIDBENCHTEST", "secret", "us-east-1") as client:
            answer = client.call("GetItem", {"TableName": "bench", "Key": {"pk": {"S": "user0000000001"}}})
    assert result.completed == 1000 and not result.errors and result.misses == 0
    assert item_size(answer["Item"]) == 2000
