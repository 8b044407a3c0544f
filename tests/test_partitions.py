"""Tables of many partitions: splits online, and every operation right across partitions.

The table has a sort key, a global index (by g, h) and a local index (by p, l). Splits
are made with the router's own ``split`` at ``choose_split_key``, or by the split loop
(autoadmin/splits.py) with a small size. Checks compare every answer with a model of
the items: each item exactly once, in DynamoDB's order, across pages of any size.
"""
import asyncio
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import long_mode
from dynstore import limits
from dynstore.api.operations import OPERATIONS
from dynstore.api.operations.codec import decode_item
from dynstore.api.operations.schema import INDEXES, ITEMS, STATS_KEY, Table, item_range, space_end
from dynstore.api.operations.split import choose_split_key, split_batches
from dynstore.api.operations.store import Stats
from dynstore.autoadmin.splits import Splitter
from operations_harness import Node

INDEXES_SPEC = dict(
    extra_attributes=[{"AttributeName": "g", "AttributeType": "S"}, {"AttributeName": "h", "AttributeType": "N"},
                      {"AttributeName": "l", "AttributeType": "N"}],
    GlobalSecondaryIndexes=[{"IndexName": "by_g", "Projection": {"ProjectionType": "ALL"},
                             "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"},
                                           {"AttributeName": "h", "KeyType": "RANGE"}]}],
    LocalSecondaryIndexes=[{"IndexName": "by_l", "Projection": {"ProjectionType": "INCLUDE",
                                                                "NonKeyAttributes": ["v"]},
                            "KeySchema": [{"AttributeName": "p", "KeyType": "HASH"},
                                          {"AttributeName": "l", "KeyType": "RANGE"}]}],
)


def make_item(p: int, s: int, size: int = 100) -> dict:
    item = {"p": {"S": f"pk{p}"}, "s": {"N": str(s)}, "v": {"S": "x" * size}}
    if s % 3:  # a sparse global index: a third of the items are not in it
        item["g"] = {"S": f"g{(p + s) % 4}"}
        item["h"] = {"N": str(p * 100 + s)}
    if s % 2 == 0:
        item["l"] = {"N": str(-s)}
    return item


def key_of(item: dict) -> tuple:
    return item["p"]["S"], int(item["s"]["N"])


@pytest.fixture
def node(tmp_path):
    n = Node(str(tmp_path / "data"))
    n.create("t", range_type="N", **INDEXES_SPEC)
    yield n
    n.close()


def load(node, pks: int, per_pk: int, size: int = 100) -> dict:
    items = {}
    for p in range(pks):
        for s in range(per_pk):
            item = make_item(p, s, size)
            node("PutItem", TableName="t", Item=item)
            items[key_of(item)] = item
    return items


def split_everything(node, rounds: int) -> None:
    """Split every partition at its chosen key, ``rounds`` times over."""
    router = node.state.router
    for _ in range(rounds):
        desc = router.table("t")
        for partition in list(router.partitions(desc)):
            key = choose_split_key(desc, partition)
            if key is not None:
                assert node.run(router.split(desc, partition, key)) is not None


def check_partitions(node, name: str = "t") -> None:
    """Every partition holds only its own items and their index entries; its stats record counts them."""
    router = node.state.router
    desc = router.table(name)
    table = Table(desc)
    partitions = router.partitions(desc)
    assert partitions[0].start == b"" and partitions[-1].end is None
    assert all(a.end == b.start for a, b in zip(partitions, partitions[1:]))
    for partition in partitions:
        low, high = item_range(partition)
        entries = {}
        for key, value in partition.scan(ITEMS, space_end(INDEXES)):
            if key.startswith(ITEMS):
                assert low <= key < high, "an item outside its partition's range"
            else:
                assert low <= value < high, "an index entry whose item is in another partition"
                entries[key] = value
        _, right = split_batches(desc, partition.scan(), low)
        recomputed = Stats(right[0][1])
        stored = Stats(partition.get(STATS_KEY))
        assert (stored.items, stored.bytes) == (recomputed.items, recomputed.bytes)
        assert {k: v for k, v in stored.indexes.items() if v[0]} == recomputed.indexes
        expected = {}
        for key, value in partition.scan(low, high):
            for index in table.indexes.values():
                entry = index.entry_key(decode_item(value), key)
                if entry is not None:
                    expected[entry] = key
        assert entries == expected


