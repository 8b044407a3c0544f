"""Behaviour of the B+tree, every method, against both backends (storage_backend fixture)."""
import os
import random

import pytest

from dynstore import limits
from dynstore.storage.btree import BTree
from dynstore.storage.errors import ClosedError

SMALL_CACHE = limits.BTREE_CACHE_BYTES_MIN


def open_tree(path, cache_bytes=SMALL_CACHE, backend=None):
    return BTree(str(path), cache_bytes=cache_bytes, backend=backend)


def expected_range(model, start=None, end=None, reverse=False, limit=None):
    items = sorted((k, v) for k, v in model.items() if (start is None or k >= start) and (end is None or k < end))
    if reverse:
        items.reverse()
    return items if limit is None else items[:limit]


@pytest.fixture
def tree(storage_backend, tmp_path):
    t = open_tree(tmp_path / "tree.db")
    yield t
    t.close()


def test_empty_tree(tree):
    assert tree.get(b"a") is None
    assert list(tree.scan()) == []
    assert list(tree.scan(reverse=True)) == []
    assert tree.delete(b"a") is False
    assert tree.checkpoint_lsn == 0
    stats = tree.stats()
    assert stats["items"] == 0 and stats["height"] == 0 and stats["page_bytes"] == limits.BTREE_PAGE_BYTES


def test_put_get_overwrite_delete(tree):
    tree.put(b"k", b"v1")
    tree.put(b"", b"empty key")
    assert tree.get(b"k") == b"v1"
    tree.put(b"k", b"v2")
    assert tree.get(b"k") == b"v2"
    assert tree.get(b"") == b"empty key"
    assert tree.get(b"k\x00") is None
    assert tree.delete(b"k") is True
    assert tree.delete(b"k") is False
    assert tree.get(b"k") is None
    assert tree.stats()["items"] == 1


def test_many_keys_random_order_then_delete_until_empty(tree):
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randrange(1, 40)) for _ in range(6000)]
    model = {k: k[::-1] * 5 for k in keys}
    order = list(model)
    rng.shuffle(order)
    for k in order:
        tree.put(k, model[k])
    assert tree.stats()["height"] >= 2
    assert list(tree.scan()) == sorted(model.items())
    rng.shuffle(order)
    for i, k in enumerate(order):
        assert tree.delete(k)
        if i % 997 == 0:
            assert tree.get(k) is None
            rest = order[i + 1 :]
            if rest:
                assert tree.get(rest[0]) == model[rest[0]]
    assert list(tree.scan()) == []
    assert tree.stats()["height"] == 0 and tree.stats()["items"] == 0
    tree.put(b"again", b"1")
    assert list(tree.scan()) == [(b"again", b"1")]


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_bounds_and_limits(tree, reverse):
    model = {b"%05d" % i: b"v%d" % i for i in range(0, 3000, 3)}
    tree.write_batch(model.items())
    bounds = [None, b"", b"00000", b"00001", b"01500", b"01502", b"02997", b"02999", b"1", b"\xff"]
    for start in bounds:
        for end in bounds:
            for limit in (None, 0, 1, 7, 300, 5000):
                got = list(tree.scan(start, end, reverse=reverse, limit=limit))
                assert got == expected_range(model, start, end, reverse, limit), (start, end, limit)


def test_scan_sees_each_key_once_while_tree_changes(tree):
    model = {b"%06d" % i: b"x" * 50 for i in range(5000)}
    tree.write_batch(model.items())
    seen = []
    for i, (k, v) in enumerate(tree.scan()):
        seen.append(k)
        if i % 100 == 0:
            # Inserts behind and ahead of the cursor, and deletes ahead of it, between batches.
            tree.put(b"%06d" % (int(k) + 1) + b"a", b"new")
            tree.delete(b"%06d" % (int(k) + 2000))
            tree.put(b"0", b"behind")
    assert seen == sorted(set(seen))
    assert b"0" not in seen


def test_reverse_scan_across_many_leaves(tree):
    model = {b"%07d" % i: b"y" * 300 for i in range(4000)}
    tree.bulk_load(sorted(model.items()))
    got = list(tree.scan(b"0001000", b"0003000", reverse=True))
    assert got == expected_range(model, b"0001000", b"0003000", reverse=True)


