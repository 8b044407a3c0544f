"""What every operation is given: the router, the node's identity and its metrics.

``State`` is passed as the first argument of every function in ``OPERATIONS``. The
HTTP front end builds it once (``await State.open(data_dir, ...)``) and closes it on
shutdown; tests build it the same way on a temporary directory. ``State.open`` wires
the node's ``Metrics`` (dynstore.metrics) into the storage engines and exports every
partition's figures; the front end serves the same ``metrics`` at ``GET /metrics``.

``clock`` is the only source of time the operations read (CreationDateTime, TTL
expiry, throughput decrease dates), so tests can move time instead of sleeping.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from dynstore import limits
from dynstore.api.operations.store import partition_figures
from dynstore.api.operations.ttl import expire_forever
from dynstore.metrics import Metrics


@dataclass
class State:
    router: Any  # a Router (see dynstore.router): LocalRouter on one node
    region: str = "us-east-1"
    account_id: str = "000000000000"
    address: str = "127.0.0.1:8000"  # host:port clients reach this endpoint at, for DescribeEndpoints
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    # Per partition item count and size, loaded from the partition on first use (store.py).
    stats: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    # Per table (by TableId) resolved schema, rebuilt when the description changes (schema.py).
    schemas: dict = field(default_factory=dict)
    # Per table (by TableId) where the expiry task resumes its pass (ttl.py).
    ttl_cursors: dict = field(default_factory=dict)
    _background: list = field(default_factory=list)

    @classmethod
    async def open(cls, data_dir: str, *, backend: str | None = None, sync: str = "auto",
                   expire: bool = True, split_bytes: int | None = limits.PARTITION_SPLIT_BYTES_DEFAULT,
                   **identity) -> "State":
        """Open the node's storage; ``expire`` starts the TTL expiry task, ``split_bytes`` the split loop."""
        # Imported here: the router splits with operations/split.py, so it imports this package.
        from dynstore.autoadmin.splits import Splitter
        from dynstore.router import LocalRouter

        metrics = Metrics()
        router = await LocalRouter.open(data_dir, backend=backend, sync=sync, metrics=metrics.storage)
        state = cls(router, metrics=metrics, **identity)
        metrics.watch_partitions(lambda: partition_figures(state))
        if expire:
            state._background.append(asyncio.create_task(expire_forever(state)))
        if split_bytes is not None:
            state._background.append(asyncio.create_task(Splitter(state, split_bytes).run()))
        return state

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._background.clear()
        await self.router.close()
