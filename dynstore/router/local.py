"""The single-node router: the catalog and every table partition on this node's disk.

Layout under the data directory::

    catalog/               the catalog's Engine (see catalog.py)
    tables/<TableId>/p0/   the Engine of the table's one partition

A table is named on disk by its TableId, not its name, so a table deleted and
created again under the same name never meets the old data.

Faults survived:

* Crash during CreateTable after the partition directory was made but before the
  catalog write was durable: the table does not exist; the orphan directory is
  removed at the next open.
* Crash during DeleteTable after the catalog delete was durable but before the
  partition directory was removed: the table is gone; the directory is removed at
  the next open. The catalog is the only truth about which tables exist.
"""
from __future__ import annotations

import os
import shutil

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
        # TableId -> the table's partitions in key order (one on a single node).
        self._partitions: dict[str, list[Partition]] = {
            table_id: [Partition(self._engine(self._partition_dir(table_id)))] for table_id in live
        }

    def _engine(self, directory: str) -> Engine:
        os.makedirs(directory, exist_ok=True)
        return Engine(directory, backend=self._backend, sync=self._sync, metrics=self._metrics)

    def _partition_dir(self, table_id: str) -> str:
        return os.path.join(self._tables_dir, table_id, "p0")

    # -- catalog -------------------------------------------------------------------

    def table(self, name: str) -> dict | None:
        return self.catalog.get(name)

    def table_names(self) -> list[str]:
        return self.catalog.names()

    @property
    def catalog_lock(self):
        """Held by every catalog read-modify-write (see catalog.py)."""
        return self.catalog.lock

    async def create_table(self, desc: dict) -> None:
        table_id = desc["TableId"]
        partition = Partition(self._engine(self._partition_dir(table_id)))
        try:
            await self.catalog.put(desc)
        except BaseException:
            partition.engine.close()
            shutil.rmtree(os.path.join(self._tables_dir, table_id), ignore_errors=True)
            raise
        self._partitions[table_id] = [partition]

    async def update_table(self, desc: dict) -> None:
        await self.catalog.put(desc)

    async def delete_table(self, name: str) -> None:
        table_id = self.catalog.get(name)["TableId"]
        await self.catalog.delete(name)
        for partition in self._partitions.pop(table_id):
            await partition.close()
        shutil.rmtree(os.path.join(self._tables_dir, table_id))

    # -- partition lookup ------------------------------------------------------------

    def partition_for(self, desc: dict, key: bytes) -> Partition:
        # One partition per table on a single node: it serves every key.
        return self._partitions[desc["TableId"]][0]

    def partitions(self, desc: dict) -> list[Partition]:
        return self._partitions[desc["TableId"]]

    async def close(self) -> None:
        for partitions in self._partitions.values():
            for partition in partitions:
                await partition.close()
        self._partitions.clear()
        self.catalog.close()
