"""One partition of a table: a contiguous range of storage keys served by one Engine.

Reads come in two kinds. ``get`` and ``scan`` see durable state only: what GetItem,
Query and Scan return. ``get_latest`` also sees writes accepted but not yet durable:
a conditional write or a read-modify-write (UpdateItem, maintaining indexes) reads
with it, decides, and calls ``write`` without an ``await`` in between, so on one
event loop the decision and the write are atomic and the log order is the order of
decisions (the Engine's contract). Writes to different keys share a group commit.

A partition owns the item storage keys in ``[start, end)`` (``end`` None: no upper
bound). Its tree holds its items, the index entries of those items, its statistics
record and its canary key. The ranges of a table's partitions tile the item space.

Splitting (router/local.py) holds a partition's writes for the moment of the switch:
``switch`` is None while the partition takes item writes; otherwise it is an event
set once the router's map changed. An item write (operations/store.py) looks at
``switch`` before its read-modify-write and, when it is set, waits for it and looks
the partition up again, since its key may have moved. After a split the old object is
retired: ``switch`` stays set and other writers (the canary's probes) are passed on to
its ``successor``, the left part, which serves the same Engine.

A partition also drains on close: DeleteTable removes the table from the catalog first
(so no new request finds the partition), then waits for the writes already in flight
before closing the Engine, so no acknowledged write is cut off half way.
"""
from __future__ import annotations

import asyncio
from typing import Iterator


class Partition:
    """A key range of one table and the Engine that stores it."""

    def __init__(self, engine, start: bytes = b"", end: bytes | None = None):
        self.engine = engine
        self.start = start  # first item storage key served here
        self.end = end  # first item storage key past this partition, None for the last one
        self.switch: asyncio.Event | None = None  # set while writes are held for a split (see above)
        self.successor: Partition | None = None  # the left part, once split
        # Requests routed here since open, for the partition's request rates (dynstore.metrics):
        # plain counts, read only when scraped.
        self.reads = 0  # key lookups and range scans
        self.writes = 0  # write batches
        self._writes_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.engine.get(key)

    def get_latest(self, key: bytes) -> bytes | None:
        return self.engine.get_latest(key)

    def scan(self, start: bytes | None = None, end: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.reads += 1
        return self.engine.scan(start, end, reverse=reverse, limit=limit)

    async def settle(self, key: bytes) -> None:
        """Return once every accepted write of ``key`` is durable.

        An answer that writes nothing but was decided on ``get_latest`` (a failed
        condition, a remove of nothing) waits here, so it never reports state that a
        crash could still undo.
        """
        lsn = self.engine.pending_lsn(key)
        if lsn:
            await self.engine.wait(lsn)

    async def write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        """Durably write a batch; returns once it is in the WAL and applied.

        The batch is appended to the log before the first suspension, so the caller's
        preceding ``get_latest`` reads and this write form one atomic step.
        """
        if self.switch is not None:
            await self.switch.wait()
            if self.successor is not None:
                return await self.successor.write(ops)
        self.writes += 1
        self._writes_in_flight += 1
        self._idle.clear()
        try:
            return await self.engine.write(ops)
        finally:
            self._writes_in_flight -= 1
            if self._writes_in_flight == 0:
                self._idle.set()

    async def hold(self) -> None:
        """Stop item writes from starting and return once none is in flight."""
        self.switch = asyncio.Event()
        await self._idle.wait()

    def release(self, successor: Partition | None = None) -> None:
        """Let held writers go: to look the partition up again, or on to ``successor`` once split."""
        self.successor = successor
        self.switch.set()
        if successor is None:
            self.switch = None

    async def close(self) -> None:
        await self._idle.wait()
        self.engine.close()
