"""The B+tree against a dict, driven by hypothesis: writes, scans, checkpoints, crashes.

A crash is close() without a checkpoint (nothing is flushed) and a reopen: the model
rolls back to the last checkpoint. The smallest buffer pool and a narrow key space make
splits, evictions of dirty pages, empty-page removal and page reuse happen within a
few dozen steps. Hypothesis prints the failing steps and the seed to reproduce them.
"""
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from conftest import long_mode
from dynstore import limits
from dynstore.storage.btree import BTree

KEYS = st.binary(min_size=0, max_size=3).map(lambda b: b"k" + b) | st.sampled_from(
    [b"k", b"k\x00", b"k\xff" * 40, b"z" * limits.BTREE_KEY_BYTES_MAX]
)
VALUES = st.binary(max_size=40) | st.integers(0, 60_000).map(lambda n: b"v" * n)
BOUNDS = st.none() | KEYS


class BTreeMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="btree-stateful-")
        self.path = self.directory + "/tree.db"
        self.tree = BTree(self.path, cache_bytes=limits.BTREE_CACHE_BYTES_MIN)
        self.model = {}
        self.durable = {}
        self.lsn = 0

    def teardown(self):
        self.tree.close()
        shutil.rmtree(self.directory)

    @initialize(n=st.integers(0, 3000), size=st.integers(1, 900))
    def bulk_load(self, n, size):
        items = [(b"k%05d" % i, b"b" * (size + i % 7)) for i in range(0, 2 * n, 2)]
        self.tree.bulk_load(items)
        self.model.update(items)

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value):
        self.tree.put(key, value)
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key):
        assert self.tree.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(first=st.integers(0, 3000), n=st.integers(1, 400), size=st.integers(0, 2000), delete=st.booleans())
    def write_batch(self, first, n, size, delete):
        ops = [(b"k%05d" % i, None if delete else b"w" * size) for i in range(first, first + n)]
        self.tree.write_batch(ops)
        for key, value in ops:
            if value is None:
                self.model.pop(key, None)
            else:
                self.model[key] = value

    @rule(key=KEYS)
    def get(self, key):
        assert self.tree.get(key) == self.model.get(key)

    @rule(start=BOUNDS, end=BOUNDS, reverse=st.booleans(), limit=st.none() | st.integers(0, 50))
    def scan(self, start, end, reverse, limit):
        expected = sorted(
            (k, v) for k, v in self.model.items() if (start is None or k >= start) and (end is None or k < end)
        )
        if reverse:
            expected.reverse()
        if limit is not None:
            expected = expected[:limit]
        assert list(self.tree.scan(start, end, reverse=reverse, limit=limit)) == expected

    @rule()
    def checkpoint(self):
        self.lsn += 1
        self.tree.checkpoint(self.lsn)
        self.durable = dict(self.model)

    @rule()
    def crash_and_reopen(self):
        self.tree.close()  # drops everything since the last checkpoint, as kill -9 would
        self.tree = BTree(self.path, cache_bytes=limits.BTREE_CACHE_BYTES_MIN)
        self.model = dict(self.durable)
        assert self.tree.checkpoint_lsn == self.lsn

    @precondition(lambda self: self.durable)
    @rule(key=KEYS, value=VALUES)
    def snapshot_during_writes(self, key, value):
        expected = sorted(self.durable.items())
        with self.tree.snapshot() as it:
            first = next(it)
            self.put(key, value)
            self.delete(min(self.model))
            self.checkpoint()
            self.write_batch(0, 50, 10, False)
            self.checkpoint()
            assert [first] + list(it) == expected

    @invariant()
    def item_count_and_pool_bound(self):
        stats = self.tree.stats()
        assert stats["items"] == len(self.model)
        assert stats["cache_bytes"] <= limits.BTREE_CACHE_BYTES_MIN


def test_btree_matches_a_dict(storage_backend):
    run_state_machine_as_test(
        BTreeMachine,
        settings=settings(
            max_examples=400 if long_mode() else 40,
            stateful_step_count=60 if long_mode() else 30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