@pytest.mark.parametrize("size", [0, 1, 5000, 5430, 5431, 5440, 16352, 16353, 100_000, limits.BTREE_VALUE_BYTES_MAX])
def test_value_sizes_inline_and_overflow(tree, size):
    value = bytes(random.Random(size).randbytes(size))
    tree.put(b"key", value)
    tree.put(b"after", b"a")
    assert tree.get(b"key") == value
    assert list(tree.scan()) == [(b"after", b"a"), (b"key", value)]
    tree.checkpoint(1)
    assert tree.get(b"key") == value


def test_overflow_replaced_and_deleted_pages_are_reused(tree):
    big = b"B" * 300_000
    for round_ in range(8):
        tree.put(b"big", big + bytes([round_]))
        tree.put(b"other%d" % (round_ % 2), big)
        tree.checkpoint(round_ + 1)
        if round_ == 2:
            pages = tree.stats()["pages"]
    assert tree.get(b"big") == big + bytes([7])
    # Each round frees what the round before wrote; the file stops growing once the free list
    # feeds new chains (two checkpoints behind at most).
    assert tree.stats()["pages"] <= pages + 2
    tree.delete(b"big")
    tree.delete(b"other0")
    tree.delete(b"other1")
    tree.checkpoint(100)
    tree.checkpoint(101)
    assert tree.stats()["free_pages"] >= tree.stats()["pages"] - 4


def test_large_keys(tree):
    rng = random.Random(3)
    prefix = b"p" * 4000
    model = {}
    for i in range(300):
        k = prefix + rng.randbytes(limits.BTREE_KEY_BYTES_MAX - len(prefix))
        model[k] = rng.randbytes(rng.choice([10, 2000, 40_000]))
        tree.put(k, model[k])
    assert tree.stats()["height"] >= 3  # 4 KiB keys: three or four cells per page
    assert list(tree.scan()) == sorted(model.items())
    assert list(tree.scan(reverse=True)) == sorted(model.items(), reverse=True)
    for k in list(model)[::2]:
        assert tree.delete(k)
        del model[k]
    assert [k for k, _ in tree.scan()] == sorted(model)


def test_limits_and_types_are_refused(tree):
    with pytest.raises(ValueError):
        tree.put(b"k" * (limits.BTREE_KEY_BYTES_MAX + 1), b"v")
    with pytest.raises(ValueError):
        tree.put(b"k", b"v" * (limits.BTREE_VALUE_BYTES_MAX + 1))
    with pytest.raises(TypeError):
        tree.put("k", b"v")
    with pytest.raises(TypeError):
        tree.put(b"k", None)
    with pytest.raises(TypeError):
        list(tree.scan("a"))
    with pytest.raises(ValueError):
        tree.write_batch([(b"a", b"1"), (b"b" * 5000, b"2")])
    assert tree.get(b"a") is None  # the batch was refused whole


