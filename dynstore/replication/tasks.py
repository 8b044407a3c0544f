"""The background tasks of one replication component (a transport, a replica shell).

A task that ends with an exception met a programmer error or a failing disk: the
component cannot go on safely, so the failure is logged and handed to ``on_fatal``
(the process stops; restart recovers from the log) instead of vanishing with the task.
"""
from __future__ import annotations

import asyncio
import logging

from dynstore.limits import TASK_CANCEL_ROUNDS_MAX, TASK_CANCEL_WAIT_S

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self, name: str, on_fatal=None):
        self.name = name
        self.on_fatal = on_fatal
        self.failure: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception())

    def fail(self, exc: BaseException) -> None:
        """A failure met outside a task (in a callback): handled as a task's would be."""
        log.critical("%s stopped by %r", self.name, exc, exc_info=exc)
        self.failure = exc
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until they have ended.

        A task can swallow one cancellation (``asyncio.wait_for`` in Python 3.11 loses it
        when the inner future completes at the same moment), so stragglers are cancelled
        again each round instead of being waited for forever.
        """
        pending = set(self._tasks)
        for _ in range(TASK_CANCEL_ROUNDS_MAX):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=TASK_CANCEL_WAIT_S)
        raise RuntimeError(f"{self.name}: {len(pending)} tasks ignored {TASK_CANCEL_ROUNDS_MAX} cancellations: "
                           + ", ".join(repr(task.get_coro()) for task in pending))
