"""Links between nodes over named Unix sockets (dynstore/net.py) behave as over TCP."""
import asyncio
import os

import pytest
import uvloop

from dynstore import net
from dynstore.node.links import ROUTER, NodeLinks
from dynstore.replication import handshake
from dynstore.replication.errors import FrameError


def test_addresses_read_back_as_written():
    for address in (("10.0.0.1", 7001), ("::1", 7002), "\0dynstore-abc-node-1-peer"):
        assert net.parse(net.text(address)) == address
    assert net.text("\0dynstore-abc") == "@dynstore-abc" and net.offset("\0a", 2) == "\0a.2"


def test_a_link_its_peer_closed_ends_its_opening_with_an_error_not_a_crash():
    """Over a Unix socket the event loop raises on a write once the peer closed (over TCP it
    drops it): a dialler whose peer hung up must see a failed opening, which it retries, and
    not an exception that stops its transport."""
    name = f"\0dynstore-test-{os.getpid()}"

    async def hang_up(reader, writer):
        writer.close()

    async def main():
        server = await net.serve(hang_up, name)
        try:
            for _ in range(2):
                reader, writer = await net.connect(name)
                await asyncio.sleep(0.1)  # the hang-up arrives
                net.send(writer, b"dropped")  # the write that finds the hang-up
                await asyncio.sleep(0.05)
                with pytest.raises((FrameError, OSError)):  # what a dialler retries after
                    await handshake.dial(reader, writer, b"secret", 1, 1)
                writer.close()
            reader, writer = await net.connect(name)
            await asyncio.sleep(0.1)
            writer.write(b"x")
            await asyncio.sleep(0.05)
            with pytest.raises(RuntimeError):  # why net.send checks first
                writer.write(b"y")
        finally:
            server.close()
            await server.wait_closed()
    uvloop.run(main())


def test_calls_that_open_a_link_to_a_node_at_once_share_one_connection():
    """Requests forwarded to a node at the same instant each open a link; the first one opened
    serves them all, and the others are closed rather than left to the garbage collector."""
    name = f"\0dynstore-test-links-{os.getpid()}"
    accepted = []

    async def serve(reader, writer):
        await handshake.accept(reader, writer, b"secret")
        accepted.append(writer)
        try:
            await reader.read()  # until the dialler closes its end
        finally:
            writer.close()

    async def main():
        server = await net.serve(serve, name)
        links = NodeLinks({1: name}, b"secret", ROUTER)
        try:
            clients = await asyncio.gather(*(links.client(1) for _ in range(5)))
            assert len({id(c) for c in clients}) == 1 and not clients[0].closed
            await asyncio.sleep(0.1)
            assert len(accepted) == 5
            assert sum(not w.is_closing() for w in accepted) == 1  # the other four were closed
        finally:
            await links.close()
            server.close()
            await server.wait_closed()
    uvloop.run(main())
