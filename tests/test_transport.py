"""The replication transport over real loopback TCP: delivery, reconnection and every fault hook."""
import asyncio
import struct

import pytest

from dynstore.limits import FRAME_BYTES_MAX
from dynstore.replication.group_process import free_ports
from dynstore.replication.messages import Accept, Ballot, Entry, Prepare, encode
from dynstore.replication import handshake
from dynstore.replication.errors import FrameError
from dynstore.replication.transport import Faults, Transport

GROUP = 7


SECRET = b"the secret of the cluster under test"


class Node:
    def __init__(self, rid: int, peers: dict, secret: bytes = SECRET):
        self.inbox: list = []
        self.got = asyncio.Event()
        self.transport = Transport(rid, GROUP, peers, self._deliver, faults=Faults(seed=rid), secret=secret)

    def _deliver(self, m) -> None:
        self.inbox.append(m)
        self.got.set()


async def cluster(n: int = 3) -> tuple[dict, list[Node]]:
    peers = {i + 1: ("127.0.0.1", p) for i, p in enumerate(free_ports(n))}
    nodes = [Node(rid, peers) for rid in peers]
    for node in nodes:
        await node.transport.start()
    await wait_for(lambda: all(len(nd.transport.connected()) == n - 1 for nd in nodes))
    return peers, nodes


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def close_all(nodes) -> None:
    for node in nodes:
        await node.transport.close()


def accept(src: int, dst: int, slot: int) -> Accept:
    return Accept(GROUP, src, dst, Ballot(3, src), slot - 1, Ballot(3, src), slot - 1, 1.5,
                  (Entry(slot, Ballot(3, src), 1, b"x" * 1000),))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_messages_arrive_whole_in_both_directions():
    async def main():
        _, nodes = await cluster()
        a, b, c = nodes
        a.transport.send(accept(1, 2, 5))
        c.transport.send(Prepare(GROUP, 3, 1, Ballot(4, 3), 9))  # 3 accepted the link 1 dialled
        await wait_for(lambda: b.inbox and a.inbox)
        assert b.inbox == [accept(1, 2, 5)]
        assert a.inbox == [Prepare(GROUP, 3, 1, Ballot(4, 3), 9)]
        await close_all(nodes)
    run(main())


def test_corrupt_frames_are_counted_and_never_delivered():
    async def main():
        _, (a, b, c) = await cluster()
        a.transport.faults.configure({"corrupt": 1.0})
        for slot in range(1, 51):
            a.transport.send(accept(1, 2, slot))
        await wait_for(lambda: b.transport.stats["corrupt"] == 50)
        assert b.inbox == []
        a.transport.faults.clear()
        a.transport.send(accept(1, 2, 51))
        await wait_for(lambda: b.inbox)
        assert b.inbox == [accept(1, 2, 51)]
        await close_all((a, b, c))
    run(main())


def test_drop_and_duplicate():
    async def main():
        _, (a, b, c) = await cluster()
        a.transport.faults.configure({"drop": 1.0})
        for slot in range(1, 21):
            a.transport.send(accept(1, 2, slot))
        assert a.transport.stats["fault_dropped"] == 20
        a.transport.faults.configure({"drop": 0.0, "duplicate": 1.0})
        a.transport.send(accept(1, 2, 21))
        await wait_for(lambda: len(b.inbox) == 2)
        assert b.inbox == [accept(1, 2, 21)] * 2
        await close_all((a, b, c))
    run(main())


def test_delay_with_jitter_reorders_but_delivers_everything():
    async def main():
        _, (a, b, c) = await cluster()
        a.transport.faults.configure({"delay_s": 0.01, "jitter_s": 0.05})
        sent = [accept(1, 2, slot) for slot in range(1, 101)]
        for m in sent:
            a.transport.send(m)
        await wait_for(lambda: len(b.inbox) == 100)
        assert sorted(b.inbox, key=lambda m: m.prev_slot) == sent
        assert b.inbox != sent  # 100 frames with 50 ms of jitter do not keep their order
        await close_all((a, b, c))
    run(main())


def test_cut_link_drops_both_directions_until_healed():
    async def main():
        _, (a, b, c) = await cluster()
        a.transport.faults.configure({"cut": [2]})
        a.transport.send(accept(1, 2, 1))
        b.transport.send(Prepare(GROUP, 2, 1, Ballot(4, 2), 1))
        a.transport.send(accept(1, 3, 1))  # the link to 3 is not cut
        await wait_for(lambda: c.inbox)
        await asyncio.sleep(0.1)
        assert a.inbox == [] and b.inbox == []
        a.transport.faults.configure({"cut": []})
        b.transport.send(Prepare(GROUP, 2, 1, Ballot(4, 2), 1))
        await wait_for(lambda: a.inbox)
        await close_all((a, b, c))
    run(main())


