"""Addresses of the links between the nodes of a cluster: replication and forwarding.

An address is ``(host, port)`` over TCP, or the name of a Unix socket (a str) for nodes of
one machine, as ``dynstore up`` runs them. On loopback TCP a small message costs each side a
pass through the TCP stack; a Unix socket copies it from one process to the other, which
here halves the round trip (about 85 to 40 µs). Names are in Linux's abstract namespace
(``@name`` in a configuration file): nothing on disk to clean up after a crash, and no path
length to outgrow. Who may link is decided by the cluster secret (replication/handshake.py)
either way, not by the socket.
"""
from __future__ import annotations

import asyncio
import socket

Address = tuple[str, int] | str

_ABSTRACT = "@"  # how an abstract socket name is written in text; "\0" opens it


def parse(text: str) -> Address:
    """``host:port``, ``[v6 host]:port``, or ``@name`` of an abstract Unix socket."""
    if text.startswith(_ABSTRACT):
        return "\0" + text[len(_ABSTRACT):]
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def text(address: Address) -> str:
    if isinstance(address, str):
        return _ABSTRACT + address.lstrip("\0")
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def offset(address: Address, k: int) -> Address:
    """The address of a node's k-th process: the port plus k, or the name with ``.k``."""
    if isinstance(address, str):
        return address if k == 0 else f"{address}.{k}"
    return address[0], address[1] + k


def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write to a link, or drop the data once the link is closing. Over TCP the event loop
    drops it itself; over a Unix socket it raises on a write after the peer closed. The
    link's reader sees the end either way."""
    if not writer.is_closing():
        writer.write(data)


async def connect(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if not isinstance(address, str):
        return await asyncio.open_connection(*address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    # The event loop opens abstract names only through a connected socket of ours.
    return await asyncio.open_unix_connection(sock=sock)


async def serve(callback, address: Address) -> asyncio.AbstractServer:
    if not isinstance(address, str):
        return await asyncio.start_server(callback, *address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return await asyncio.start_unix_server(callback, sock=sock)
