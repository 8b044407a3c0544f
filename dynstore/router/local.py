"""The single-node router: the catalog and every table partition on this node's disk.

Layout under the data directory::

    catalog/                  the catalog's Engine (see catalog.py), with each table's partition map
    tables/<TableId>/<name>/  the Engine of one partition of the table (p0, p1, ... as the map names them)

A table is named on disk by its TableId, not its name, so a table deleted and
created again under the same name never meets the old data. Open with
``await LocalRouter.open(...)``: it finishes what a crash interrupted (below).

A split (``split``) cuts a partition in two at a partition-key boundary, online:

1. the partition's item writes are held (Partition.hold: new ones wait, those in
   flight finish), reads go on;
2. the right part's Engine is built in a new directory from the partition's tree
   (operations/split.py): bulk load, checkpoint;
3. the new partition map is written to the catalog: the commit point;
4. the map in memory switches to the left part (the same Engine, a narrower range)
   and the right part, the held writers look their partition up again, and the left
   part's new statistics record is written (appended in the same step as the switch,
   so it is right before any write under the new map reads it), then the deletes of
   the moved items and their index entries, in batches of bounded size.

Until those batches are applied the left tree still holds moved keys; readers never
see them twice, because every read clips the item space to the partition's range and
keeps an index entry only from the partition that holds its base item.

Faults survived:

* Crash during CreateTable after the partition directory was made but before the
  catalog write was durable: the table does not exist; the orphan directory is
  removed at the next open.
* Crash during DeleteTable after the catalog delete was durable but before the
  partition directory was removed: the table is gone; the directory is removed at
  the next open. The catalog is the only truth about which tables exist.
* Crash during a split before the map was durable: the partition is whole, the right
  part's directory is an orphan (not in the map) and is removed at the next open.
* Crash after the map was durable but before the left part's batch was: the left
  part holds keys past its end; the next open deletes them (and rewrites its
  statistics record) before serving.
"""
from __future__ import annotations

import os
import shutil

from dynstore import limits
from dynstore.api.operations.schema import ITEMS, space_end
from dynstore.api.operations.split import split_batches
from dynstore.metrics import StorageMetrics
from dynstore.router.catalog import Catalog
from dynstore.router.partition import Partition
from dynstore.storage.engine import Engine


