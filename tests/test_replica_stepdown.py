"""A leader that steps down with a write in flight (replica.py ``_orphan_waiters``): the write
learns its outcome from the slot the group chose, instead of "may or may not have taken
effect". Checked on a real group of three replicas (Paxos, WAL and tree on disk) in one event
loop, whose messages go through a switchboard that can cut links.
"""
import asyncio
import time

import pytest

from dynstore.replication.errors import NotChosen, NotLeader
from dynstore.replication.messages import STORAGE
from dynstore.replication.paxos import LEADER, Timing
from dynstore.replication.replica import Replica
from dynstore.storage.engine import decode_batch, encode_batch

TIMING = Timing(election_timeout=0.3, heartbeat_interval=0.03)
MEMBERS = tuple((r, STORAGE) for r in (1, 2, 3))


class Group:
    """Three replicas; ``cut`` holds the (src, dst) links whose messages are dropped."""

    def __init__(self, directory):
        self.cut: set[tuple[int, int]] = set()
        self.replicas = {r: Replica(str(directory / f"r{r}"), r, MEMBERS, send=self._send, timing=TIMING,
                                    seed=r) for r, _ in MEMBERS}

    def _send(self, m) -> None:
        if (m.src, m.dst) not in self.cut:
            asyncio.get_running_loop().call_soon(self._deliver, m)

    def _deliver(self, m) -> None:
        if (m.src, m.dst) not in self.cut:
            self.replicas[m.dst].step(m)

    async def leader(self) -> Replica:
        for replica in self.replicas.values():
            replica.start()
        while True:
            for replica in self.replicas.values():
                if replica.core.lease_valid(replica.clock()):
                    return replica
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.close()

    @classmethod
    def run(cls, directory, scenario) -> None:
        """``await scenario(group)`` on a new group, closed after it."""
        async def main():
            group = cls(directory)
            try:
                await scenario(group)
            finally:
                await group.close()
        asyncio.run(main())


async def step_down_with_a_write_in_flight(group: Group):
    """The leader proposes a write that its followers accept but whose acknowledgements it never
    gets: without a quorum for an election timeout, it steps down."""
    leader = await group.leader()
    group.cut |= {(r, leader.id) for r in group.replicas if r != leader.id}
    write = asyncio.ensure_future(leader.put(encode_batch([(b"k", b"v")])))
    while leader.core.role == LEADER:
        await asyncio.sleep(0.01)
    return leader, write


def test_a_write_whose_leader_stepped_down_learns_it_was_chosen(tmp_path):
    async def scenario(group):
        leader, write = await step_down_with_a_write_in_flight(group)
        await asyncio.sleep(0.05)
        assert not write.done()  # still waiting: the followers hold the write
        group.cut.clear()
        slot = await asyncio.wait_for(write, 5)
        # The next leader recovered it at that slot; the old one applied it and answered.
        assert leader.tree.get(b"k") == b"v" and leader.applied >= slot
        while any(r.applied < slot for r in group.replicas.values()):
            await asyncio.sleep(0.01)
        assert all(r.tree.get(b"k") == b"v" for r in group.replicas.values())
    Group.run(tmp_path, scenario)


def test_a_write_whose_slot_a_new_leader_filled_learns_it_was_not_chosen(tmp_path):
    async def scenario(group):
        leader = await group.leader()
        others = [r for r in group.replicas if r != leader.id]
        group.cut |= {(leader.id, r) for r in others} | {(r, leader.id) for r in others}
        write = asyncio.ensure_future(leader.put(encode_batch([(b"k", b"lost")])))
        await asyncio.sleep(0)
        slot = max(leader._waiting)
        while True:  # the others elect a leader of their own, which fills the slot otherwise
            successor = next((group.replicas[r] for r in others if group.replicas[r].core.lease_valid(
                group.replicas[r].clock())), None)
            if successor is not None:
                break
            await asyncio.sleep(0.01)
        assert await successor.put(encode_batch([(b"k", b"written")])) >= slot
        group.cut.clear()
        with pytest.raises(NotChosen):
            await asyncio.wait_for(write, 5)
        # The old leader follows the new one: its write is nowhere, the new leader's everywhere.
        while leader.applied < successor.applied:
            await asyncio.sleep(0.01)
        assert all(r.tree.get(b"k") == b"written" for r in group.replicas.values())
    Group.run(tmp_path, scenario)


def test_a_write_whose_leader_stepped_down_cut_off_gives_up(tmp_path):
    async def scenario(group):
        leader, write = await step_down_with_a_write_in_flight(group)
        stepped_down = time.monotonic()
        group.cut |= {(leader.id, r) for r in group.replicas if r != leader.id}
        with pytest.raises(NotLeader):
            await asyncio.wait_for(write, 10)
        # It waited for an outcome it could not learn, then gave up with "may have been written".
        assert time.monotonic() - stepped_down >= leader.orphan_wait - 0.05
        assert not leader._waiting
    Group.run(tmp_path, scenario)


def test_a_leader_hands_over_under_a_steady_stream_of_writes(tmp_path):
    async def scenario(group):
        leader = await group.leader()
        to = next(r for r in group.replicas if r != leader.id)
        proposed, refused, stop = [], [], asyncio.Event()

        async def writer():
            # A write every millisecond, none waiting for the one before: some are always in
            # flight, as under a steady load.
            n = 0
            while not stop.is_set():
                data = encode_batch([(b"k%d" % n, b"v")])
                n += 1
                try:
                    proposed.append((leader.propose(data), data))
                except NotLeader:
                    refused.append(data)  # nothing proposed: a router sends it to the next leader
                await asyncio.sleep(0.001)

        writing = asyncio.ensure_future(writer())
        while len(proposed) < 50:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        leader.handing_over = True
        while not leader.transfer(to):
            await asyncio.sleep(0.001)
            assert time.monotonic() - started < 1.0, "no instant to hand over came"
        leader.handing_over = False
        while group.replicas[to].core.role != LEADER:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        stop.set()
        await writing
        assert refused  # new writes went elsewhere once the hand-over began
        # Every write proposed before it is answered: done, at its slot, on every replica.
        slots = await asyncio.wait_for(asyncio.gather(*(future for future, _ in proposed)), 5)
        while any(r.applied < max(slots) for r in group.replicas.values()):
            await asyncio.sleep(0.01)
        for replica in group.replicas.values():
            assert all(replica.tree.get(decode_batch(data)[0][0]) == b"v" for _, data in proposed)
    Group.run(tmp_path, scenario)