def test_restarted_peer_is_redialled():
    async def main():
        peers, (a, b, c) = await cluster()
        await c.transport.close()
        await wait_for(lambda: 3 not in a.transport.connected())
        a.transport.send(accept(1, 3, 1))
        assert a.transport.stats["unconnected"] >= 1
        c2 = Node(3, peers)
        await c2.transport.start()
        await wait_for(lambda: 3 in a.transport.connected() and 3 in b.transport.connected())
        a.transport.send(accept(1, 3, 2))
        await wait_for(lambda: c2.inbox)
        assert c2.inbox == [accept(1, 3, 2)]
        await close_all((a, b, c2))
    run(main())


def test_a_peer_removed_is_no_longer_linked_nor_dialled():
    async def main():
        peers, (a, b, c) = await cluster()
        for node in (a, b):  # each dialled 3 (the lower id dials)
            node.transport.remove_peer(3)
        await wait_for(lambda: 3 not in a.transport.connected() + b.transport.connected())
        # Started again, 3 is dialled by neither.
        await c.transport.close()
        c2 = Node(3, peers)
        await c2.transport.start()
        await asyncio.sleep(0.5)
        assert 3 not in a.transport.connected() + b.transport.connected()
        assert c2.transport.stats["connects"] == 0
        a.transport.send(accept(1, 3, 1))
        assert a.transport.stats["unconnected"] >= 1
        a.transport.send(accept(1, 2, 1))  # the others still talk
        await wait_for(lambda: b.inbox)
        await close_all((a, b, c2))
    run(main())


async def _dialled(host: str, port: int, group: int, replica: int, secret: bytes = SECRET):
    reader, writer = await asyncio.open_connection(host, port)
    await handshake.dial(reader, writer, secret, group, replica)
    return reader, writer


def test_strangers_and_out_of_step_streams_are_refused():
    async def main():
        peers, (a, b, c) = await cluster()
        host, port = peers[3]
        # A link for another group is refused after its opening.
        reader, writer = await _dialled(host, port, GROUP + 1, 1)
        assert await reader.read() == b""
        writer.close()
        # A peer whose stream announces a frame beyond the limit is cut off; it redials.
        reader, writer = await _dialled(host, port, GROUP, 2)
        writer.write(struct.pack("<II", FRAME_BYTES_MAX + 1, 0))
        assert await reader.read() == b""
        writer.close()
        assert c.transport.stats["bad_hello"] == 1 and c.transport.stats["desynced"] == 1
        # A message that names another sender than the link's peer is dropped.
        reader, writer = await _dialled(host, port, GROUP, 2)
        writer.write(encode(Prepare(GROUP, 1, 3, Ballot(4, 1), 1)))
        await wait_for(lambda: c.transport.stats["misaddressed"] == 1)
        writer.close()
        assert c.inbox == []
        await wait_for(lambda: 3 in b.transport.connected())
        await close_all((a, b, c))
    run(main())


def test_a_node_without_the_cluster_secret_is_refused_both_ways():
    async def main():
        peers, (a, b, c) = await cluster()
        host, port = peers[3]
        # Dialling with another secret: the acceptor's proof does not check out, and ours is refused.
        with pytest.raises(FrameError, match="secret"):
            await _dialled(host, port, GROUP, 2, secret=b"another cluster")
        await wait_for(lambda: c.transport.stats["bad_hello"] == 1)
        # A replica of another cluster on a peer's address never links, whichever side dials.
        await b.transport.close()
        stray = Node(2, peers, secret=b"another cluster")
        await stray.transport.start()
        a.transport.send(accept(1, 2, 1))
        stray.transport.send(accept(2, 3, 1))
        await asyncio.sleep(0.5)
        assert 2 not in a.transport.connected() and 2 not in c.transport.connected()
        assert stray.inbox == [] and c.inbox == [] and stray.transport.stats["bad_hello"] >= 1
        await close_all((a, c, stray))
    run(main())


def test_unknown_fault_setting_is_refused():
    with pytest.raises(ValueError, match="unknown fault settings"):
        Faults().configure({"loss": 0.5})
