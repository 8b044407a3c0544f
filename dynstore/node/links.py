"""Connections from one process to the forward port of every node of the cluster.

One pipelined connection per node (group_process.GroupClient frames), opened with the
handshake of dynstore/replication/handshake.py (group FORWARD, the caller's id: a node's id,
or ROUTER for a standalone router) and opened again after any failure. Used by the
request router of every node (node/routing.py) and by the standalone router
(router/front.py).

A call whose connection cannot be opened answers None: nothing was sent, so the caller may
try another node. A call that was sent and then lost its connection, timed out, or was
abandoned (``give_up``) raises InternalServerError: the request may or may not have taken
effect, which is what DynamoDB answers in that case too (and SDKs retry).
"""
from __future__ import annotations

import asyncio
import logging
import time

from dynstore import net
from dynstore.api.errors import InternalServerError
from dynstore.limits import CONNECT_TIMEOUT_S, FORWARD_FRAME_BYTES_MAX, FORWARD_POLL_S, FORWARD_TIMEOUT_S
from dynstore.replication import handshake
from dynstore.replication.errors import FrameError
from dynstore.replication.group_process import GroupClient

log = logging.getLogger(__name__)

ROUTER = 0  # the caller id of a standalone router (node ids start at 1)


class _GaveUp(Exception):
    """A call stopped waiting for its answer; the message says why."""


class NodeLinks:
    """``addresses`` maps node id -> its forward address (net.py); ``caller`` is this
    process's id in the handshake."""

    def __init__(self, addresses: dict[int, net.Address], secret: bytes, caller: int):
        self.addresses = dict(addresses)
        self.secret = secret
        self.caller = caller
        self._clients: dict[int, GroupClient] = {}

    async def client(self, node: int) -> GroupClient | None:
        """The connection to ``node``; None when it cannot be opened now."""
        client = self._clients.get(node)
        if client is not None and not client.closed:
            return client
        try:
            reader, writer = await asyncio.wait_for(net.connect(self.addresses[node]), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            await handshake.dial(reader, writer, self.secret, handshake.FORWARD, self.caller)
        except (OSError, FrameError) as exc:
            log.warning("could not open a forward connection to node %d: %s", node, exc)
            writer.close()
            return None
        client = self._clients.get(node)
        if client is not None and not client.closed:
            writer.close()  # another call opened one meanwhile: one connection per node
            return client
        client = self._clients[node] = GroupClient(reader, writer, FORWARD_FRAME_BYTES_MAX)
        return client

    async def call(self, node: int, op: str, request: dict, hops: int, give_up=None, **fields) -> dict | None:
        """The frame ``node`` answers (``{"ok", "result" | "status", "body"}``); None when it
        cannot be reached. ``give_up()``, asked every FORWARD_POLL_S while waiting, returns a
        reason to stop waiting (or None); ``fields`` go along in the request frame."""
        client = await self.client(node)
        if client is None:
            return None
        answer = client.send(op, request=request, hops=hops, **fields)  # open: ``client`` just checked
        # One timer watches the wait, rather than a task and a wait per call: most answers
        # come long before the first look.
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + FORWARD_TIMEOUT_S

        def look() -> None:
            nonlocal timer
            if answer.done():
                return
            reason = give_up() if give_up is not None else None
            if reason is None and time.monotonic() > deadline:
                reason = f"node {node} did not answer within {FORWARD_TIMEOUT_S} s"
            if reason is None:
                timer = loop.call_later(FORWARD_POLL_S, look)
            else:
                answer.set_exception(_GaveUp(reason))
        timer = loop.call_later(FORWARD_POLL_S, look)
        try:
            return await answer
        except _GaveUp as exc:
            await self._drop(node, client)
            raise InternalServerError(f"{exc}; it may or may not have taken effect") from None
        except ConnectionError:
            await self._drop(node, client)
            raise InternalServerError(f"lost node {node} while it served the request; it may or may not have "
                                      f"taken effect") from None
        finally:
            timer.cancel()

    async def _drop(self, node: int, client: GroupClient) -> None:
        if self._clients.get(node) is client:
            del self._clients[node]
            await client.close()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
