"""Client CPU per GetItem: dynstore.client against boto3, same server, same run.

    pytest bench/bench_client.py --benchmark-only -p no:cacheprovider -s

What is measured is ``time.process_time()`` of this process (user + system CPU of the client
alone: the server runs in its own process, started by tests/test_client.py's ``peer``
fixture: ``dynstore up`` when it serves, else ``moto_server``). Wall time would mostly measure
the server. ``test_getitem_cpu_ratio`` interleaves rounds of every client so that load from
elsewhere on the machine hits them alike, keeps each one's best round, prints the table and
fails when dynstore.client costs more than a fifth of boto3's low-level client (the cheaper
of boto3's two APIs). The other benchmarks feed pytest-benchmark's own table, timed in CPU.
"""
from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from decimal import Decimal

import boto3
import pytest
from botocore.config import Config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_client import KEY_ID, REGION, SECRET, peer  # noqa: E402,F401 -- peer is the server fixture

from dynstore.client import AsyncClient  # noqa: E402

TABLE = "bench_client"
KEY = {"pk": "user#1"}
ITEM = {
    **KEY,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "logins": 42,
    "score": Decimal("98.6"),
    "active": True,
    "tags": {"admin", "math"},
    "profile": {"city": "London", "born": 1815, "languages": ["en", "fr"]},
}
GETS_PER_ROUND = 1000
ROUNDS = 5
CPU_SHARE_MAX = 0.2  # dynstore.client's CPU per GetItem as a share of boto3's


@pytest.fixture(scope="module")
def clients(peer):  # noqa: F811 -- the fixture imported above
    from dynstore.client import Client

    ours = Client(peer.url, KEY_ID, SECRET, REGION)
    ours.create_table(TABLE, partition_key=("pk", "S"))
    ours.table(TABLE).put(ITEM)
    options = dict(endpoint_url=peer.url, region_name=REGION, aws_access_key_id=KEY_ID,
                   aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))
    boto_client = boto3.client("dynamodb", **options)
    boto_table = boto3.resource("dynamodb", **options).Table(TABLE)
    wire_key = {"pk": {"S": KEY["pk"]}}
    table = ours.table(TABLE)
    assert table.get(KEY) == ITEM
    yield {
        "dynstore.client": lambda: table.get(KEY),
        "boto3 client": lambda: boto_client.get_item(TableName=TABLE, Key=wire_key),
        "boto3 resource": lambda: boto_table.get_item(Key=KEY),
    }, peer
    ours.close()


def cpu_per_call_us(fn, calls: int) -> float:
    fn()
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls * 1e6


def async_cpu_per_call_us(url: str, calls: int) -> float:
    async def run():
        async with AsyncClient(url, KEY_ID, SECRET, REGION) as client:
            table = client.table(TABLE)
            await table.get(KEY)
            started = time.process_time()
            for _ in range(calls):
                await table.get(KEY)
            return (time.process_time() - started) / calls * 1e6

    return asyncio.run(run())


def test_getitem_cpu_ratio(benchmark, clients):
    calls, peer_ = clients
    best: dict[str, float] = {}

    def measure():
        for _ in range(ROUNDS):
            for name, fn in calls.items():
                best[name] = min(best.get(name, float("inf")), cpu_per_call_us(fn, GETS_PER_ROUND))
            best["dynstore.client (asyncio)"] = min(best.get("dynstore.client (asyncio)", float("inf")),
                                                    async_cpu_per_call_us(peer_.url, GETS_PER_ROUND))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    share = best["dynstore.client"] / best["boto3 client"]
    benchmark.extra_info.update({f"{name} cpu_us": round(us, 1) for name, us in best.items()})
    benchmark.extra_info.update(server=peer_.name, share_of_boto3_client=round(share, 3))
    print(f"\nclient CPU per GetItem against {peer_.name} ({ROUNDS} rounds of {GETS_PER_ROUND}, best round):")
    for name, us in best.items():
        print(f"  {name:28s} {us:8.1f} us")
    print(f"  dynstore.client / boto3 client = {share:.3f} (goal <= {CPU_SHARE_MAX})")
    assert share <= CPU_SHARE_MAX


@pytest.mark.parametrize("name", ["dynstore.client", "boto3 client", "boto3 resource"])
@pytest.mark.benchmark(group="getitem-cpu", timer=time.process_time)
def test_getitem(benchmark, clients, name):
    calls, _ = clients
    benchmark(calls[name])
