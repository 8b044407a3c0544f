"""The request router's seam: which tables exist and which partition holds a key.

The DynamoDB operations (``dynstore.api.operations``) see storage only through a
``Router``: a catalog of table descriptions and a lookup from a table's storage key
to the ``Partition`` that serves it. A single node answers both from its own disk
(``LocalRouter``); a cluster answers them from the replicated metadata service and
sends each partition's reads and writes to its replication group, without changing
a line of the operations.

The contract every router keeps:

* ``table(name)`` returns the stored description dict of an existing table, or None;
  ``table_names()`` lists every table in name order.
* ``await create_table(desc)`` / ``update_table(desc)`` / ``delete_table(name)`` return
  only once the catalog change is durable; callers hold ``catalog_lock`` from the read
  of a description to the end of its change.
* ``partition_for(desc, key)`` is the partition whose key range holds ``key``;
  ``partitions(desc)`` are all of the table's partitions in key order. A partition
  offers ``get``/``scan`` (durable state), ``get_latest`` and ``write`` (see partition.py).
"""
from dynstore.router.catalog import Catalog
from dynstore.router.local import LocalRouter
from dynstore.router.partition import Partition

__all__ = ["Catalog", "LocalRouter", "Partition"]