def pages(node, operation: str, **request) -> list[dict]:
    """Every item of a paged Query or Scan, following LastEvaluatedKey."""
    out = []
    while True:
        page = node(operation, TableName="t", **request)
        out += page["Items"]
        if "LastEvaluatedKey" not in page:
            return out
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def check_reads(node, items: dict) -> None:
    """Scan, parallel Scan, Query, both indexes and DescribeTable agree with ``items``."""
    everything = sorted(items)
    for limit in (None, 7):
        extra = {} if limit is None else {"Limit": limit}
        scanned = pages(node, "Scan", **extra)
        assert sorted(map(key_of, scanned)) == everything and len(scanned) == len(everything)
        segments = [key_of(i) for seg in range(3) for i in pages(node, "Scan", Segment=seg, TotalSegments=3, **extra)]
        assert sorted(segments) == everything
        gsi = pages(node, "Scan", IndexName="by_g", **extra)
        assert sorted(map(key_of, gsi)) == sorted(k for k, i in items.items() if "g" in i)
    pks = sorted({p for p, _ in everything})
    for p in pks[:5]:
        mine = [k for k in everything if k[0] == p]
        for forward in (True, False):
            got = pages(node, "Query", KeyConditionExpression="p = :p", ExpressionAttributeValues={":p": {"S": p}},
                        ScanIndexForward=forward, Limit=4)
            assert list(map(key_of, got)) == sorted(mine, key=lambda k: k[1], reverse=not forward)
        by_l = pages(node, "Query", IndexName="by_l", KeyConditionExpression="p = :p",
                     ExpressionAttributeValues={":p": {"S": p}}, Limit=3)
        assert [int(i["l"]["N"]) for i in by_l] == sorted(-s for q, s in mine if s % 2 == 0)
    for g in range(4):
        want = sorted((int(i["h"]["N"]), key_of(i)) for i in items.values() if i.get("g") == {"S": f"g{g}"})
        for forward in (True, False):
            got = pages(node, "Query", IndexName="by_g", KeyConditionExpression="g = :g",
                        ExpressionAttributeValues={":g": {"S": f"g{g}"}}, ScanIndexForward=forward, Limit=5)
            assert [(int(i["h"]["N"]), key_of(i)) for i in got] == (want if forward else want[::-1])
        counted = node("Query", TableName="t", IndexName="by_g", KeyConditionExpression="g = :g",
                       ExpressionAttributeValues={":g": {"S": f"g{g}"}}, Select="COUNT")
        assert counted["Count"] == len(want) and "Items" not in counted
        filtered = pages(node, "Query", IndexName="by_g", KeyConditionExpression="g = :g",
                         FilterExpression="s < :s", ExpressionAttributeValues={":g": {"S": f"g{g}"}, ":s": {"N": "5"}},
                         Limit=4)
        assert sorted(map(key_of, filtered)) == sorted(k for _, k in want if k[1] < 5)
    table = node("DescribeTable", TableName="t")["Table"]
    assert table["ItemCount"] == len(items)
    gsi_count = next(i["ItemCount"] for i in table["GlobalSecondaryIndexes"])
    assert gsi_count == sum("g" in i for i in items.values())
    lsi_count = next(i["ItemCount"] for i in table["LocalSecondaryIndexes"])
    assert lsi_count == sum("l" in i for i in items.values())


def test_split_key_is_a_partition_key_boundary_near_the_middle(node):
    load(node, 1, 30)
    router = node.state.router
    desc = router.table("t")
    assert choose_split_key(desc, router.partitions(desc)[0]) is None  # one item collection is never cut
    load(node, 40, 5)
    [partition] = router.partitions(desc)
    key = choose_split_key(desc, partition)
    schema = Table(desc).schema
    assert key == ITEMS + schema.partition_prefix(key[1:])  # the first key of a partition key
    keys = [k for k, _ in partition.scan(ITEMS, space_end(ITEMS))]
    left = sum(k < key for k in keys)
    assert 0.25 < left / len(keys) < 0.75


def test_split_batches_keep_every_key_once_and_the_totals(node):
    items = load(node, 20, 4)
    router = node.state.router
    desc = router.table("t")
    [partition] = router.partitions(desc)
    key = choose_split_key(desc, partition)
    whole = list(partition.scan())
    left_ops, right_items = split_batches(desc, whole, key)
    assert right_items == sorted(right_items) and right_items[0][0] == STATS_KEY
    moved = {k for k, _ in right_items[1:]}
    assert {k for k, v in left_ops if v is None} == moved
    left_stats, right_stats = Stats(left_ops[-1][1]), Stats(right_items[0][1])
    stored = Stats(partition.get(STATS_KEY))
    assert left_stats.items + right_stats.items == stored.items == len(items)
    assert left_stats.bytes + right_stats.bytes == stored.bytes
    for index_id, (count, size) in stored.indexes.items():
        assert left_stats.indexes[index_id][0] + right_stats.indexes[index_id][0] == count
        assert left_stats.indexes[index_id][1] + right_stats.indexes[index_id][1] == size
    assert all(k >= key for k in moved if k.startswith(ITEMS))