class LocalRouter:
    def __init__(self, data_dir: str, *, backend: str | None = None, sync: str = "auto",
                 metrics: StorageMetrics | None = None):
        self.data_dir = data_dir
        self._backend = backend
        self._sync = sync
        self._metrics = metrics  # shared by every Engine of the node
        self._tables_dir = os.path.join(data_dir, "tables")
        os.makedirs(self._tables_dir, exist_ok=True)
        self.catalog = Catalog(self._engine(os.path.join(data_dir, "catalog")))
        live = {desc["TableId"]: desc for desc in map(self.catalog.get, self.catalog.names())}
        for table_id in os.listdir(self._tables_dir):
            if table_id not in live:
                shutil.rmtree(os.path.join(self._tables_dir, table_id))
        # TableId -> the table's partitions in key order.
        self._partitions: dict[str, list[Partition]] = {table_id: self._open_partitions(table_id) for table_id in live}

    @classmethod
    async def open(cls, data_dir: str, **options) -> LocalRouter:
        """Open the node's tables, first trimming a left part a crash left holding keys past its end."""
        router = cls(data_dir, **options)
        try:
            for name in router.table_names():
                desc = router.table(name)
                for partition in router.partitions(desc):
                    if partition.end is not None and next(partition.scan(partition.end, space_end(ITEMS), limit=1),
                                                          None) is not None:
                        left_ops, _ = split_batches(desc, partition.scan(), partition.end)
                        await _trim(partition, left_ops)
        except BaseException:
            await router.close()
            raise
        return router

    def _engine(self, directory: str) -> Engine:
        os.makedirs(directory, exist_ok=True)
        return Engine(directory, backend=self._backend, sync=self._sync, metrics=self._metrics)

    def _open_partitions(self, table_id: str) -> list[Partition]:
        table_dir = os.path.join(self._tables_dir, table_id)
        layout = self.catalog.partition_map(table_id)
        names = {name for name, _ in layout}
        for entry in os.listdir(table_dir) if os.path.isdir(table_dir) else ():
            if entry not in names:
                shutil.rmtree(os.path.join(table_dir, entry))  # the right part of a split that never committed
        ends = [start for _, start in layout[1:]] + [None]
        return [Partition(self._engine(os.path.join(table_dir, name)), start, end)
                for (name, start), end in zip(layout, ends)]

    # -- catalog -------------------------------------------------------------------

    def table(self, name: str) -> dict | None:
        return self.catalog.get(name)

    def table_names(self) -> list[str]:
        return self.catalog.names()

    @property
    def catalog_lock(self):
        """Held by every catalog read-modify-write (see catalog.py), and by a split up to its switch."""
        return self.catalog.lock

    async def create_table(self, desc: dict) -> None:
        table_id = desc["TableId"]
        partitions = self._open_partitions(table_id)
        try:
            await self.catalog.put(desc)
        except BaseException:
            for partition in partitions:
                partition.engine.close()
            shutil.rmtree(os.path.join(self._tables_dir, table_id), ignore_errors=True)
            raise
        self._partitions[table_id] = partitions

    async def update_table(self, desc: dict) -> None:
        await self.catalog.put(desc)

    async def delete_table(self, name: str) -> None:
        table_id = self.catalog.get(name)["TableId"]
        await self.catalog.delete(name)
        for partition in self._partitions.pop(table_id):
            await partition.close()
        shutil.rmtree(os.path.join(self._tables_dir, table_id))

    # -- partitions ----------------------------------------------------------------------

    def partition_for(self, desc: dict, key: bytes) -> Partition:
        partitions = self._partitions[desc["TableId"]]
        low, high = 0, len(partitions) - 1
        while low < high:  # the last partition whose start is at or before key
            middle = (low + high + 1) // 2
            if partitions[middle].start <= key:
                low = middle
            else:
                high = middle - 1
        return partitions[low]

    def partitions(self, desc: dict) -> list[Partition]:
        return self._partitions[desc["TableId"]]

    async def split(self, desc: dict, partition: Partition, key: bytes) -> tuple[Partition, Partition] | None:
        """Cut ``partition`` of table ``desc`` at item storage key ``key``; returns (left, right).

        ``key`` must be a partition-key boundary inside the partition's range
        (operations/split.choose_split_key). Returns None, changing nothing, when the
        table or the partition is gone by the time the split starts.
        """
        table_id = desc["TableId"]
        if not (partition.start < key and (partition.end is None or key < partition.end)):
            raise ValueError("the split key must lie inside the partition, after its first key")
        async with self.catalog.lock:
            partitions = self._partitions.get(table_id)
            if partitions is None or partition not in partitions:
                return None
            desc = self.catalog.get(desc["TableName"])  # the current description: its indexes
            await partition.hold()
            try:
                left_ops, right_items = split_batches(desc, partition.scan(), key)
                table_dir = os.path.join(self._tables_dir, table_id)
                taken = set(os.listdir(table_dir))
                name = next(f"p{n}" for n in range(len(taken) + 1) if f"p{n}" not in taken)
                right_engine = Engine.build(os.path.join(table_dir, name), right_items, 0, backend=self._backend,
                                            sync=self._sync, metrics=self._metrics)
                at = partitions.index(partition)
                layout = list(self.catalog.partition_map(table_id))
                try:
                    await self.catalog.put_partition_map(table_id, layout[:at + 1] + [(name, key)] + layout[at + 1:])
                except BaseException:
                    # A failed write may still have become durable. Writing the old map back
                    # settles it; then the right part is an orphan. Should that fail too, the
                    # next open decides, and the directory must stay for it.
                    right_engine.close()
                    await self.catalog.put_partition_map(table_id, layout)
                    shutil.rmtree(os.path.join(table_dir, name))
                    raise
            except BaseException:
                partition.release()
                raise
            left = Partition(partition.engine, partition.start, key)
            right = Partition(right_engine, key, partition.end)
            partitions[at:at + 1] = [left, right]
            partition.release(left)
            await _trim(left, left_ops)
        return left, right

    async def close(self) -> None:
        for partitions in self._partitions.values():
            for partition in partitions:
                await partition.close()
        self._partitions.clear()
        self.catalog.close()


async def _trim(partition: Partition, left_ops: list[tuple[bytes, bytes | None]]) -> None:
    """Write a split's ``left_ops`` in batches of at most ``limits.SPLIT_TRIM_BATCH_BYTES``.

    The statistics record (the last op) goes in the first batch, appended before this
    first suspends, so a write that follows a split reads the left part's new totals.
    The deletes after it are invisible to readers either way (see above).
    """
    batch, size = [left_ops[-1]], 0
    for op in left_ops[:-1]:
        if size + len(op[0]) > limits.SPLIT_TRIM_BATCH_BYTES:
            await partition.write(batch)
            batch, size = [], 0
        batch.append(op)
        size += len(op[0])
    await partition.write(batch)
