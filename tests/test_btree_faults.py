"""Faults the B+tree must survive: flipped bits on disk, torn meta pages, kill -9 mid-checkpoint.

A damaged page gives CorruptionError naming the file and the page's offset, never wrong
data. A crash at any moment reopens to the previous or the new checkpoint, exactly:
the child process applies deterministic rounds of writes (round r derived from r alone)
and checkpoints each with lsn r, so the parent rebuilds the expected state of any
checkpoint it finds.
"""
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from conftest import long_mode
from dynstore import limits
from dynstore.storage import btree_ref as fmt
from dynstore.storage.btree import BTree
from dynstore.storage.errors import CorruptionError
from test_btree import live_pages

PAGE = limits.BTREE_PAGE_BYTES
CACHE = limits.BTREE_CACHE_BYTES_MIN


def round_ops(r):
    """The writes of round r: puts (some overflowing) and deletes over a shared key space."""
    rng = random.Random(r)
    ops = []
    for _ in range(300):
        key = b"key%05d" % rng.randrange(4000)
        if rng.random() < 0.25:
            ops.append((key, None))
        else:
            size = 60_000 if rng.random() < 0.02 else rng.randrange(10, 1200)
            ops.append((key, bytes([r % 256]) * size))
    return ops


def apply(model, ops):
    for key, value in ops:
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value


def build(path, backend, rounds):
    t = BTree(str(path), cache_bytes=CACHE, backend=backend)
    model = {}
    for r in range(1, rounds + 1):
        ops = round_ops(r)
        t.write_batch(ops)
        apply(model, ops)
        t.checkpoint(r)
    t.close()
    return model


