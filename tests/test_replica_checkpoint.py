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
