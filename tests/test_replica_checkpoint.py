"""A replica writes its tree's changed pages ahead in the last stretch before a checkpoint
(replica.py ``_checkpoint_if_due``), so that the checkpoint, which writes the rest on the event
loop, finds few. Checked on a real one-member group (Paxos, WAL and tree on disk)."""
import asyncio

from dynstore.limits import CHECKPOINT_WRITE_AHEAD_FROM, CHECKPOINT_WRITE_AHEAD_PAGES
from dynstore.replication.messages import STORAGE
from dynstore.replication.replica import Replica
from dynstore.storage.engine import encode_batch
from test_replica_apply import TIMING, leading

CHECKPOINT_ENTRIES = 1000


def test_changed_pages_go_to_disk_ahead_of_the_checkpoint(tmp_path):
    async def main():
        replica = await leading(Replica(str(tmp_path), 1, ((1, STORAGE),), send=lambda m: None, timing=TIMING,
                                        checkpoint_entries=CHECKPOINT_ENTRIES))
        stretch = int(CHECKPOINT_ENTRIES * CHECKPOINT_WRITE_AHEAD_FROM)
        try:
            n = 0

            async def write():
                nonlocal n
                await replica.put(encode_batch([(b"k%05d" % n, bytes([n % 251]) * 1000)]))
                n += 1

            while replica.applied < stretch - 1:
                await write()
            piled = replica.tree.stats()["dirty_pages"]
            assert piled > 2 * CHECKPOINT_WRITE_AHEAD_PAGES  # before the stretch, nothing goes out early
            await write()
            await write()
            assert replica.tree.stats()["dirty_pages"] < piled  # each apply now writes some ahead
            while replica.tree.stats()["dirty_pages"] and replica.applied < CHECKPOINT_ENTRIES - 1:
                await write()
            # All written ahead before the checkpoint came due: it has only the last few to write.
            assert replica.applied < CHECKPOINT_ENTRIES - 1 and replica.tree.checkpoint_lsn == 0
            while replica.tree.checkpoint_lsn == 0:
                await write()
            assert all(replica.tree.get(b"k%05d" % i) == bytes([i % 251]) * 1000 for i in range(n))
        finally:
            await replica.close()
    asyncio.run(main())


def test_a_checkpoint_with_many_changed_pages_writes_them_a_few_at_a_time(tmp_path):
    """A checkpoint asked for before the stretch (as shipping a snapshot does) finds every changed
    page still to write: they go out between other work, not in one go on the event loop."""
    async def main():
        replica = await leading(Replica(str(tmp_path), 1, ((1, STORAGE),), send=lambda m: None, timing=TIMING,
                                        checkpoint_entries=100_000))
        try:
            for first in range(0, 1500, 50):
                await asyncio.gather(*(replica.put(encode_batch([(b"k%05d" % n, bytes([n % 251]) * 1000)]))
                                       for n in range(first, first + 50)))
            piled = replica.tree.stats()["dirty_pages"]
            assert piled > 4 * CHECKPOINT_WRITE_AHEAD_PAGES
            seen, done = [], asyncio.Event()

            async def watch():
                while not done.is_set():
                    seen.append(replica.tree.stats()["dirty_pages"])
                    await asyncio.sleep(0)

            watcher = asyncio.ensure_future(watch())
            replica._checkpoint()
            await replica._checkpointing
            done.set()
            await watcher
            assert any(0 < d < piled for d in seen)  # the loop ran while they were being written
            assert replica.tree.checkpoint_lsn == replica.applied
        finally:
            await replica.close()
    asyncio.run(main())
