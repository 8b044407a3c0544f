"""The replicas of one process tick on a shared grid (replica.py ``_Ticks``): the loop wakes
once per grid point for all of them, rather than once per replica and deadline. Checked on
real groups (Paxos, WAL and tree on disk) sharing one event loop, as a node's groups do.
"""
import asyncio

from dynstore.limits import WAL_SEGMENT_BYTES_MIN
from dynstore.replication.messages import STORAGE, Accept
from dynstore.replication.paxos import LEADER, Timing
from dynstore.replication.replica import Replica

TIMING = Timing(election_timeout=1.0, heartbeat_interval=0.1)  # a quiet group beats every 0.25 s
QUANTUM_S = 0.05  # min(TICK_QUANTUM_S, heartbeat_interval / 2)
GROUPS = 10
MEMBERS = tuple((r, STORAGE) for r in (1, 2, 3))


def test_heartbeats_of_many_groups_leave_in_few_turns_of_the_loop(tmp_path):
    async def main():
        turn = 0
        beats: dict[int, list[int]] = {}  # group -> loop turns its leader's heartbeats left in

        def count_turns():
            nonlocal turn
            turn += 1
            loop.call_soon(count_turns)

        def send(m):
            if type(m) is Accept and not m.entries:
                beats.setdefault(m.group, []).append(turn)
            loop.call_soon(lambda: replicas[m.group, m.dst].step(m))

        loop = asyncio.get_running_loop()
        replicas = {(g, r): Replica(str(tmp_path / f"g{g}r{r}"), r, MEMBERS, send=send, group=g, timing=TIMING,
                                    seed=g * 10 + r, segment_bytes=WAL_SEGMENT_BYTES_MIN)
                    for g in range(GROUPS) for r, _ in MEMBERS}
        try:
            for replica in replicas.values():
                replica.start()
            while sum(r.core.role == LEADER for r in replicas.values()) < GROUPS:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # every new leader's opening entry committed and told: quiet
            beats.clear()
            count_turns()
            start = loop.time()
            await asyncio.sleep(2.0)
            elapsed = loop.time() - start
        finally:
            for replica in replicas.values():
                await replica.close()
        beat_turns = {t for ts in beats.values() for t in ts}
        per_group = [len(set(ts)) for ts in beats.values()]
        # Every group beat (to both peers in one turn) about every 0.25 s: 80 beats in all, each
        # of which would wake the loop on its own at its own deadline. On the grid they share at
        # most one turn per grid point.
        assert len(per_group) == GROUPS and min(per_group) >= 6, per_group
        assert len(beat_turns) <= elapsed / QUANTUM_S + 1, (len(beat_turns), sum(per_group))

    asyncio.run(main())
