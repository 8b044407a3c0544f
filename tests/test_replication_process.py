"""A replication group of three real processes over loopback TCP: crashes, partitions, catch-up.

Each test starts ``python -m dynstore.replication.group_process`` three times and talks to
the replicas through their client ports. Faults are real: kill -9, restarts from the
data directory, and links cut through the transport's fault hooks. Bounds stated here:

- after the leader dies or is cut off, a new leader commits within 3 election timeouts
  (a follower campaigns between one and two timeouts after it last heard the leader);
- a leader cut off from both followers serves no strong read sent after its lease could
  have run out (one election timeout after the cut) and commits nothing.

``--long`` runs five leader-kill rounds instead of one and the faulty-link load for 30 s instead of 3.
"""
import asyncio
import signal
import time

import pytest

from dynstore.replication.group_process import LocalGroup

from conftest import long_mode

ELECTION_TIMEOUT = 0.5
# A follower campaigns once it has heard nothing for a randomized timeout of one to two
# election timeouts, and its peers back it only after their own timeout has run out:
# at most 2 x ELECTION_TIMEOUT to a new leader, then one round to commit. The other two
# timeouts are slack for three processes sharing two loaded cores.
NEW_LEADER_WITHIN = 4 * ELECTION_TIMEOUT
VALUE = "v" * 1000


class Group(LocalGroup):
    def __init__(self, tmp_path, *extra_args: str):
        super().__init__(tmp_path, election_timeout=ELECTION_TIMEOUT,
                         extra_args=("--segment-bytes", str(256 * 1024), *extra_args))

    async def kill(self, rid: int, sig=signal.SIGKILL) -> None:
        code = await super().kill(rid, sig)
        assert code == (-sig if sig == signal.SIGKILL else 0), self.logs()

    async def items(self, rid: int) -> list:
        """Every applied item of replica ``rid``, page by page."""
        items, after = [], None
        while True:
            page = await self.call(rid, "scan", after=after)
            items += page["items"]
            if not page["more"]:
                return items
            after = items[-1][0]

    async def wait_converged(self, within: float = 10.0) -> dict:
        """Every running replica applied the same commit index and holds the same items."""
        deadline = time.monotonic() + within
        while True:
            states = {rid: await self.status(rid) for rid in self.clients}
            commits = {(s["commit"], s["applied"]) for s in states.values()}
            leaders = [rid for rid, s in states.items() if s["role"] == "leader"]
            if len(commits) == 1 and len(leaders) == 1 and all(s["leader"] == leaders[0] for s in states.values()):
                items = {rid: await self.items(rid) for rid in self.clients}
                if all(v == items[leaders[0]] for v in items.values()):
                    return dict(items[leaders[0]])
            assert time.monotonic() < deadline, f"replicas did not converge: {states}\n{self.logs()}"
            await asyncio.sleep(0.05)


def run_group(tmp_path, scenario, *extra_args):
    async def main():
        group = Group(tmp_path, *extra_args)
        try:
            await group.start_all()
            await scenario(group)
        finally:
            await group.close()
    asyncio.run(main())


async def writers(group: Group, acked: dict, stop: asyncio.Event, count: int = 4) -> None:
    """Clients writing unique keys until stopped; acked gets every acknowledged write."""
    async def writer(w: int):
        n = 0
        while not stop.is_set():
            key = f"w{w}-{n:06d}"
            started = time.monotonic()
            if await group.put(key, f"{key}:{VALUE}", deadline=started + 4 * NEW_LEADER_WITHIN):
                acked[key] = (f"{key}:{VALUE}", started, time.monotonic())
            n += 1
    await asyncio.gather(*(writer(w) for w in range(count)))


@pytest.mark.parametrize("rounds", [1, pytest.param(5, marks=pytest.mark.long)])
def test_leader_killed_while_clients_write(tmp_path, rounds):
    async def scenario(group: Group):
        await group.wait_leader(10)
        acked: dict = {}
        stop = asyncio.Event()
        load = asyncio.ensure_future(writers(group, acked, stop))
        for _ in range(rounds):
            await asyncio.sleep(0.7)
            leader = await group.wait_leader(10)
            before = len(acked)
            assert before > 0, group.logs()
            killed_at = time.monotonic()
            await group.kill(leader)
            new = await group.wait_leader(NEW_LEADER_WITHIN + 1, exclude=(leader,))
            # A write begun after the kill and acknowledged proves the new leader commits, in time.
            while not any(started > killed_at for _, started, _ in acked.values()):
                assert time.monotonic() - killed_at < NEW_LEADER_WITHIN, group.logs()
                await asyncio.sleep(0.01)
            assert new != leader
            await asyncio.sleep(0.3)
            await group.start(leader)
        stop.set()
        await load
        items = await group.wait_converged()
        lost = [k for k, (v, _, _) in acked.items() if items.get(k) != v]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        assert len(acked) > 50

    run_group(tmp_path, scenario)


