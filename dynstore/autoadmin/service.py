"""The control plane of a cluster: its loops run on one node at a time.

Every node runs an ``Autoadmin``, but only the one whose replica of the metadata group
leads under a valid lease acts (the lease is the metadata group's own, so two nodes never
act at once for longer than a clock-drift bound, and a new metadata leader takes over
within an election). Each round it:

* splits the partitions past the size (splits.py, through ``router.split``, which runs
  the split at the partition group's leader, wherever that is);
* publishes the partition map of every table to the metadata group
  (router/cluster.py ``publish_map``).

It is never on the request path: a failed round changes nothing a client sees, is logged,
and is tried again in the next one.
"""
from __future__ import annotations

import asyncio
import logging

from dynstore import limits
from dynstore.api.errors import DynamoDBError
from dynstore.autoadmin.splits import Splitter
from dynstore.replication.errors import ReplicationError

log = logging.getLogger(__name__)


class Autoadmin:
    def __init__(self, state, split_bytes: int = limits.PARTITION_SPLIT_BYTES_DEFAULT,
                 interval_s: float = limits.SPLIT_CHECK_INTERVAL_S):
        self.router = state.router
        self.splitter = Splitter(state, split_bytes, interval_s)
        self.interval_s = interval_s
        self.rounds = 0  # rounds this node ran as the active instance

    def active(self) -> bool:
        return self.router.meta.serves_strong()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.active():
                continue
            try:
                await self.splitter.round()
                await self.router.publish_map()
            except (DynamoDBError, ReplicationError) as exc:
                log.warning("autoadmin round failed, trying again next round: %s", exc)
            self.rounds += 1
