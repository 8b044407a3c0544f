"""The control plane of a cluster: its loops run on one node at a time.

Every node runs an ``Autoadmin``. Each round every node splits the partitions it leads that
are past the size (splits.py, through ``router.split``, which runs the split at the
partition group's leader): the leader holds the partition's current figures, and a table
placed on three nodes of many is split by those three. The rest only the node whose replica
of the metadata group leads under a valid lease does (the lease is the metadata group's own,
so two nodes never act at once for longer than a clock-drift bound, and a new metadata
leader takes over within an election). Each round it:

* reads every node's request counters (the Load call) and splits the partitions that have
  stayed hot on a node (heat.py), at the median of the keys that node saw them asked for
  (the partition's range from this node's replica, or from the published map when the
  table is placed elsewhere);
* publishes the partition map of every table to the metadata group (router/cluster.py
  ``publish_map``), as this node's replicas know it or, for a table placed elsewhere, as one
  of its nodes answers the Map call;
* heals: a node that has not answered the Load call for ``heal_after_s`` is replaced in the
  placement of each table on it (one lost node per table at a time) by a live node, of its
  zone if one is free, the one with the fewest tables, and another live node is named to
  hold log replicas meanwhile. Every partition whose group's membership differs from its
  table's placement is then moved one change a round toward it (the Reconfigure call at the
  group's leader): a log replica is added first (it needs only the log from the leader's
  position, so it is a member within a round or two and the group again has three copies
  of every new write), then the new storage replica, once it holds a snapshot of the
  leader's state, then the lost replica is removed; once every group has its new storage
  replica the log replicas are retired (removed from the groups, then their files). A node
  that answers again after it was replaced finds itself out of the placement and removes
  its replicas;
* balances: when no partition is moving, one table's replica is moved to another live node
  of its zone, by request rate first (a node holding the busiest tables does their work at
  every write) and then by count (a node back after it was replaced, or one added), the same
  way as healing moves it (balance.py). A replica moved away that leads its group hands the
  lead to one that stays before it leaves (node/routing.py ``_reconfigure``);
* evens out leaders, when no table moves: writes and strongly consistent reads run at a
  partition's leader, so the nodes leading the busiest partitions, or most partitions (as
  after a restart, when the others won every election), do most of the work. One partition
  a round is handed (the Transfer call) to another member, by request rate first and then by
  count (balance.py); after handing over a partition that takes requests the next waits a
  whole window of rates, so that they show where its requests now run. The leader hands
  over at an instant with no write in flight, and the group has no leader for a round trip
  (replication/paxos.py "Transfer").

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
from dynstore.autoadmin.balance import Holding, plan, table_replicas
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
                 heal_after_s: float = limits.HEAL_AFTER_S_DEFAULT,
                 interval_s: float = limits.SPLIT_CHECK_INTERVAL_S, clock=time.monotonic):
        self.router = state.router
        self.splitter = Splitter(state, split_bytes, interval_s, partitions=self._led)
        self.heat = HeatTracker(limits.HOT_SHARE_MIN, hot_rate_min, hot_sustain_s, limits.LOAD_WINDOW_S)
        self._call_node = call_node
        self._nodes = list(nodes)
        self._clock = clock
        self.interval_s = interval_s
        self.heal_after_s = heal_after_s
        self._heard: dict[int, float] = {}  # node -> when it last answered Load
        self._active_since: float | None = None  # nodes count as heard when this instance took over
        self.rounds = 0  # rounds this node ran as the active instance
        self.heat_splits = 0  # partitions split for heat by this node
        self._load_moved_at = float("-inf")  # when this node last handed a lead over for load

    def _led(self, desc: dict) -> list:
        """The partitions of the table this node's replicas lead (a replica that waits for a
        snapshot leads nothing)."""
        return [group.view() for group in self.router.table_groups(desc) if group.is_leader() and group.seeded]

    def active(self) -> bool:
        return self.router.meta.serves_strong()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.splitter.round()
                if not self.active():
                    self._active_since = None
                    continue
                if self._active_since is None:
                    self._active_since = self._clock()
                await self._split_hot()
                maps = await self._maps()
                for desc, partitions in maps:
                    await self.router.publish_map(desc, partitions)
                if await self._heal(maps) and not await self._balance(maps):
                    await self._even_leaders(maps)
            except (DynamoDBError, ReplicationError, ConnectionError) as exc:
                log.warning("autoadmin round failed, trying again next round: %s", exc)
            self.rounds += 1

    async def _maps(self) -> list[tuple[dict, list[dict]]]:
        """(description, partitions) of every table whose partitions a node holding it tells
        (this one, or one that answers the Map call)."""
        maps = []
        for name in self.router.table_names():
            desc = self.router.table(name)
            if desc is None:
                continue
            if self.router.holds(desc) and self.router.serves(desc):
                partitions = self.router.partition_map(desc)
            else:
                partitions = await self._remote_map(desc)
                if partitions is None:
                    continue  # none of its nodes answers: the map is published once one does
            maps.append((desc, partitions))
        return maps

    def _lost(self) -> set[int]:
        now = self._clock()
        return {n for n in self._nodes if now - max(self._heard.get(n, 0.0), self._active_since) > self.heal_after_s}

    async def _heal(self, maps: list[tuple[dict, list[dict]]]) -> bool:
        """One round of healing; True when every table was already settled: its groups' members
        are its placement, with no log replica standing in."""
        settled = True
        lost = self._lost()
        for desc, partitions in maps:
            table_id = desc["TableId"]
            hosts = self.router.hosts(table_id)
            gone = sorted(set(hosts) & lost)
            if len(gone) == 1:
                taken = self._replacement(hosts, gone[0], lost)
                if taken is not None:
                    log_at = self._log_node(hosts + [taken], lost)
                    log.warning("node %d is lost: placing %s on node %d instead (log replicas on %s)", gone[0],
                                desc["TableName"], taken, log_at)
                    await self.router.replace_host(desc, gone[0], taken, log_at)
            hosts, logs = self.router.hosts(table_id), self.router.log_hosts(table_id)
            unsettled = [p for p in partitions
                         if sorted(p["members"]) != sorted(hosts + logs) or sorted(p["logs"]) != sorted(logs)]
            settled = settled and not unsettled and not logs
            for partition in unsettled:
                try:
                    await self.router.control("Reconfigure", {"table": desc["TableName"],
                                                              "group": partition["group"], "hosts": hosts,
                                                              "logs": logs})
                except (DynamoDBError, ReplicationError, ConnectionError) as exc:
                    # One partition's leader out of reach holds back none of the others.
                    log.warning("could not move partition %d of %s this round: %s", partition["group"],
                                desc["TableName"], exc)
            if logs and not unsettled:
                log.warning("%s has its new replicas: retiring its log replicas", desc["TableName"])
                await self.router.retire_logs(desc)
        return settled

    def _log_node(self, hosts: list[int], lost: set[int]) -> int | None:
        """A live node to hold log replicas for a table healing onto ``hosts``: the one with
        the fewest tables (any zone: it holds no state and leaves once the table is whole)."""
        free = [n for n in self._nodes if n not in hosts and n not in lost]
        tables_on = self.router.tables_on()
        return min(free, key=lambda n: (tables_on.get(n, 0), n)) if free else None

    async def _balance(self, maps: list[tuple[dict, list[dict]]]) -> bool:
        """Move one table's replica to another node of its zone, so that the nodes of each zone
        hold alike by request rate and by count (balance.py). One move at a time: called only
        once the last one has settled (``_heal``). True if it started one."""
        rates: dict[int, float] = {}  # group -> requests a second at all its replicas
        for node in self._nodes:
            for group, rate in self.heat.rates(node).items():
                rates[group] = rates.get(group, 0.0) + rate
        tables = [(desc["TableName"], self.router.hosts(desc["TableId"]),
                   sum(rates.get(p["group"], 0.0) for p in partitions)) for desc, partitions in maps]
        replicas = table_replicas(tables, {n: self.router.zone(n) for n in self._nodes}, self._lost())
        move = plan(replicas, rate_min=limits.LOAD_IMBALANCE_MIN_RATE, share=limits.LOAD_IMBALANCE_SHARE,
                    count_min=limits.TABLES_IMBALANCE_MIN)
        if move is None:
            return False
        replica = move.holding
        log.warning("moving %s (%.0f requests/s) from node %d to node %d to even out the nodes' %s", replica.name,
                    replica.rate, replica.holder, move.to, move.why)
        await self.router.replace_host(maps[replica.key][0], replica.holder, move.to)
        return True

    async def _even_leaders(self, maps: list[tuple[dict, list[dict]]]) -> None:
        """Hand one partition's lead to another of its members, so that the nodes lead alike by
        request rate and by count (balance.py). Only in a group whose every member answered the
        last rounds: one with a member stopped or cut off has no slack for a change of leader."""
        now = self._clock()
        if now - self._load_moved_at < limits.LOAD_WINDOW_S:
            return
        answering = {n for n in self._nodes if now - self._heard.get(n, -1e9) <= 2 * self.interval_s}
        rates = {node: self.heat.rates(node) for node in self._nodes}
        leads = [Holding(desc["TableName"], p["group"], p["leader"],
                         tuple(m for m in p["members"] if m not in p["logs"]),
                         rates[p["leader"]].get(p["group"], 0.0), set(p["members"]) <= answering)
                 for desc, partitions in maps for p in partitions if p["leader"] in rates]
        move = plan(leads, rate_min=limits.LOAD_IMBALANCE_MIN_RATE, share=limits.LOAD_IMBALANCE_SHARE,
                    count_min=limits.LEADERS_IMBALANCE_MIN)
        if move is None:
            return
        lead = move.holding
        led = [x for x in leads if x.holder == lead.holder]
        log.info("node %d leads %d partitions at %.0f requests/s: handing node %d the lead of partition %d of %s "
                 "(%.0f/s) for %s", lead.holder, len(led), sum(x.rate for x in led), move.to, lead.key, lead.name,
                 lead.rate, move.why)
        await self.router.control("Transfer", {"table": lead.name, "group": lead.key, "to": move.to})
        if lead.rate > 0:
            self._load_moved_at = now

    def _replacement(self, hosts: list[int], gone: int, lost: set[int]) -> int | None:
        """A live node for a table of ``hosts`` that lost ``gone``: of its zone if one is free,
        else of a zone the table is not in, else any; the one with the fewest tables."""
        free = [n for n in self._nodes if n not in hosts and n not in lost]
        if not free:
            return None
        zone_of = self.router.zone
        used = {zone_of(n) for n in hosts if n != gone}
        tables_on = self.router.tables_on()
        return min(free, key=lambda n: (zone_of(n) != zone_of(gone), zone_of(n) in used, tables_on.get(n, 0), n))

    async def _remote_map(self, desc: dict) -> list[dict] | None:
        for node in self.router.hosts(desc["TableId"]):
            try:
                answer = await self._call_node(node, "Map", {"table": desc["TableName"]})
            except ConnectionError:
                continue
            if answer["desc"] is not None and answer["desc"]["TableId"] == desc["TableId"] and answer["current"]:
                return answer["partitions"]
        return None

    def _range_of(self, group_id: int) -> tuple[dict, bytes, bytes | None] | None:
        """(table description, start, end) of a group: from this node's replica, or from the
        published map of a table placed elsewhere."""
        group = self.router.groups.get(group_id)
        if group is not None:
            desc = self.router.table_of_group(group_id)
            return None if desc is None else (desc, group.range.start, group.range.end)
        for name in self.router.table_names():
            desc = self.router.table(name)
            stored = None if desc is None else self.router.stored_map(desc["TableId"])
            for p in stored["partitions"] if stored else ():
                if p["group"] == group_id:
                    return desc, bytes.fromhex(p["start"]), None if p["end"] is None else bytes.fromhex(p["end"])
        return None

    async def _split_hot(self) -> None:
        async def load(node: int) -> dict | None:
            try:
                return await self._call_node(node, "Load", {})
            except ConnectionError:
                return None  # a node down takes no requests; its counters are read again when it is back
        for node, answer in zip(self._nodes, await asyncio.gather(*map(load, self._nodes))):
            if answer is not None:
                self._heard[node] = self._clock()
                self.heat.observe(self._clock(), node, {int(g): n for g, n in answer["requests"].items()})
        for node, group_id in self.heat.hot(self._clock()):
            found = self._range_of(group_id)
            if found is None:
                continue
            desc, start, end = found
            sample = await self._call_node(node, "Load", {"sample": group_id})
            key = hot_split_key(desc, [bytes.fromhex(k) for k in sample["keys"]], start, end)
            if key is None:
                continue
            log.info("partition %d of %s is hot on node %d: splitting it", group_id, desc["TableName"], node)
            if await self.router.split_group(desc, group_id, key) is not None:
                self.heat.forget(group_id)
                self.heat_splits += 1
