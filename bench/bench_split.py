"""What a partition split costs each replica of a cluster, which applies it on its event loop.

A partition of 1 KB items is cut at its middle: the tree is read (``scan``), the upper half
and both statistics records are computed (operations/split.py ``split_batches``), the new
group's replica is seeded from the upper half (replication/replica.py ``seed_replica``: bulk
load, checkpoint, tree.meta) and the moved keys are deleted from the lower half. The
figure per MiB of partition is in extra_info (``ms_per_mib``) and printed; it is what sizes
``limits.REPLICATED_SPLIT_BYTES_DEFAULT``.

    pytest bench/bench_split.py --benchmark-only -p no:cacheprovider -s
"""
import shutil

import pytest

from dynstore.api.operations.codec import encode_item
from dynstore.api.operations.schema import Table
from dynstore.api.operations.split import split_batches
from dynstore.replication.messages import STORAGE
from dynstore.replication.replica import seed_replica
from dynstore.storage.btree import BTree

DESC = {"TableName": "bench", "TableId": "00000000-0000-0000-0000-00000000be0c",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}
MEMBERS = ((1, STORAGE), (2, STORAGE), (3, STORAGE))


def _partition(directory, items: int) -> tuple[list, bytes]:
    table = Table(DESC)
    stored = sorted((table.storage_key({"pk": {"S": f"key-{n}"}}),
                     encode_item({"pk": {"S": f"key-{n}"}, "v": {"S": "x" * 1000}})) for n in range(items))
    tree = BTree(str(directory / "tree.db"))
    tree.bulk_load(stored)
    tree.checkpoint(1)
    tree.close()
    return stored, stored[items // 2][0]


@pytest.mark.parametrize("items", [8_192, 32_768])
def test_split(benchmark, tmp_path, items):
    stored, key = _partition(tmp_path, items)
    mib = sum(len(k) + len(v) for k, v in stored) / 2 ** 20

    def setup():
        shutil.rmtree(tmp_path / "child", ignore_errors=True)
        shutil.copyfile(tmp_path / "tree.db", tmp_path / "work.db")
        return (BTree(str(tmp_path / "work.db")),), {}

    def split(tree):
        left, right = split_batches(DESC, tree.scan(), key)
        seed_replica(str(tmp_path / "child"), right, MEMBERS)
        tree.write_batch(left)
        tree.close()

    benchmark.pedantic(split, setup=setup, rounds=3)
    ms_per_mib = benchmark.stats.stats.median * 1000 / mib
    benchmark.extra_info.update(mib=round(mib, 1), ms_per_mib=round(ms_per_mib, 2))
    print(f"\nsplit of a {mib:.0f} MiB partition: {benchmark.stats.stats.median:.3f} s median, "
          f"{ms_per_mib:.1f} ms per MiB")
