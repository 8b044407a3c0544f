"""A leader tells its followers of its opening entry's commit, and in the metadata group of every
commit, within COMMIT_TELL_S (replica.py ``_tell_soon``), not at its next heartbeat, and sends
nothing more for it while its next Accepts tell them anyway. Checked on a real group (Paxos, WAL
and tree on disk) on one event loop.
"""
import asyncio
import contextlib

from dynstore.limits import COMMIT_TELL_S, WAL_SEGMENT_BYTES_MIN
from dynstore.replication.messages import STORAGE, Accept
from dynstore.replication.paxos import LEADER, Timing
from dynstore.replication.replica import Replica
from dynstore.storage.engine import encode_batch

TIMING = Timing(election_timeout=1.0, heartbeat_interval=0.1)
MEMBERS = tuple((r, STORAGE) for r in (1, 2, 3))


def _write(n: int) -> bytes:
    return encode_batch([(b"key %d" % n, b"value")])


@contextlib.asynccontextmanager
async def _group(tmp_path, sent: list, every: bool):
    loop = asyncio.get_running_loop()

    def send(m):
        sent.append(m)
        loop.call_soon(lambda: replicas[m.dst].step(m))

    replicas = {r: Replica(str(tmp_path / f"r{r}"), r, MEMBERS, send=send, timing=TIMING, seed=r,
                           segment_bytes=WAL_SEGMENT_BYTES_MIN) for r, _ in MEMBERS}
    for replica in replicas.values():
        replica.tell_every_commit = every
        replica.start()
    while not any(r.core.role == LEADER for r in replicas.values()):
        await asyncio.sleep(0.001)
    leader = next(r for r in replicas.values() if r.core.role == LEADER)
    while not leader.applied:  # its opening entry
        await asyncio.sleep(0.001)
    opened = asyncio.get_running_loop().time()
    while min(r.applied for r in replicas.values()) < leader.applied:
        await asyncio.sleep(0.001)
    opening_told = asyncio.get_running_loop().time() - opened
    await asyncio.sleep(0.3)  # quiet
    try:
        yield replicas, leader, opening_told
    finally:
        for replica in replicas.values():
            await replica.close()


async def _lone_writes(replicas, leader) -> list[float]:
    """Ten writes 30 ms apart: how long after each committed at the leader every follower applied it."""
    lags = []
    for n in range(10):
        await asyncio.sleep(0.03)  # apart: no later Accept to carry the commit
        slot = await leader.put(_write(n))
        committed = asyncio.get_running_loop().time()
        while min(r.applied for r in replicas.values()) < slot:
            await asyncio.sleep(0.0005)
        lags.append(asyncio.get_running_loop().time() - committed)
    return lags


def test_followers_apply_a_lone_write_within_the_tell_delay_where_every_commit_is_told(tmp_path):
    async def main():
        sent = []
        async with _group(tmp_path, sent, every=True) as (replicas, leader, opening_told):
            lags = await _lone_writes(replicas, leader)
        print("followers applied after the leader (ms):", [round(lag * 1e3, 1) for lag in lags])
        # A heartbeat would tell them up to heartbeat_interval (100 ms) later, 50 ms on average.
        assert max(sorted(lags)[:-1]) < COMMIT_TELL_S + 0.015, lags
        assert opening_told < COMMIT_TELL_S + 0.015, opening_told

    asyncio.run(main())


def test_elsewhere_only_a_new_leaders_opening_entry_is_told_at_once(tmp_path):
    async def main():
        sent = []
        async with _group(tmp_path, sent, every=False) as (replicas, leader, opening_told):
            sent.clear()
            began = asyncio.get_running_loop().time()
            lags = await _lone_writes(replicas, leader)
            elapsed = asyncio.get_running_loop().time() - began
        empty = [m for m in sent if type(m) is Accept and m.src == leader.core.id and not m.entries]
        print(f"opening told after {opening_told * 1e3:.1f} ms; lone writes applied after (ms):",
              [round(lag * 1e3, 1) for lag in lags], f"{len(empty)} Accepts without entries")
        assert opening_told < COMMIT_TELL_S + 0.015, opening_told
        # The followers learn the lone writes' commits from heartbeats (every 0.1 s to each peer),
        # and no Accept of its own goes to them for any.
        assert sorted(lags)[len(lags) // 2] > COMMIT_TELL_S + 0.015, lags
        assert len(empty) <= 2 * (elapsed / 0.1 + 2), (len(empty), elapsed)

    asyncio.run(main())


def test_a_stream_of_writes_tells_its_commits_in_its_own_accepts(tmp_path):
    async def main():
        sent = []
        async with _group(tmp_path, sent, every=True) as (replicas, leader, _):
            sent.clear()
            writes = [asyncio.ensure_future(leader.put(_write(n))) for n in range(5)]
            for n in range(200):
                writes.append(asyncio.ensure_future(leader.put(_write(n + 5))))
                await asyncio.sleep(COMMIT_TELL_S / 5)
            await asyncio.gather(*writes)
        accepts = [m for m in sent if type(m) is Accept and m.src == leader.core.id]
        empty = [m for m in accepts if not m.entries]
        print(f"{len(accepts)} Accepts for 205 writes, {len(empty)} of them without entries")
        # Heartbeats for 0.2 s and the tells at the end of the stream, not one per write.
        assert len(empty) <= 20, (len(empty), len(accepts))

    asyncio.run(main())
