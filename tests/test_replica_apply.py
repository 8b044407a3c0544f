"""Commands a replica applies in the background (replica.py ``Later``): a split copies half a
partition, so its replicas apply it in a task while the event loop goes on. Checked on a real
one-member group (Paxos, WAL and tree on disk): the entries after such a command wait for it,
in order, and closing the replica stops it.
"""
import asyncio

import pytest

from dynstore.replication.errors import NotLeader
from dynstore.replication.messages import STORAGE
from dynstore.replication.paxos import Timing
from dynstore.replication.replica import Later, Replica
from dynstore.storage.engine import decode_batch, encode_batch

TIMING = Timing(election_timeout=0.2, heartbeat_interval=0.02)


def replica_with_a_slow_command(directory, gate: asyncio.Event, started: list) -> Replica:
    """A replica whose commands write their batch at once, except one keyed b"slow", which
    writes it only once ``gate`` is set."""
    def apply(tree, slot, data):
        ops = decode_batch(data)
        if ops[0][0] != b"slow":
            tree.write_batch(ops)
            return None

        async def work():
            started.append(slot)
            await gate.wait()
            tree.write_batch(ops)
        return Later(work())
    return Replica(str(directory), 1, ((1, STORAGE),), send=lambda m: None, apply=apply, timing=TIMING)


async def leading(replica: Replica) -> Replica:
    """Started, and leading with a lease: its first entry of the term is committed, so a strong
    read is served rather than refused with NotLeader (as it is until then)."""
    replica.start()
    while not replica.core.lease_valid(replica.clock()):
        await asyncio.sleep(0.01)
    return replica


def test_entries_after_a_command_applied_later_wait_for_it_in_order(tmp_path):
    async def main():
        gate, started = asyncio.Event(), []
        replica = await leading(replica_with_a_slow_command(tmp_path, gate, started))
        try:
            first = await replica.put(encode_batch([(b"a", b"1")]))
            slow = asyncio.ensure_future(replica.put(encode_batch([(b"slow", b"2")])))
            after = asyncio.ensure_future(replica.put(encode_batch([(b"b", b"3")])))
            while replica.core.commit < first + 2:
                await asyncio.sleep(0.01)
            barrier = asyncio.ensure_future(replica.read_barrier())
            await asyncio.sleep(0.1)
            # Committed, but neither the slow command nor the write after it is applied yet,
            # and a strong read waits for both; the loop went on meanwhile.
            assert started == [first + 1] and replica.applied == first
            assert not (slow.done() or after.done() or barrier.done())
            assert replica.tree.get(b"b") is None
            gate.set()
            assert await slow == first + 1 and await after == first + 2
            await barrier
            assert replica.applied == first + 2
            assert replica.tree.get(b"slow") == b"2" and replica.tree.get(b"b") == b"3"
        finally:
            await replica.close()
    asyncio.run(main())


def test_closing_a_replica_stops_a_command_it_applies_later(tmp_path):
    async def main():
        gate, started = asyncio.Event(), []
        replica = await leading(replica_with_a_slow_command(tmp_path, gate, started))
        slow = asyncio.ensure_future(replica.put(encode_batch([(b"slow", b"1")])))
        while not started:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(replica.close(), 5)
        # Never applied, so never answered: the proposer learns to retry (the command is
        # committed, and a restart applies it).
        with pytest.raises(NotLeader):
            await slow
    asyncio.run(main())
    # Reopened, the replica applies the committed command again from its log.
    async def reopen():
        gate, started = asyncio.Event(), []
        gate.set()
        replica = await leading(replica_with_a_slow_command(tmp_path, gate, started))
        try:
            await replica.read_barrier()
            assert started and replica.tree.get(b"slow") == b"1"
        finally:
            await replica.close()
    asyncio.run(reopen())
