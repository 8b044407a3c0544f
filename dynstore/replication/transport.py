"""Frames between the replicas of one group over asyncio TCP, with test hooks for faults.

Links. There is one TCP connection per pair of replicas: the replica with the lower id
dials the higher one (redialling with a doubling backoff after any failure), the other
accepts; both send and receive on it. A link opens with handshake.py's exchange (a hello
naming group and replica, then proof on both sides of the cluster's secret), and the acceptor
closes a connection whose opening is damaged or unproven, of another group or from a
replica outside the configured peers. A newer connection from a peer replaces an older one.
A process holding replicas of many groups listens on one port for all of them
(``Listener``): it reads the hello and hands the link to that group's Transport, so there
is still one connection per pair of replicas of a group, all on the process's one port.

Frames. After the hello each side writes messages as messages.encode frames (u32 length,
u32 crc32c, body with the protocol version). A frame whose checksum, version or body is
bad is dropped and counted (``stats["corrupt"]``) and never delivered; the protocol
recovers from it as from a lost message. A length above FRAME_BYTES_MAX means the stream
is out of step: the connection is closed and redialled. A frame addressed to another
replica or group, or claiming another sender than the link's peer, is dropped and counted.

Sending never waits: a frame for a peer that is not connected, or whose link already holds
PEER_SEND_BUFFER_BYTES_MAX unsent bytes, is dropped and counted, and Paxos resends.

Faults (``Faults``): since the test machines have no netem, a replica can be told at run
time to drop, duplicate, delay (with jitter, so reorder), corrupt (one bit flipped in the
body, so the receiver's checksum catches it) and cut (both directions, for chosen peers)
the frames it sends and receives. Random choices come from the Faults' own seeded rng.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

from dynstore import net
from dynstore.limits import (CONNECT_TIMEOUT_S, PEER_SEND_BUFFER_BYTES_MAX, RECONNECT_BACKOFF_MAX_S,
                             RECONNECT_BACKOFF_MIN_S)
from dynstore.replication import handshake
from dynstore.replication.errors import FrameError
from dynstore.replication.messages import Message, decode, encode, frame_length
from dynstore.replication.tasks import Tasks

log = logging.getLogger(__name__)

_FRAME_HEADER_BYTES = 8  # u32 length | u32 crc32c, as messages.encode writes them
_READ_CHUNK_BYTES = 256 * 1024


class Listener:
    """One listening port for the transports of every group of a process: each accepted link
    goes to the Transport registered for the group its hello names. A link for a group not
    (yet) registered here is closed; its dialler retries with backoff, so a group created on
    one node links up once the other nodes have opened their replicas of it."""

    def __init__(self, address: net.Address, secret: bytes = b""):
        self.address = address  # (host, port) or a Unix socket's name (net.py)
        self.secret = secret  # the cluster's (handshake.py)
        self.transports: dict[int, Transport] = {}  # group -> the transport of this process's replica
        self.refused = 0  # links for groups not open here
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await net.serve(self._accepted, self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            group, peer = await handshake.accept(reader, writer, self.secret)
        except (OSError, FrameError) as exc:
            log.warning("refused a replication connection: %s", exc)
            writer.close()
            return
        transport = self.transports.get(group)
        if transport is None:
            self.refused += 1
            writer.close()
            return
        transport.adopt(group, peer, reader, writer)


class Faults:
    """What to do to frames on their way out and in; every field may change at any time."""

    FIELDS = ("drop", "duplicate", "corrupt", "delay_s", "jitter_s", "cut")

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.clear()

    def clear(self) -> None:
        self.drop = 0.0  # probability that a sent frame is lost
        self.duplicate = 0.0  # probability that a sent frame goes out twice
        self.corrupt = 0.0  # probability that a sent frame has one body bit flipped
        self.delay_s = 0.0  # every sent frame waits this long ...
        self.jitter_s = 0.0  # ... plus up to this much more, drawn per frame (reordering them)
        self.cut: set[int] = set()  # peers whose frames are dropped in both directions

    def configure(self, settings: dict) -> None:
        unknown = set(settings) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {self.FIELDS}")
        for name, value in settings.items():
            setattr(self, name, {int(p) for p in value} if name == "cut" else float(value))

    def to_dict(self) -> dict:
        return {name: sorted(self.cut) if name == "cut" else getattr(self, name) for name in self.FIELDS}

    def outgoing(self, frame: bytes) -> list[tuple[float, bytes]]:
        """(delay, frame) for each copy of frame that goes out, possibly none."""
        rng = self.rng
        if self.drop and rng.random() < self.drop:
            return []
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        out = []
        for _ in range(copies):
            f = frame
            if self.corrupt and rng.random() < self.corrupt:
                damaged = bytearray(frame)
                bit = rng.randrange(_FRAME_HEADER_BYTES * 8, len(frame) * 8)
                damaged[bit // 8] ^= 1 << (bit % 8)
                f = bytes(damaged)
            delay = self.delay_s + (rng.random() * self.jitter_s if self.jitter_s else 0.0)
            out.append((delay, f))
        return out


class Transport:
    """The links of replica ``replica_id`` of ``group`` to its peers.

    ``peers`` maps every replica id of the group (this one included) to its address (net.py);
    ``on_message(m)`` receives each decoded message addressed here, on the event loop.
    A programmer error raised by ``on_message`` stops the transport and is passed to
    ``on_fatal`` (see tasks.py).
    """

    def __init__(self, replica_id: int, group: int, peers: dict[int, net.Address], on_message, *,
                 faults: Faults | None = None, on_fatal=None, secret: bytes = b""):
        self.id = replica_id
        self.secret = secret  # the cluster's (handshake.py)
        self.group = group
        self.peers = dict(peers)
        self.on_message = on_message
        self.faults = faults if faults is not None else Faults()
        self.stats: Counter = Counter()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._dialers: dict[int, asyncio.Task] = {}  # peer -> the task that keeps the link open
        self._tasks = Tasks(f"replica {replica_id} transport", on_fatal)
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._server = await net.serve(self._accepted, self.peers[self.id])
        self.dial()

    def dial(self) -> None:
        """Begin linking to the peers without a listening socket of this transport's own:
        the process's ``Listener`` hands it the links its peers dial (see ``adopt``)."""
        self._loop = asyncio.get_running_loop()
        for peer in self.peers:
            if peer > self.id:
                self._dialers[peer] = self._tasks.spawn(self._dial_forever(peer))

    def add_peer(self, peer: int, address: net.Address) -> None:
        """Link to a replica that joined the group (the one of lower id dials, as in ``dial``)."""
        if peer in self.peers:
            return
        self.peers[peer] = address
        if self._loop is not None and peer > self.id:
            self._dialers[peer] = self._tasks.spawn(self._dial_forever(peer))

    def remove_peer(self, peer: int) -> None:
        """Drop the link to a replica that left the group, and stop dialling it."""
        if peer == self.id or self.peers.pop(peer, None) is None:
            return
        dialer = self._dialers.pop(peer, None)
        if dialer is not None:
            dialer.cancel()
        writer = self._writers.pop(peer, None)
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.cancel_all()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()

    def connected(self) -> list[int]:
        return sorted(self._writers)

    # --- sending --------------------------------------------------------------------------

    def send(self, m) -> None:
        peer = m.dst
        if peer in self.faults.cut:
            self.stats["cut"] += 1
            return
        copies = self.faults.outgoing(encode(m))
        if not copies:
            self.stats["fault_dropped"] += 1
        for delay, frame in copies:
            if delay > 0:
                self._loop.call_later(delay, self._write, peer, frame)
            else:
                self._write(peer, frame)

    def _write(self, peer: int, frame: bytes) -> None:
        writer = self._writers.get(peer)
        if writer is None or writer.is_closing():
            self.stats["unconnected"] += 1
            return
        if writer.transport.get_write_buffer_size() + len(frame) > PEER_SEND_BUFFER_BYTES_MAX:
            self.stats["backpressure_dropped"] += 1
            return
        writer.write(frame)
        self.stats["sent"] += 1

    # --- links ----------------------------------------------------------------------------

    async def _dial_forever(self, peer: int) -> None:
        address = self.peers[peer]
        backoff = RECONNECT_BACKOFF_MIN_S
        while True:
            try:
                reader, writer = await asyncio.wait_for(net.connect(address), CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            try:
                await handshake.dial(reader, writer, self.secret, self.group, self.id)
            except (OSError, FrameError) as exc:
                self.stats["bad_hello"] += 1
                log.warning("replica %d could not open a link to %d: %s", self.id, peer, exc)
                writer.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            backoff = RECONNECT_BACKOFF_MIN_S
            await self._serve_link(peer, reader, writer)
            await asyncio.sleep(backoff)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            group, peer = await handshake.accept(reader, writer, self.secret)
        except (OSError, FrameError) as exc:
            self._refuse(writer, exc)
            return
        self.adopt(group, peer, reader, writer)

    def adopt(self, group: int, peer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a link a peer dialled, whose hello said (group, peer)."""
        if group != self.group or peer not in self.peers or peer == self.id:
            self._refuse(writer, FrameError(f"hello from replica {peer} of group {group}, not a peer of this group"))
            return
        self._tasks.spawn(self._serve_link(peer, reader, writer))

    def _refuse(self, writer: asyncio.StreamWriter, exc: Exception) -> None:
        self.stats["bad_hello"] += 1
        log.warning("replica %d refused a connection: %s", self.id, exc)
        writer.close()

    async def _serve_link(self, peer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        old = self._writers.get(peer)
        if old is not None:
            old.close()
        self._writers[peer] = writer
        self.stats["connects"] += 1
        log.info("replica %d linked to %d", self.id, peer)
        try:
            await self._read_frames(peer, reader)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except FrameError as exc:
            self.stats["desynced"] += 1
            log.warning("replica %d dropped its link to %d: %s", self.id, peer, exc)
        finally:
            if self._writers.get(peer) is writer:
                del self._writers[peer]
            writer.close()

    async def _read_frames(self, peer: int, reader: asyncio.StreamReader) -> None:
        # Whatever the socket has is read at once and every whole frame in it delivered: one
        # wake-up of this task per burst of frames, not two per frame.
        buf = bytearray()
        while True:
            data = await reader.read(_READ_CHUNK_BYTES)
            if not data:
                raise asyncio.IncompleteReadError(bytes(buf), None)
            buf += data
            pos = 0
            while (end := frame_length(buf, pos)) is not None and len(buf) - pos >= end:
                self._deliver(peer, bytes(buf[pos:pos + end]))
                pos += end
            del buf[:pos]

    def _deliver(self, peer: int, frame: bytes) -> None:
        if peer in self.faults.cut:
            self.stats["cut"] += 1
            return
        try:
            m = decode(frame)
        except FrameError:
            self.stats["corrupt"] += 1
            return
        if not isinstance(m, Message) or m.group != self.group or m.dst != self.id or m.src != peer:
            self.stats["misaddressed"] += 1
            return
        self.stats["received"] += 1
        self.on_message(m)