def test_reads_across_split_partitions_see_every_item_once_in_order(node, monkeypatch):
    monkeypatch.setattr(limits, "SPLIT_TRIM_BATCH_BYTES", 500)  # the moved keys leave in many batches
    items = load(node, 40, 6)
    before = node("DescribeTable", TableName="t")["Table"]
    split_everything(node, 3)
    assert len(node.state.router.partitions(node.state.router.table("t"))) >= 6
    check_partitions(node)
    check_reads(node, items)
    after = node("DescribeTable", TableName="t")["Table"]
    assert after["TableSizeBytes"] == before["TableSizeBytes"]
    assert [i["IndexSizeBytes"] for i in after["GlobalSecondaryIndexes"]] == \
        [i["IndexSizeBytes"] for i in before["GlobalSecondaryIndexes"]]
    # Writes after the splits land in the right partitions and keep the counts.
    for p, s in list(items)[::7]:
        node("DeleteItem", TableName="t", Key={"p": {"S": p}, "s": {"N": str(s)}})
        del items[(p, s)]
    for p in range(40, 50):
        item = make_item(p, 1)
        node("PutItem", TableName="t", Item=item)
        items[key_of(item)] = item
    check_partitions(node)
    check_reads(node, items)
    count = len(node.state.router.partitions(node.state.router.table("t")))
    node.restart()
    assert len(node.state.router.partitions(node.state.router.table("t"))) == count
    check_partitions(node)
    check_reads(node, items)


def test_split_loop_splits_under_concurrent_readers_and_writers_without_failures(node):
    stable = load(node, 10, 4)  # never written again: every read must find them
    splitter = Splitter(node.state, split_bytes=8 * 1024)
    acked: dict = {}
    errors: list = []
    stop = asyncio.Event()
    state = node.state

    async def call(operation, **request):
        return await OPERATIONS[operation](state, dict(TableName="t", **request))

    async def writer(w: int):
        rng = random.Random(w)
        n = 0
        while not stop.is_set():
            p, s = 100 + w * 50 + rng.randrange(50), rng.randrange(4)
            if rng.random() < 0.2 and (f"pk{p}", s) in acked:
                await call("DeleteItem", Key={"p": {"S": f"pk{p}"}, "s": {"N": str(s)}})
                acked.pop((f"pk{p}", s))
            else:
                item = make_item(p, s, 200)
                item["n"] = {"N": str(n)}
                await call("PutItem", Item=item)
                acked[key_of(item)] = item
            n += 1

    async def reader(r: int):
        rng = random.Random(100 + r)
        keys = sorted(stable)
        while not stop.is_set():
            p, s = rng.choice(keys)
            got = await call("GetItem", Key={"p": {"S": p}, "s": {"N": str(s)}})
            assert got["Item"] == stable[(p, s)]
            q = await call("Query", KeyConditionExpression="p = :p", ExpressionAttributeValues={":p": {"S": p}})
            assert sorted(key_of(i) for i in q["Items"]) == sorted(k for k in stable if k[0] == p)
            g = await call("Query", IndexName="by_l", KeyConditionExpression="p = :p",
                           ExpressionAttributeValues={":p": {"S": p}})
            assert len(g["Items"]) == sum(1 for k in stable if k[0] == p and k[1] % 2 == 0)
            await asyncio.sleep(0)

    async def guarded(coroutine):
        try:
            await coroutine
        except Exception as exc:  # reported below: a failed request fails the test
            errors.append(exc)
            stop.set()

    async def scenario():
        tasks = [asyncio.create_task(guarded(writer(w))) for w in range(3)]
        tasks += [asyncio.create_task(guarded(reader(r))) for r in range(2)]
        splits = 0
        deadline = time.monotonic() + (30.0 if long_mode() else 3.0)
        while time.monotonic() < deadline and not stop.is_set():
            splits += await splitter.round()
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)
        return splits

    splits = node.run(asyncio.wait_for(scenario(), 120))  # a split that never gets its writes drained hangs
    assert not errors, errors
    assert splits >= 3
    check_partitions(node)
    check_reads(node, {**stable, **acked})


def test_open_trims_a_left_part_and_removes_orphans(node, monkeypatch):
    monkeypatch.setattr(limits, "SPLIT_TRIM_BATCH_BYTES", 500)
    items = load(node, 20, 4)
    split_everything(node, 1)
    router = node.state.router
    desc = router.table("t")
    left, right = router.partitions(desc)
    # As after a crash between the map's commit and the left part's trim: the moved keys are back.
    node.run(left.engine.write(list(right.scan(ITEMS, space_end(INDEXES)))))
    check_reads(node, items)  # clipped ranges already hide them from every read
    orphan = os.path.join(node.data_dir, "tables", desc["TableId"], "p7")
    os.makedirs(orphan)
    node.restart()
    assert not os.path.exists(orphan)
    check_partitions(node)
    check_reads(node, items)


