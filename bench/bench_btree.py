"""B+tree point get, point put and 100-item range scan through Python, beside LMDB and SQLite.

All stores hold the same 100 000 items (16-byte random keys, 400-byte values, ~43 MB)
in one run. Each benchmark round does 1000 operations on random keys; the per-operation
figure is in extra_info (``per_op_us``). Puts go 1000 to a transaction in LMDB and
SQLite, and to the tree's memory until a checkpoint (its durability comes from the WAL),
so all three measure the index, not fsync. ``test_get_latency_*`` times single gets
with data four times the buffer pool (tree) and prints p50 / p99.

    pytest bench/bench_btree.py --benchmark-only -p no:cacheprovider
"""
import os
import random
import sqlite3
import time

import lmdb
import pytest

from dynstore.storage.btree import BTree

ITEMS = 100_000
VALUE_BYTES = 400
OPS = 1000
DATA_BYTES = ITEMS * (16 + VALUE_BYTES)
SMALL_POOL = DATA_BYTES // 4


@pytest.fixture(scope="module")
def data():
    rng = random.Random(1)
    items = sorted({rng.randbytes(16): None for _ in range(ITEMS)})
    values = {k: rng.randbytes(VALUE_BYTES) for k in items}
    lookups = [rng.choice(items) for _ in range(OPS)]
    fresh = [rng.randbytes(16) for _ in range(OPS)]
    return values, lookups, fresh


@pytest.fixture(scope="module")
def stores(data, tmp_path_factory):
    values, _, _ = data
    directory = tmp_path_factory.mktemp("bench_btree")
    out = {}
    tree = BTree(str(directory / "tree.db"), cache_bytes=2 * DATA_BYTES)
    tree.bulk_load(sorted(values.items()))
    tree.checkpoint(1)
    out["btree"] = tree
    small = BTree(str(directory / "small.db"), cache_bytes=SMALL_POOL)
    small.bulk_load(sorted(values.items()))
    small.checkpoint(1)
    out["btree_pool_quarter"] = small
    env = lmdb.open(str(directory / "lmdb"), map_size=1 << 30, sync=False)
    with env.begin(write=True) as txn:
        for k, v in sorted(values.items()):
            txn.put(k, v, append=True)
    out["lmdb"] = env
    db = sqlite3.connect(str(directory / "sqlite.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    db.executemany("INSERT INTO kv VALUES (?, ?)", sorted(values.items()))
    db.commit()
    out["sqlite"] = db
    yield out
    tree.close()
    small.close()
    env.close()
    db.close()


def per_op(benchmark):
    benchmark.extra_info["per_op_us"] = round(benchmark.stats.stats.mean / OPS * 1e6, 3)


ENGINES = ["btree", "btree_pool_quarter", "lmdb", "sqlite"]


@pytest.mark.parametrize("engine", ENGINES)
def test_point_get(benchmark, stores, data, engine):
    values, lookups, _ = data
    store = stores[engine]
    if engine.startswith("btree"):
        get = store.get

        def run():
            for k in lookups:
                get(k)
    elif engine == "lmdb":
        txn = store.begin()
        get = txn.get

        def run():
            for k in lookups:
                get(k)
    else:
        cursor = store.cursor()

        def run():
            for k in lookups:
                cursor.execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()
    run()
    benchmark(run)
    per_op(benchmark)
    assert store.get(lookups[0]) == values[lookups[0]] if engine == "btree" else True


@pytest.mark.parametrize("engine", ["btree", "lmdb", "sqlite"])
def test_point_put(benchmark, stores, data, engine):
    _, lookups, fresh = data
    store = stores[engine]
    value = b"p" * VALUE_BYTES
    keys = [k for pair in zip(lookups, fresh) for k in pair][:OPS]  # half overwrites, half inserts
    if engine == "btree":
        def run():
            for k in keys:
                store.put(k, value)
    elif engine == "lmdb":
        def run():
            with store.begin(write=True) as txn:
                for k in keys:
                    txn.put(k, value)
    else:
        def run():
            store.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", ((k, value) for k in keys))
            store.commit()
    benchmark(run)
    per_op(benchmark)


@pytest.mark.parametrize("engine", ["btree", "lmdb", "sqlite"])
def test_range_scan_100(benchmark, stores, data, engine):
    _, lookups, _ = data
    store = stores[engine]
    starts = lookups[:100]
    if engine == "btree":
        def run():
            for k in starts:
                assert len(list(store.scan(k, limit=100))) == 100
    elif engine == "lmdb":
        txn = store.begin()

        def run():
            for k in starts:
                cursor = txn.cursor()
                cursor.set_range(k)
                rows = []
                for item in cursor:
                    rows.append(item)
                    if len(rows) == 100:
                        break
                assert len(rows) == 100
    else:
        def run():
            for k in starts:
                rows = store.execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT 100", (k,)).fetchall()
                assert len(rows) == 100
    benchmark(run)
    benchmark.extra_info["per_scan_us"] = round(benchmark.stats.stats.mean / len(starts) * 1e6, 3)


@pytest.mark.parametrize("engine", ["btree_pool_quarter", "lmdb"])
def test_get_latency_data_four_times_pool(benchmark, stores, data, engine):
    """Single-get latency percentiles; the tree's pool holds a quarter of the data."""
    values, _, _ = data
    store = stores[engine]
    get = store.get if engine.startswith("btree") else store.begin().get
    rng = random.Random(2)
    universe = list(values)
    keys = [rng.choice(universe) for _ in range(50_000)]
    clock = time.perf_counter_ns

    def run():
        samples = []
        for k in keys:
            t0 = clock()
            get(k)
            samples.append(clock() - t0)
        samples.sort()
        return samples

    samples = benchmark.pedantic(run, rounds=3, iterations=1)
    p50, p99 = samples[len(samples) // 2] / 1000, samples[len(samples) * 99 // 100] / 1000
    benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2)})
    if engine.startswith("btree"):
        stats = store.stats()
        benchmark.extra_info["cache_bytes"] = stats["cache_bytes"]
        assert stats["cache_bytes"] <= SMALL_POOL
    print(f"\n{engine}: get p50 {p50:.2f} us, p99 {p99:.2f} us")