def test_isolated_leader_stops_reading_and_committing(tmp_path):
    async def scenario(group: Group):
        old = await group.wait_leader(10)
        for i in range(20):
            assert await group.put(f"before{i}", VALUE, deadline=time.monotonic() + 5, prefer=old)
        others = [rid for rid in (1, 2, 3) if rid != old]
        await group.call(old, "faults", set={"cut": others})
        cut_at = time.monotonic()

        # The old leader keeps answering strong reads only while its lease may still hold.
        last_served = None
        while time.monotonic() - cut_at < 2 * ELECTION_TIMEOUT:
            sent = time.monotonic()
            r = await group.call(old, "get", key="before1", consistent=True)
            if r["ok"]:
                assert r["value"] == VALUE
                last_served = sent
            else:
                assert r["error"] == "NotLeader"
            await asyncio.sleep(0.005)
        assert last_served is None or last_served < cut_at + ELECTION_TIMEOUT, (last_served - cut_at)
        r = await group.call(old, "get", key="before1", consistent=True)
        assert not r["ok"] and r["error"] == "NotLeader"

        # It cannot commit: a write sent to it is never acknowledged.
        r = await group.call(old, "put", key="isolated", value=VALUE)
        assert not r["ok"], r

        # The other two elect a leader among themselves and take writes.
        new = await group.wait_leader(NEW_LEADER_WITHIN, exclude=(old,))
        assert new in others
        assert await group.put("after", VALUE, deadline=time.monotonic() + 5, prefer=new)
        r = await group.call(new, "get", key="after", consistent=True)
        assert r["ok"] and r["value"] == VALUE

        # Healed: one leader, and all three logs and states converge.
        await group.call(old, "faults", clear=True)
        items = await group.wait_converged()
        assert items["after"] == VALUE and all(items[f"before{i}"] == VALUE for i in range(20))
        assert len(await group.leaders()) == 1

    run_group(tmp_path, scenario)


async def write_while_a_follower_is_down(group: Group, count: int) -> tuple[int, int]:
    """Kill a follower, then write keys k0000.. through the leader; (leader, follower)."""
    leader = await group.wait_leader(10)
    follower = next(rid for rid in (1, 2, 3) if rid != leader)
    await group.kill(follower)
    deadline = time.monotonic() + 30
    for i in range(count):
        assert await group.put(f"k{i:04d}", f"{i}:{VALUE}", deadline=deadline, prefer=leader)
    return leader, follower


def test_restarted_follower_catches_up_from_the_log(tmp_path):
    async def scenario(group: Group):
        leader, follower = await write_while_a_follower_is_down(group, 300)
        await group.start(follower)
        items = await group.wait_converged()
        assert len(items) == 300 and items["k0007"] == f"7:{VALUE}"
        assert (await group.status(follower))["snapshots_installed"] == 0

    run_group(tmp_path, scenario)


def test_follower_behind_the_compacted_log_is_rebuilt_by_snapshot(tmp_path, storage_backend):
    async def scenario(group: Group):
        leader, follower = await write_while_a_follower_is_down(group, 400)
        status = await group.status(leader)
        assert status["snapshot_index"] > 0 and status["log_rewrites"] > 0, status
        await group.start(follower)
        items = await group.wait_converged()
        assert len(items) == 400 and items["k0007"] == f"7:{VALUE}"
        assert (await group.status(follower))["snapshots_installed"] == 1
        assert (await group.status(leader))["snapshots_sent"] >= 1
        # The installed tree and the log after it survive a crash of the rebuilt replica.
        for i in range(400, 450):
            assert await group.put(f"k{i:04d}", f"{i}:{VALUE}", deadline=time.monotonic() + 10, prefer=leader)
        await group.kill(follower)
        await group.start(follower)
        items = await group.wait_converged()
        assert len(items) == 450

    run_group(tmp_path, scenario, "--checkpoint-entries", "100", "--log-keep-entries", "20")


def test_writes_survive_lossy_duplicating_reordering_corrupting_links(tmp_path):
    async def scenario(group: Group):
        await group.wait_leader(10)
        faults = {"drop": 0.05, "duplicate": 0.05, "corrupt": 0.02, "jitter_s": 0.005}
        for rid in (1, 2, 3):
            await group.call(rid, "faults", set=faults)
        acked: dict = {}
        stop = asyncio.Event()
        load = asyncio.ensure_future(writers(group, acked, stop, count=3))
        await asyncio.sleep(3 if not long_mode() else 30)
        stop.set()
        await load
        corrupt = 0
        for rid in (1, 2, 3):
            corrupt += (await group.call(rid, "status"))["transport"].get("corrupt", 0)
            await group.call(rid, "faults", clear=True)
        items = await group.wait_converged()
        assert corrupt > 0
        assert len(acked) > 20 and all(items.get(k) == v for k, (v, _, _) in acked.items())

    run_group(tmp_path, scenario)

