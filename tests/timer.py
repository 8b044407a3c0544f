"""Wake-ups at exact instants for asyncio code: a Linux timerfd watched by the event loop.

uvloop rounds every timer to whole milliseconds (``asyncio.sleep(0.0003)`` returns at once,
``sleep(0.0013)`` after 1 or 2 ms) and the stock loop rounds epoll timeouts up to the next
millisecond. The test servers of test_loadgen.py answer after a planned delay; one that
answers late adds that lateness to every latency the generator is checked against. A timerfd armed at an absolute
``CLOCK_MONOTONIC`` instant (the clock behind ``time.monotonic()``) fires within the
kernel's wake-up latency, tens of microseconds, and the loop sees it as a readable file.

One ``Timer`` per event loop keeps a heap of deadlines and arms the timerfd at the earliest.
"""
from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
import time

_CLOCK_MONOTONIC = 1  # <linux/time.h>
_TFD_TIMER_ABSTIME = 1  # <sys/timerfd.h>: it_value is an absolute time, not a delay


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


class Timer:
    """``await timer.sleep_until(t)`` returns at ``time.monotonic()`` instant ``t`` (or at once
    when ``t`` has passed). Bound to the running loop; ``close()`` releases the descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        self._heap: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()  # ties between equal deadlines wake in arrival order
        self._armed = 0.0  # the deadline the timerfd is set to, 0.0 when disarmed
        self._spec = _Itimerspec()
        loop.add_reader(self._fd, self._fire)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= time.monotonic():
            return
        future = self._loop.create_future()
        heapq.heappush(self._heap, (deadline, next(self._order), future))
        if self._armed == 0.0 or deadline < self._armed:
            self._arm(deadline)
        await future

    def _arm(self, deadline: float) -> None:
        seconds = int(deadline)
        value = self._spec.it_value
        value.tv_sec = seconds
        value.tv_nsec = int((deadline - seconds) * 1e9)  # deadlines are in the future, never the zero that disarms
        _check(_libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None))
        self._armed = deadline

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; reading clears readability
        except BlockingIOError:
            return  # re-armed before the loop got here: nothing expired yet
        self._armed = 0.0
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            future = heapq.heappop(heap)[2]
            if not future.done():  # a cancelled sleeper leaves its entry behind
                future.set_result(None)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        for _, _, future in self._heap:
            future.cancel()
        self._heap.clear()
