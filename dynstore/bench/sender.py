"""The generator's sender: native/sender.c (sender.h says how it works) behind a Python face.

A generator process builds and signs each request in Python, ahead of its instant, and
hands it to the sender; the sender's event loop, in C on a thread of its own, writes it at
its instant and timestamps the last byte of its answer as the read returns. Neither instant
waits for the Python side: building the next request, recording the last answer or the
interpreter's own pauses do not show up as the endpoint's latency.
"""
from __future__ import annotations

from typing import NamedTuple

from dynstore.bench._sender import ffi, lib
from dynstore.client.core import Endpoint

TAKE_MAX = 1024  # finished requests moved out of the sender per call
ERROR_TEXT_MAX = 256

# What a failed request is counted as, by the sender's code.
FAILURES = {
    lib.DS_SEND_ECONN: "ConnectionError",
    lib.DS_SEND_EREFUSED: "ConnectionRefusedError",
    lib.DS_SEND_EPROTO: "ProtocolError",
}
UNFINISHED = lib.DS_SEND_EUNFINISHED


class Finished(NamedTuple):
    tag: int
    scheduled: float  # time.monotonic() instants
    sent: float  # 0.0 if it never was
    done: float
    status: int  # the HTTP status, or a key of FAILURES, or UNFINISHED
    has_item: bool  # a 200 with an "Item" member
    body: bytes  # the start of a non-200 answer's body


class Sender:
    """Requests to the endpoint of ``url`` over at most ``connections_max`` connections."""

    def __init__(self, url: str, connections_max: int):
        endpoint = Endpoint.parse(url)
        if endpoint.scheme != "http":
            raise ValueError(f"the generator speaks plain HTTP only (TLS would measure the generator): {url}")
        self._err = ffi.new("char[]", ERROR_TEXT_MAX)
        host = endpoint.host.strip("[]").encode()
        self._s = lib.ds_send_new(host, str(endpoint.port).encode(), connections_max, self._err, ERROR_TEXT_MAX)
        if self._s == ffi.NULL:
            raise OSError(ffi.string(self._err).decode())
        self._out = ffi.new("ds_send_result[]", TAKE_MAX)

    def connect(self, count: int) -> None:
        """Open ``count`` connections now, so that the run does not measure handshakes."""
        if lib.ds_send_connect(self._s, count, self._err, ERROR_TEXT_MAX) < 0:
            raise OSError(ffi.string(self._err).decode())

    def submit(self, request: bytes, instant: float, tag: int) -> None:
        """Send ``request`` at ``instant`` (time.monotonic(); 0.0: on the first free connection)."""
        if lib.ds_send_submit(self._s, request, len(request), instant, tag) < 0:
            raise MemoryError("the sender's queue")

    def finish(self, *, discard: bool = False) -> None:
        """No more requests; ``discard`` drops those not sent yet."""
        lib.ds_send_finish(self._s, discard)

    def backlog(self) -> int:
        return lib.ds_send_backlog(self._s)

    def run(self, drain_s: float) -> None:
        """The event loop, on a thread of its own: returns once every request is answered or
        failed after ``finish``, or ``drain_s`` after the last instant (the rest unfinished)."""
        err = ffi.new("char[]", ERROR_TEXT_MAX)
        if lib.ds_send_run(self._s, drain_s, err, ERROR_TEXT_MAX) < 0:
            raise OSError(ffi.string(err).decode())

    def take(self) -> list[Finished]:
        """The requests finished since the last call."""
        taken = []
        while True:
            n = lib.ds_send_take(self._s, self._out, TAKE_MAX)
            for r in self._out[0:n]:
                taken.append(Finished(r.tag, r.scheduled, r.sent, r.done, r.status, bool(r.has_item),
                                      ffi.buffer(r.body, r.body_len)[:]))
            if n < TAKE_MAX:
                return taken

    def close(self) -> None:
        """Release it: only once ``run`` has returned."""
        lib.ds_send_free(self._s)
        self._s = ffi.NULL
