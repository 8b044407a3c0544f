"""The opening of every node-to-node connection: who is calling, and proof that both ends
hold the cluster's secret.

A replication link (transport.py) and a forwarded-request connection (node/routing.py)
both start with this exchange, of fixed-size messages::

    dialler  -> hello:     magic "DSRL" | u8 version | u64 group | u32 replica | 16-byte nonce
                           | u32 crc32c(of the preceding 33 bytes)
    acceptor -> challenge: 16-byte nonce | HMAC-SHA256(secret, "accept" | hello | nonce)
    dialler  -> answer:    HMAC-SHA256(secret, "dial" | hello | acceptor's nonce)

so each end proves it holds the secret over a nonce of the other's choosing, and a node of
another cluster (another secret), or a stray process still dialling ports a restarted cluster
now uses, is refused before any message is read. The secret is the cluster's
(``cluster.secret``, node/config.py); with none configured (b"") the exchange still names the
caller and checks the hello's checksum, and authenticates nothing.

``group`` names the replication group a link is for; a forward connection names FORWARD.
The messages after the exchange carry their own checksums (messages.py, group_process.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct

import crc32c

from dynstore import net
from dynstore.limits import CONNECT_TIMEOUT_S
from dynstore.replication.errors import FrameError
from dynstore.replication.messages import PROTOCOL_VERSION

FORWARD = (1 << 64) - 1  # the "group" of a forwarded-request connection
_MAGIC = b"DSRL"
_NONCE_BYTES = 16
_MAC_BYTES = 32
_HELLO_BODY = struct.Struct(f"<4sBQI{_NONCE_BYTES}s")
_HELLO = struct.Struct(f"<4sBQI{_NONCE_BYTES}sI")


def _mac(secret: bytes, role: bytes, hello: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, role + hello + nonce, hashlib.sha256).digest()


def _hello(group: int, replica: int) -> bytes:
    body = _HELLO_BODY.pack(_MAGIC, PROTOCOL_VERSION, group, replica, os.urandom(_NONCE_BYTES))
    return body + struct.pack("<I", crc32c.crc32c(body))


def _parse_hello(data: bytes) -> tuple[int, int]:
    magic, version, group, replica, _nonce, crc = _HELLO.unpack(data)
    if magic != _MAGIC or crc != crc32c.crc32c(data[:_HELLO_BODY.size]):
        raise FrameError("damaged hello")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"hello of protocol version {version}, this node speaks {PROTOCOL_VERSION}")
    return group, replica


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), CONNECT_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
        raise FrameError(f"the connection ended or stalled during its opening ({type(exc).__name__})") from None


async def dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, group: int,
               replica: int) -> None:
    """Open a connection as ``replica`` for ``group``; FrameError when the other end does not
    prove it holds ``secret``."""
    hello = _hello(group, replica)
    net.send(writer, hello)
    challenge = await _read(reader, _NONCE_BYTES + _MAC_BYTES)
    nonce, mac = challenge[:_NONCE_BYTES], challenge[_NONCE_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, b"accept", hello, nonce)):
        raise FrameError("the node dialled does not hold this cluster's secret")
    net.send(writer, _mac(secret, b"dial", hello, nonce))


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> tuple[int, int]:
    """(group, replica) of a connection dialled to us; FrameError when its hello is damaged or
    the dialler does not prove it holds ``secret``."""
    hello = await _read(reader, _HELLO.size)
    group, replica = _parse_hello(hello)
    nonce = os.urandom(_NONCE_BYTES)
    net.send(writer, nonce + _mac(secret, b"accept", hello, nonce))
    answer = await _read(reader, _MAC_BYTES)
    if not hmac.compare_digest(answer, _mac(secret, b"dial", hello, nonce)):
        raise FrameError(f"replica {replica} of group {group} does not hold this cluster's secret")
    return group, replica
