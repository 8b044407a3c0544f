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
* ``partitions(desc)`` are the table's partitions in key order. A partition owns the
  item storage keys (``schema.ITEMS`` ‖ encoded key) in ``[start, end)``: the first has
  ``start == b""``, the last ``end is None``, and each ends where the next starts. Its
  tree holds its statistics record, its items, the index entries of its own items and
  its canary key (operations/schema.py). ``partition_for(desc, key)`` is the partition
  whose range holds the item storage key ``key``.
* A partition offers ``get``/``scan`` (durable state), ``get_latest``, ``settle`` and
  ``write``, and ``switch``: None while it takes item writes, else an event set once a
  split has changed the map (see partition.py).
* ``await split(desc, partition, key)`` cuts a partition in two at a partition-key
  boundary, online and crash-safe: in place on a single node (local.py), through the
  partition group's log in a cluster (cluster.py, replicated.py); the cut itself is
  operations/split.py.
"""
from dynstore.router.catalog import Catalog
from dynstore.router.local import LocalRouter
from dynstore.router.partition import Partition

__all__ = ["Catalog", "LocalRouter", "Partition"]