async def create_table(state) -> None:
    """Table t of the ``node`` fixture, for a child process that has no harness."""
    keys = [{"AttributeName": "p", "KeyType": "HASH"}, {"AttributeName": "s", "KeyType": "RANGE"}]
    attrs = [{"AttributeName": "p", "AttributeType": "S"}, {"AttributeName": "s", "AttributeType": "N"}]
    spec = dict(INDEXES_SPEC)
    attrs += spec.pop("extra_attributes")
    await OPERATIONS["CreateTable"](state, dict(TableName="t", KeySchema=keys, AttributeDefinitions=attrs,
                                                BillingMode="PAY_PER_REQUEST", **spec))


CHILD = r"""
import asyncio, sys
from dynstore.api.operations import OPERATIONS, State
from dynstore.autoadmin.splits import Splitter
from test_partitions import create_table, make_item

async def main(data_dir, round_):
    state = await State.open(data_dir, expire=False, split_bytes=None)
    if state.router.table("t") is None:
        await create_table(state)
    print("ready", flush=True)
    splitter = Splitter(state, split_bytes=6 * 1024)

    async def writer(w):
        n = 0
        while True:
            item = make_item(round_ * 1000 + w * 100 + n % 100, n // 100, 150)
            await OPERATIONS["PutItem"](state, {"TableName": "t", "Item": item})
            print(item["p"]["S"], item["s"]["N"], flush=True)
            n += 1

    async def split():
        while True:
            await splitter.round()
            await asyncio.sleep(0.005)

    await asyncio.gather(*(writer(w) for w in range(4)), split())

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_kill_during_splits_loses_no_acknowledged_write(tmp_path):
    data_dir = str(tmp_path / "data")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(7)
    acked = set()
    for round_ in range(12 if long_mode() else 3):
        proc = subprocess.Popen([sys.executable, str(script), data_dir, str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.3, 1.5))
        proc.kill()
        out, err = proc.communicate()
        for line in out.split("\n")[:-1]:  # the last piece is empty, or a line cut short by the kill
            p, s = line.split()
            acked.add((p, int(s)))
        assert "Traceback" not in err, err
        node = Node(data_dir)
        try:
            desc = node.state.router.table("t")
            check_partitions(node)
            scanned = [key_of(i) for i in pages(node, "Scan", Limit=50)]
            assert len(scanned) == len(set(scanned)), "an item read twice"
            missing = acked - set(scanned)
            assert not missing, f"acknowledged writes lost: {sorted(missing)[:5]}"
            assert node("DescribeTable", TableName="t")["Table"]["ItemCount"] == len(scanned)
            assert desc is not None
        finally:
            node.close()
    assert len(acked) > 100


CRASH_CHILD = r"""
import asyncio, os, sys
from dynstore.api.operations import OPERATIONS, State
from dynstore.api.operations.split import choose_split_key
from dynstore.router.catalog import Catalog
from test_partitions import create_table, make_item

async def main(data_dir, point):
    state = await State.open(data_dir, expire=False, split_bytes=None)
    await create_table(state)
    for p in range(20):
        for s in range(3):
            await OPERATIONS["PutItem"](state, {"TableName": "t", "Item": make_item(p, s)})
    commit = Catalog.put_partition_map

    async def crashing(self, table_id, partitions):
        if point == "before-commit":
            os._exit(9)
        await commit(self, table_id, partitions)
        os._exit(9)  # the map is durable, the left part still holds the moved keys

    Catalog.put_partition_map = crashing
    desc = state.router.table("t")
    [partition] = state.router.partitions(desc)
    await state.router.split(desc, partition, choose_split_key(desc, partition))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_crash_at_each_step_of_a_split(tmp_path, point):
    data_dir = str(tmp_path / "data")
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    done = subprocess.run([sys.executable, str(script), data_dir, point], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=60)
    assert done.returncode == 9, done.stderr
    table_dir = os.path.join(data_dir, "tables", os.listdir(os.path.join(data_dir, "tables"))[0])
    assert len(os.listdir(table_dir)) == 2  # the right part was built before the crash
    node = Node(data_dir)
    try:
        partitions = node.state.router.partitions(node.state.router.table("t"))
        assert len(partitions) == (1 if point == "before-commit" else 2)
        assert len(os.listdir(table_dir)) == len(partitions)
        check_partitions(node)
        check_reads(node, {key_of(i): i for i in (make_item(p, s) for p in range(20) for s in range(3))})
    finally:
        node.close()
