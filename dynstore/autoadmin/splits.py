"""The split loop: a partition whose items pass a size is cut in two.

Every ``interval_s`` (``limits.SPLIT_CHECK_INTERVAL_S``) the loop reads each partition's
statistics (DynamoDB's item bytes, operations/store.py) and splits those at or past
``split_bytes`` through the router (``router.split``), at the partition-key boundary
nearest the middle of their bytes (operations/split.choose_split_key). A partition that
holds one item collection cannot be cut: it is looked at again only once it has grown
by ``limits.SPLIT_RETRY_GROWTH``, so it is not scanned every round.

A failed split changes nothing a client sees (the router's split is crash-safe and
all-or-nothing); it is logged and tried again in a later round.
"""
from __future__ import annotations

import asyncio
import logging
import weakref

from dynstore import limits
from dynstore.api.operations.split import choose_split_key
from dynstore.api.operations.store import partition_stats

log = logging.getLogger(__name__)


class Splitter:
    """``partitions(desc)`` are the partitions of a table this process decides for (default:
    every one; in a cluster, those whose group it leads)."""

    def __init__(self, state, split_bytes: int = limits.PARTITION_SPLIT_BYTES_DEFAULT,
                 interval_s: float = limits.SPLIT_CHECK_INTERVAL_S, partitions=None):
        self.state = state
        self._partitions = partitions or state.router.partitions
        self.split_bytes = split_bytes
        self.interval_s = interval_s
        # Partition -> its item bytes when it was last found to hold a single item collection.
        self._uncuttable: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def round(self) -> int:
        """Split every partition past the size once; returns how many were split."""
        router = self.state.router
        done = 0
        for name in router.table_names():
            desc = router.table(name)
            if desc is None:
                continue
            for partition in list(self._partitions(desc)):
                size = partition_stats(self.state, partition).bytes
                retry = self._uncuttable.get(partition, 0) * (1 + limits.SPLIT_RETRY_GROWTH)
                if size < self.split_bytes or size < retry:
                    continue
                key = choose_split_key(desc, partition)
                if key is None:
                    self._uncuttable[partition] = size
                    continue
                if await router.split(desc, partition, key) is not None:
                    done += 1
        return done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.round()
            except Exception:
                log.exception("partition split failed; trying again next round")