def page_types(path):
    with open(path, "rb") as f:
        data = f.read()
    return {n: fmt.HEADER.unpack_from(data, n * PAGE)[1] for n in range(2, len(data) // PAGE)}


def flip_bit(path, offset, bit):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def check_reads(path, backend, model, damaged_offset):
    """Every read returns the right value or raises CorruptionError at the damaged page."""
    t = BTree(str(path), cache_bytes=CACHE, backend=backend)
    errors = 0
    for key, value in sorted(model.items()):
        try:
            got = t.get(key)
        except CorruptionError as exc:
            assert exc.path == str(path) and exc.offset == damaged_offset, str(exc)
            errors += 1
            continue
        assert got == value
    with pytest.raises(CorruptionError) as info:
        for _ in t.scan():
            pass
    assert info.value.offset == damaged_offset
    t.close()
    return errors


@pytest.mark.parametrize("kind", [fmt.TYPE_LEAF, fmt.TYPE_INTERNAL, fmt.TYPE_OVERFLOW])
def test_flipped_bit_in_a_page_raises_corruption(storage_backend, tmp_path, kind):
    clean = tmp_path / "clean.db"
    model = build(clean, storage_backend, 8)
    live = live_pages(clean)
    types = page_types(clean)
    rng = random.Random(kind)
    if kind == fmt.TYPE_OVERFLOW:
        # Reachable overflow pages: those named by leaf cells of the live tree.
        candidates = [n for n, t in types.items() if t == kind and any(_chain_of(live, n))]
    else:
        candidates = [n for n in live if types[n] == kind]
    assert candidates
    for trial in range(4 if not long_mode() else 40):
        damaged = tmp_path / f"damaged{trial}.db"
        shutil.copy(clean, damaged)
        pno = rng.choice(candidates)
        offset = pno * PAGE + rng.randrange(PAGE)
        flip_bit(damaged, offset, rng.randrange(8))
        errors = check_reads(damaged, storage_backend, model, pno * PAGE)
        assert errors >= 1


def _chain_of(live, pno):
    """Whether a leaf of the live tree starts an overflow chain at pno (first pages only)."""
    for page in live.values():
        ptype, count = page[4], fmt.HEADER.unpack_from(page)[3]
        if ptype != fmt.TYPE_LEAF:
            continue
        for i in range(count):
            off = int.from_bytes(page[fmt.HEADER_BYTES + 2 * i : fmt.HEADER_BYTES + 2 * i + 2], "little")
            klen, flags, _ = fmt.CELL.unpack_from(page, off)
            if flags & fmt.FLAG_OVERFLOW and fmt.U32.unpack_from(page, off + 8 + klen)[0] == pno:
                yield True


def test_torn_newest_meta_opens_the_previous_checkpoint(storage_backend, tmp_path):
    path = tmp_path / "t.db"
    model = build(path, storage_backend, 5)
    previous = {}
    for r in range(1, 5):
        apply(previous, round_ops(r))
    # Generation 5 lives in slot 1; tear it as a crash in the middle of its write would.
    with open(path, "r+b") as f:
        f.seek(1 * PAGE + PAGE // 2)
        f.write(os.urandom(PAGE // 2))
    t = BTree(str(path), cache_bytes=CACHE)
    assert t.checkpoint_lsn == 4
    assert dict(t.scan()) == previous != model
    t.close()


def test_both_meta_pages_damaged_refuses_to_open(storage_backend, tmp_path):
    path = tmp_path / "t.db"
    build(path, storage_backend, 2)
    flip_bit(path, 100, 0)
    flip_bit(path, PAGE + 100, 0)
    with pytest.raises(CorruptionError) as info:
        BTree(str(path), cache_bytes=CACHE)
    assert info.value.path == str(path)


def test_damaged_free_list_refuses_to_open(storage_backend, tmp_path):
    path = tmp_path / "t.db"
    build(path, storage_backend, 6)
    types = page_types(path)
    with open(path, "rb") as f:
        metas = f.read(2 * PAGE)
    generations = [fmt.HEADER.unpack_from(metas, slot * PAGE)[9] for slot in (0, 1)]
    slot = generations.index(max(generations))
    head = fmt.META.unpack_from(metas, slot * PAGE + fmt.HEADER_BYTES)[6]
    assert head and types[head] == fmt.TYPE_FREELIST
    flip_bit(path, head * PAGE + 40, 3)
    with pytest.raises(CorruptionError) as info:
        BTree(str(path), cache_bytes=CACHE)
    assert info.value.offset == head * PAGE


def test_truncated_file_raises_corruption(storage_backend, tmp_path):
    path = tmp_path / "t.db"
    model = build(path, storage_backend, 4)
    size = os.path.getsize(path)
    os.truncate(path, size - 3 * PAGE)
    with pytest.raises(CorruptionError):  # at open (free list) or at the first missing page
        t = BTree(str(path), cache_bytes=CACHE)
        for key in sorted(model):
            assert t.get(key) == model[key]


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
from dynstore.storage.btree import BTree
from test_btree_faults import round_ops, CACHE

t = BTree(sys.argv[1], cache_bytes=CACHE, backend=sys.argv[2])
r = t.checkpoint_lsn
print("open", r, flush=True)
while True:
    r += 1
    t.write_batch(round_ops(r))
    t.checkpoint(r)
    print("done", r, flush=True)
"""


def test_kill_during_checkpoints_reopens_a_whole_checkpoint(storage_backend, tmp_path):
    path = str(tmp_path / "t.db")
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seed = rng.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    model, applied = {}, 0
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for crash in range(40 if long_mode() else 6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, storage_backend, tests_dir],
            stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout.readline().split()[0] == "open"
        time.sleep(rng.uniform(0.02, 0.6))
        child.kill()
        lines = child.stdout.read().split()
        child.wait()
        done = [int(n) for word, n in zip(lines[::2], lines[1::2]) if word == "done"]
        t = BTree(path, cache_bytes=CACHE, backend=storage_backend)
        lsn = t.checkpoint_lsn
        # Acknowledged checkpoints survive; at most the one in flight may also have landed.
        assert lsn >= (done[-1] if done else applied), (seed, crash)
        assert lsn <= (done[-1] if done else applied) + 1, (seed, crash)
        while applied < lsn:
            applied += 1
            apply(model, round_ops(applied))
        assert list(t.scan()) == sorted(model.items()), (seed, crash)
        assert t.stats()["items"] == len(model)
        t.close()
    assert applied > 6
