"""The control plane of a cluster: its loops run on one node at a time.

Every node runs an ``Autoadmin``, but only the one whose replica of the metadata group
leads under a valid lease acts (the lease is the metadata group's own, so two nodes never
act at once for longer than a clock-drift bound, and a new metadata leader takes over
within an election). Each round it:

* splits the partitions past the size (splits.py, through ``router.split``, which runs
  the split at the partition group's leader, wherever that is);
* reads every node's request counters (the Load call) and splits the partitions that have
  stayed hot on a node (heat.py), at the median of the keys that node saw them asked for;
* publishes the partition map of every table to the metadata group
  (router/cluster.py ``publish_map``).

It is never on the request path: a failed round changes nothing a client sees, is logged,
and is tried again in the next one.
"""
from __future__ import annotations

import asyncio
import logging
import time

from dynstore import limits
from dynstore.api.errors import DynamoDBError
from dynstore.autoadmin.heat import HeatTracker, hot_split_key
from dynstore.autoadmin.splits import Splitter
from dynstore.replication.errors import ReplicationError

log = logging.getLogger(__name__)


class Autoadmin:
    """``call_node(node, op, request)`` makes a node-addressed control call (node/routing.py)
    to each of ``nodes``."""

    def __init__(self, state, call_node, nodes: list[int], *,
                 split_bytes: int = limits.REPLICATED_SPLIT_BYTES_DEFAULT,
                 hot_rate_min: float = limits.HOT_RATE_MIN_DEFAULT,
                 hot_sustain_s: float = limits.HOT_SUSTAIN_S_DEFAULT,
                 interval_s: float = limits.SPLIT_CHECK_INTERVAL_S, clock=time.monotonic):
        self.router = state.router
        self.splitter = Splitter(state, split_bytes, interval_s)
        self.heat = HeatTracker(limits.HOT_SHARE_MIN, hot_rate_min, hot_sustain_s)
        self._call_node = call_node
        self._nodes = list(nodes)
        self._clock = clock
        self.interval_s = interval_s
        self.rounds = 0  # rounds this node ran as the active instance
        self.heat_splits = 0  # partitions split for heat by this node

    def active(self) -> bool:
        return self.router.meta.serves_strong()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.active():
                continue
            try:
                await self.splitter.round()
                await self._split_hot()
                await self.router.publish_map()
            except (DynamoDBError, ReplicationError, ConnectionError) as exc:
                log.warning("autoadmin round failed, trying again next round: %s", exc)
            self.rounds += 1

    async def _split_hot(self) -> None:
        for node in self._nodes:
            try:
                load = await self._call_node(node, "Load", {})
            except ConnectionError:
                continue  # a node down takes no requests; its counters are read again when it is back
            self.heat.observe(self._clock(), node, {int(g): n for g, n in load["requests"].items()})
        for node, group_id in self.heat.hot(self._clock()):
            group = self.router.groups.get(group_id)
            desc = self.router.table_of_group(group_id)
            if group is None or desc is None:
                continue
            sample = await self._call_node(node, "Load", {"sample": group_id})
            rng = group.range
            key = hot_split_key(desc, [bytes.fromhex(k) for k in sample["keys"]], rng.start, rng.end)
            if key is None:
                continue
            log.info("partition %d of %s is hot on node %d: splitting it", group_id, desc["TableName"], node)
            if await self.router.split(desc, group.view(), key) is not None:
                self.heat.forget(group_id)
                self.heat_splits += 1