def test_write_batch(tree):
    tree.write_batch([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    tree.write_batch([(b"a", None), (b"b", b"22"), (b"zz", None)])
    assert list(tree.scan()) == [(b"b", b"22"), (b"c", b"3")]


def test_reopen_gives_last_checkpoint(storage_backend, tmp_path):
    path = tmp_path / "t.db"
    t = open_tree(path)
    model = {b"%04d" % i: b"v" * (i % 700) for i in range(3000)}
    t.write_batch(model.items())
    t.checkpoint(10)
    t.write_batch([(b"%04d" % i, None) for i in range(0, 3000, 2)])
    t.put(b"late", b"x" * 100_000)
    t.close()
    t = open_tree(path)
    assert t.checkpoint_lsn == 10
    assert list(t.scan()) == sorted(model.items())
    assert t.stats()["items"] == len(model)
    with pytest.raises(ValueError):
        t.checkpoint(9)
    t.close()
    with pytest.raises(ClosedError):
        t.get(b"0001")


def _churn(t, model, rng, rounds=3000):
    """Overwrite, delete and add keys of `model` in `t` (past the pool: pages get evicted)."""
    keys = list(model)
    for _ in range(rounds):
        k = rng.choice(keys) if rng.random() < 0.7 else rng.randbytes(8)
        v = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(10, 1500))
        t.write_batch([(k, v)])
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v


def test_pages_written_ahead_leave_the_checkpoints_as_they_were_and_the_next_less_to_write(storage_backend,
                                                                                            tmp_path):
    """write_dirty writes changed pages early, as eviction does: the tree reads the same, a crash
    still reopens the last checkpoint exactly, and the next checkpoint has those pages written."""
    path = tmp_path / "t.db"
    t = open_tree(path, cache_bytes=64 << 20)  # everything cached: only write_dirty writes early
    rng = random.Random(7)
    model = {b"%05d" % i: rng.randbytes(300) for i in range(3000)}
    t.write_batch(model.items())
    t.checkpoint(1)
    first = dict(model)
    _churn(t, model, rng)
    dirty = t.stats()["dirty_pages"]
    assert dirty > 10
    assert t.write_dirty(dirty // 2) == dirty // 2
    assert t.stats()["dirty_pages"] == dirty - dirty // 2
    assert dict(t.scan()) == model
    t.close()  # a crash: the pages written ahead belong to no checkpoint
    t = open_tree(path, cache_bytes=64 << 20)
    assert t.checkpoint_lsn == 1 and dict(t.scan()) == first
    model = dict(first)
    _churn(t, model, rng)
    assert t.write_dirty(1 << 30) > 0 and t.stats()["dirty_pages"] == 0
    _churn(t, model, rng, 100)  # some pages written ahead change again
    t.checkpoint(2)
    t.close()
    t = open_tree(path, cache_bytes=64 << 20)
    assert t.checkpoint_lsn == 2 and list(t.scan()) == sorted(model.items())
    t.close()


@pytest.mark.parametrize("crash_after", ["begin", "seal", "end"])
def test_a_checkpoint_in_steps_takes_changes_between_them(storage_backend, tmp_path, crash_after):
    """checkpoint_begin writes the state of its moment; the tree takes changes (evicting pages)
    while the file is synced; a close before the sealed meta is durable reopens the previous
    checkpoint, after it the begun one, exactly, and never a change made after begin."""
    path = tmp_path / "t.db"
    t = open_tree(path)
    rng = random.Random(crash_after)
    model = {b"%05d" % i: rng.randbytes(300) for i in range(3000)}
    t.write_batch(model.items())
    t.checkpoint(1)
    first = dict(model)
    _churn(t, model, rng)
    t.checkpoint_begin(2)
    begun = dict(model)
    with pytest.raises(ValueError):
        t.checkpoint_begin(3)  # one at a time
    with pytest.raises(ValueError):
        t.checkpoint_end()  # not sealed
    _churn(t, model, rng)
    assert t.checkpoint_lsn == 1 and dict(t.scan()) == model
    if crash_after != "begin":
        t.sync_data()
        t.checkpoint_seal()
        _churn(t, model, rng, 500)
        t.sync_data()
    if crash_after == "end":
        t.checkpoint_end()
        assert t.checkpoint_lsn == 2
        _churn(t, model, rng, 500)
        t.checkpoint(3)  # the next one, as usual, frees what the begun one let go
        t.close()
        t = open_tree(path)
        assert t.checkpoint_lsn == 3 and list(t.scan()) == sorted(model.items())
        t.close()
        return
    t.close()
    t = open_tree(path)
    lsn, expected = (1, first) if crash_after == "begin" else (2, begun)
    assert t.checkpoint_lsn == lsn and list(t.scan()) == sorted(expected.items())
    assert t.stats()["items"] == len(expected)
    t.close()


def test_dirty_pages_beyond_the_pool_between_checkpoints(storage_backend, tmp_path):
    """Four times the pool written without a checkpoint: evicted dirty pages go to fresh pages."""
    path = tmp_path / "t.db"
    t = open_tree(path, cache_bytes=SMALL_CACHE)
    model = {}
    rng = random.Random(11)
    while sum(len(v) for v in model.values()) < 4 * SMALL_CACHE:
        k = rng.randbytes(12)
        model[k] = rng.randbytes(rng.randrange(50, 1500))
        t.put(k, model[k])
        assert t.stats()["cache_bytes"] <= SMALL_CACHE
    assert t.stats()["cache_evictions"] > 0
    assert all(t.get(k) == v for k, v in model.items())
    t.checkpoint(5)
    t.close()
    t = open_tree(path)
    assert list(t.scan()) == sorted(model.items())
    t.close()


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_data_four_times_the_pool_stays_bounded(storage_backend, tmp_path):
    cache = 2 * 1024 * 1024
    path = tmp_path / "t.db"
    rng = random.Random(5)
    keys = sorted({rng.randbytes(16) for _ in range(20_000)})
    value = b"v" * 400  # 20k * ~430 B = 8.6 MB: four times the pool
    t = open_tree(path, cache_bytes=cache)
    t.bulk_load((k, value + k) for k in keys)
    t.checkpoint(1)
    t.close()
    t = open_tree(path, cache_bytes=cache)
    base = rss_bytes()
    for _ in range(3):
        for k in rng.sample(keys, 5000):
            assert t.get(k) == value + k
        assert sum(1 for _ in t.scan()) == len(keys)
        assert t.stats()["cache_bytes"] <= cache
    assert t.stats()["cache_misses"] > len(keys) // 20
    # The pool is 2 MiB; decoded pages of the reference cost a few times their size.
    assert rss_bytes() - base < 24 * 1024 * 1024
    t.close()


def test_bulk_load(storage_backend, tmp_path):
    t = open_tree(tmp_path / "t.db")
    model = {b"%08d" % i: b"%d" % i * (1 + i % 50) for i in range(20_000)}
    model[b"%08d" % 5] = b"L" * 200_000
    t.bulk_load(iter(sorted(model.items())))
    assert t.stats()["items"] == len(model)
    assert list(t.scan()) == sorted(model.items())
    assert t.get(b"%08d" % 5) == b"L" * 200_000
    with pytest.raises(ValueError):
        t.bulk_load([(b"z", b"1")])
    t.checkpoint(3)
    t.close()
    t = open_tree(tmp_path / "t.db")
    assert list(t.scan(b"00010000", limit=3)) == [(k, model[k]) for k in sorted(model) if k >= b"00010000"][:3]
    t.close()


def test_bulk_load_refuses_unsorted_input_and_stays_empty(storage_backend, tmp_path):
    t = open_tree(tmp_path / "t.db")
    items = [(b"%06d" % i, b"x" * 500) for i in range(3000)] + [(b"000001", b"late")]
    with pytest.raises(ValueError):
        t.bulk_load(items)
    assert list(t.scan()) == [] and t.stats()["items"] == 0
    t.bulk_load(items[:-1])
    assert sum(1 for _ in t.scan()) == 3000
    t.close()


def test_snapshot_is_stable_while_writes_and_checkpoints_continue(tree):
    model = {b"%05d" % i: b"s" * (i % 900) for i in range(4000)}
    model[b"big"] = b"G" * 100_000
    tree.write_batch(model.items())
    tree.checkpoint(1)
    with tree.snapshot() as it:
        first = [next(it) for _ in range(10)]
        for round_ in range(4):
            tree.write_batch((k, b"new%d" % round_ * 200) for k in list(model)[round_::4])
            tree.write_batch((k, None) for k in list(model)[round_ * 500 : round_ * 500 + 400])
            tree.put(b"big", b"H" * 90_000)
            tree.checkpoint(2 + round_)
        assert first + list(it) == sorted(model.items())
        assert tree.stats()["snapshots"] == 1
    assert tree.stats()["snapshots"] == 0
    with tree.snapshot() as it:
        after = dict(it)
    assert after == dict(tree.scan())


def test_freed_pages_are_reused_across_checkpoints(tree):
    model = {b"%05d" % i: b"r" * 200 for i in range(5000)}
    sizes = []
    for round_ in range(6):
        tree.write_batch((k, v + bytes([round_])) for k, v in model.items())
        tree.checkpoint(round_ + 1)
        sizes.append(tree.stats()["pages"])
    # Rewriting everything needs the old and the new copy; after that the file stays the size.
    assert sizes[-1] == sizes[-2] == sizes[-3]


def test_pages_freed_in_bulk_give_their_disk_blocks_back_and_are_reused(storage_backend, tmp_path):
    """A checkpoint after many deletes (as when a partition splits and half its items leave)
    makes holes of the pages it freed but those the next checkpoints reuse: the file keeps its
    size, not its blocks. Steady updates free what they write, and make none."""
    path = tmp_path / "t.db"
    t = open_tree(path)
    rng = random.Random(5)
    model = {f"k{i:06d}".encode(): rng.randbytes(1000) for i in range(8000)}
    t.write_batch(model.items())
    t.checkpoint(1)
    for lsn in range(2, 5):
        updates = {k: rng.randbytes(1000) for k in rng.sample(sorted(model), 500)}
        t.write_batch(updates.items())
        model.update(updates)
        t.checkpoint(lsn)
    assert t.stats()["punched_pages"] == 0
    size, blocks = os.stat(path).st_size, os.stat(path).st_blocks
    gone = sorted(model)[2000:]
    t.write_batch((k, None) for k in gone)
    for k in gone:
        del model[k]
    t.checkpoint(5)
    punched = t.stats()["punched_pages"]
    assert punched * limits.BTREE_PAGE_BYTES > 4_000_000, t.stats()
    assert os.stat(path).st_size == size and os.stat(path).st_blocks * 512 < blocks * 512 - 4_000_000
    # New items go into the freed pages, holes or not, and everything reads back after a reopen.
    more = {f"n{i:06d}".encode(): rng.randbytes(1000) for i in range(3000)}
    t.write_batch(more.items())
    model.update(more)
    t.checkpoint(6)
    assert os.stat(path).st_size == size
    t.close()
    t = open_tree(path)
    assert list(t.scan()) == sorted(model.items())
    t.close()


def test_files_are_shared_by_both_backends(tmp_path):
    pytest.importorskip("dynstore.storage._btree")
    rng = random.Random(9)
    model = {rng.randbytes(rng.randrange(1, 300)): rng.randbytes(rng.choice([5, 900, 30_000])) for _ in range(3000)}
    paths = {}
    for writer in ("native", "reference"):
        paths[writer] = tmp_path / f"{writer}.db"
        t = open_tree(paths[writer], backend=writer)
        t.write_batch(model.items())
        t.write_batch((k, None) for k in list(model)[:500])
        t.checkpoint(42)
        t.close()
    expected = sorted((k, v) for k, v in model.items() if k not in set(list(model)[:500]))
    for writer, reader in (("native", "reference"), ("reference", "native")):
        t = open_tree(paths[writer], backend=reader)
        assert t.checkpoint_lsn == 42
        assert list(t.scan()) == expected
        t.put(b"more", b"1")
        t.checkpoint(43)
        t.close()
    # Same operations, same algorithms: the pages both trees use are the same bytes.
    assert live_pages(paths["native"]) == live_pages(paths["reference"])


def live_pages(path):
    """Meta slots aside, the bytes of every leaf and internal page reachable from the root."""
    from dynstore.storage import btree_ref as fmt

    data = open(path, "rb").read()
    page = lambda n: data[n * fmt.PAGE : (n + 1) * fmt.PAGE]
    metas = [fmt.HEADER.unpack_from(page(s))[9] for s in (0, 1)]
    meta = page(metas.index(max(metas)))
    root = fmt.META.unpack_from(meta, fmt.HEADER_BYTES)[4]
    out, todo = {}, [root]
    while todo:
        n = todo.pop()
        p = page(n)
        out[n] = p
        _, ptype, _, count, _, link, _, _, _, _ = fmt.HEADER.unpack_from(p)
        if ptype == fmt.TYPE_INTERNAL:
            todo.append(link)
            for i in range(count):
                off = int.from_bytes(p[fmt.HEADER_BYTES + 2 * i : fmt.HEADER_BYTES + 2 * i + 2], "little")
                todo.append(fmt.CELL.unpack_from(p, off)[2])
    return out


def test_closed_tree_refuses_calls(storage_backend, tmp_path):
    t = open_tree(tmp_path / "t.db")
    t.close()
    t.close()
    for call in (lambda: t.get(b"a"), lambda: t.put(b"a", b"b"), lambda: t.scan(), lambda: t.checkpoint(1)):
        with pytest.raises(ClosedError):
            call()


def test_cache_bytes_below_minimum_is_refused(storage_backend, tmp_path):
    with pytest.raises(ValueError):
        open_tree(tmp_path / "t.db", cache_bytes=limits.BTREE_CACHE_BYTES_MIN - 1)
    assert not os.path.exists(tmp_path / "t.db")
