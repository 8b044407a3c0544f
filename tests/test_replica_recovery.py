"""Recovery of a replica whose tree was checkpointed past the commit index its log records
(dynstore/replication/replica.py): a leader applies its committed entries before the record
of the commit index is durable, and a crash may come between a checkpoint and that record.

Each test writes the replica's files as a crash would have left them, then opens it.
"""
import pytest

from dynstore.replication.messages import STORAGE, Ballot, Entries, Entry, HardState, SnapshotMeta, encode
from dynstore.replication.replica import WAL_ENTRIES, WAL_HARD_STATE, WAL_SNAPSHOT_META, Replica
from dynstore.storage.btree import BTree
from dynstore.storage.engine import encode_batch
from dynstore.storage.errors import CorruptionError
from dynstore.storage.wal import WAL

MEMBERS = ((1, STORAGE), (2, STORAGE), (3, STORAGE))
BALLOT = Ballot(2, 1)


def write_log(directory, last_slot: int, commit: int) -> None:
    wal = WAL(directory / "log")
    entries = tuple(Entry(s, BALLOT, 1, encode_batch([(b"k%d" % s, b"v%d" % s)])) for s in range(1, last_slot + 1))
    wal.append(0, WAL_SNAPSHOT_META, encode(SnapshotMeta(0, Ballot(0, 0), MEMBERS)))
    wal.append(0, WAL_HARD_STATE, encode(HardState(BALLOT, 0)))
    wal.append(0, WAL_ENTRIES, encode(Entries(entries)))
    wal.wait_durable(wal.append(0, WAL_HARD_STATE, encode(HardState(BALLOT, commit))))
    wal.close()


def write_tree(directory, applied: int) -> None:
    tree = BTree(str(directory / "tree.db"))
    tree.write_batch([(b"k%d" % s, b"v%d" % s) for s in range(1, applied + 1)])
    tree.checkpoint(applied)
    tree.close()


def test_a_tree_checkpointed_past_the_recorded_commit_brings_the_commit_up(tmp_path):
    write_log(tmp_path, last_slot=6, commit=2)
    write_tree(tmp_path, applied=5)
    replica = Replica(str(tmp_path), 1, MEMBERS, send=lambda m: None)
    try:
        assert replica.core.commit == 5 and replica.applied == 5
        assert replica.core.store.last_slot == 6
    finally:
        replica.wal.close()
        replica.tree.close()
    # The record written at recovery is durable: a second recovery finds the commit there.
    reopened = Replica(str(tmp_path), 1, MEMBERS, send=lambda m: None)
    try:
        assert reopened.core.commit == 5
    finally:
        reopened.wal.close()
        reopened.tree.close()


def test_a_tree_past_the_log_without_a_snapshot_of_that_slot_is_corruption(tmp_path):
    write_log(tmp_path, last_slot=3, commit=2)
    write_tree(tmp_path, applied=5)
    with pytest.raises(CorruptionError, match="past the log's last slot 3"):
        Replica(str(tmp_path), 1, MEMBERS, send=lambda m: None)
