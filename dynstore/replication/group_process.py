"""One replica of one replication group as a process, with a small client protocol.

    python -m dynstore.replication.group_process --id 1 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \\
        --data-dir ./r1 --client-port 8001

Every replica of the group runs with the same --peers (all storage replicas, the
group's first membership). The process prints ``ready`` on stdout once its client port
listens; SIGTERM or SIGINT close it cleanly, and a kill -9 is what the log is for.

Client protocol (for tests and benchmarks, on --client-port): requests and responses are
frames ``u32 length | JSON object``; a connection may have many requests in flight,
answered in any order and matched by ``id``. Keys and values are UTF-8 strings.

    {"id", "op": "put", "key", "value"}         -> {"id", "ok": true, "slot"} once committed
                                                   on a quorum, durable and applied here
    {"id", "op": "get", "key", "consistent"}    -> {"id", "ok": true, "value": str | null}
    {"id", "op": "scan", "after": key|null}     -> {"id", "ok": true, "items": [[key, value], ...], "more": bool}
                                                   (a page of applied items after ``after``, in key order)
    {"id", "op": "status"}                      -> {"id", "ok": true, "status", "transport", "faults"}
    {"id", "op": "faults", "set": {...}}        -> configure transport.Faults (also "clear": true)

A refused request answers ``{"id", "ok": false, "error": "NotLeader" | "Busy", "leader",
"message"}``: NotLeader for a put or a strong read anywhere but at the leader under a
valid lease (``leader`` is the replica id to retry at, or null), Busy when the leader holds
its maximum of uncommitted proposals. Both are safe to retry; a put is retried as is.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time

import orjson
import uvloop

from dynstore import net
from dynstore.limits import (CHECKPOINT_ENTRIES, CLIENT_FRAME_BYTES_MAX, ELECTION_TIMEOUT_S, LOG_KEEP_ENTRIES,
                             WAL_SEGMENT_BYTES_DEFAULT)
from dynstore.replication.errors import Busy, NotLeader
from dynstore.replication.messages import STORAGE
from dynstore.replication.paxos import Timing
from dynstore.replication.replica import Replica
from dynstore.replication.transport import Faults, Transport
from dynstore.storage.engine import encode_batch

log = logging.getLogger("dynstore.replication.group_process")

_LEN = struct.Struct("<I")


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    peers = {}
    for part in text.split(","):
        rid, _, address = part.partition("=")
        host, _, port = address.rpartition(":")
        peers[int(rid)] = (host, int(port))
    return peers


async def read_frame(reader: asyncio.StreamReader, bytes_max: int = CLIENT_FRAME_BYTES_MAX) -> dict:
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if n > bytes_max:
        raise ValueError(f"frame of {n} bytes exceeds the protocol's maximum of {bytes_max}")
    return orjson.loads(await reader.readexactly(n))


def write_frame(writer: asyncio.StreamWriter, obj: dict) -> None:
    body = orjson.dumps(obj)
    net.send(writer, _LEN.pack(len(body)) + body)


async def serve_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer, *,
                       cancel_on_close: bool, bytes_max: int = CLIENT_FRAME_BYTES_MAX) -> None:
    """Serve one connection: each request frame runs ``answer(request, writer)`` as its own task,
    so many are in flight. When the connection ends, the tasks still running are cancelled, or
    with ``cancel_on_close`` False left to finish (their answers are dropped)."""
    tasks: set[asyncio.Task] = set()
    try:
        while True:
            request = await read_frame(reader, bytes_max)
            task = asyncio.ensure_future(answer(request, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        if cancel_on_close:
            for task in tasks:
                task.cancel()
        writer.close()


class GroupProcess:
    def __init__(self, args):
        self.args = args
        self.peers = parse_peers(args.peers)
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        timeout = args.election_timeout
        members = tuple((rid, STORAGE) for rid in sorted(self.peers))
        self.transport = Transport(args.id, args.group, self.peers, self._on_message, faults=Faults(args.seed),
                                   on_fatal=self._fatal)
        self.replica = Replica(args.data_dir, args.id, members, self.transport.send, group=args.group,
                               timing=Timing(election_timeout=timeout, heartbeat_interval=timeout / 10),
                               seed=args.seed, backend=args.storage, sync=args.sync,
                               segment_bytes=args.segment_bytes, checkpoint_entries=args.checkpoint_entries,
                               log_keep_entries=args.log_keep_entries, on_fatal=self._fatal)
        self._server: asyncio.AbstractServer | None = None

    def _on_message(self, m) -> None:
        self.replica.step(m)

    def _fatal(self, exc: BaseException) -> None:
        self.failure = exc
        self.stopped.set()

    async def run(self) -> int:
        await self.transport.start()
        self.replica.start()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.args.client_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        print("ready", flush=True)
        await self.stopped.wait()
        self._server.close()
        await self.transport.close()
        await self.replica.close()
        return 70 if self.failure is not None else 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_frames(reader, writer, self._answer, cancel_on_close=True)

    async def _answer(self, request: dict, writer: asyncio.StreamWriter) -> None:
        try:
            response = await self._execute(request)
        except (NotLeader, Busy) as exc:
            response = {"ok": False, "error": type(exc).__name__, "message": str(exc),
                        "leader": getattr(exc, "leader", None)}
        response["id"] = request.get("id")
        if not writer.is_closing():
            write_frame(writer, response)

    async def _execute(self, request: dict) -> dict:
        op = request["op"]
        replica = self.replica
        if op == "put":
            slot = await replica.put(encode_batch([(request["key"].encode(), request["value"].encode())]))
            return {"ok": True, "slot": slot}
        if op == "get":
            if request.get("consistent"):
                await replica.read_barrier()
            value = replica.tree.get(request["key"].encode())
            return {"ok": True, "value": None if value is None else value.decode()}
        if op == "scan":
            # A page that fits a client frame; the caller asks again after its last key.
            after = request.get("after")
            start = None if after is None else after.encode() + b"\0"
            page, size = [], 0
            for k, v in replica.tree.scan(start):
                size += len(k) + len(v)
                if page and size > CLIENT_FRAME_BYTES_MAX // 4:  # room for JSON's escaping
                    return {"ok": True, "items": page, "more": True}
                page.append([k.decode(), v.decode()])
            return {"ok": True, "items": page, "more": False}
        if op == "status":
            return {"ok": True, "status": replica.status(), "transport": dict(self.transport.stats),
                    "connected": self.transport.connected(), "faults": self.transport.faults.to_dict()}
        if op == "faults":
            if request.get("clear"):
                self.transport.faults.clear()
            self.transport.faults.configure(request.get("set", {}))
            return {"ok": True, "faults": self.transport.faults.to_dict()}
        return {"ok": False, "error": "ValidationException", "message": f"unknown op {op!r}"}


class GroupClient:
    """A pipelined client of one group process's client port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 bytes_max: int = CLIENT_FRAME_BYTES_MAX):
        self._reader, self._writer = reader, writer
        self._bytes_max = bytes_max
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", bytes_max: int = CLIENT_FRAME_BYTES_MAX) -> GroupClient:
        return cls(*await asyncio.open_connection(host, port), bytes_max)

    @property
    def closed(self) -> bool:
        """The connection is gone: no call made now would be answered."""
        return self._task.done()

    async def call(self, op: str, **fields) -> dict:
        return await self.send(op, **fields)

    def send(self, op: str, **fields) -> asyncio.Future:
        """Send a request now; the future its answer sets (ConnectionError when none will come)."""
        if self.closed:
            raise ConnectionError("group process connection closed")
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        write_frame(self._writer, {"id": rid, "op": op, **fields})
        return future

    async def _read(self) -> None:
        try:
            while True:
                response = await read_frame(self._reader, self._bytes_max)
                future = self._waiting.pop(response["id"], None)
                if future is not None and not future.done():
                    future.set_result(response)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            # Lost or closed: no answer will come for what is in flight.
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("group process connection closed"))
            self._waiting.clear()

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def free_ports(n: int) -> list[int]:
    """n loopback ports free at the time of the call."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# A replica stops within a second of SIGTERM; this much longer means it hangs.
STOP_WAIT_S = 30.0


class LocalGroup:
    """Three group processes on loopback under ``directory`` (replica ids 1, 2, 3), for tests
    and benchmarks; ``extra_args`` go to every process."""

    IDS = (1, 2, 3)

    def __init__(self, directory, *, election_timeout: float = ELECTION_TIMEOUT_S, extra_args=()):
        ports = free_ports(2 * len(self.IDS))
        self.directory = pathlib.Path(directory)
        self.election_timeout = election_timeout
        self.peer_spec = ",".join(f"{rid}=127.0.0.1:{ports[i]}" for i, rid in enumerate(self.IDS))
        self.client_ports = {rid: ports[len(self.IDS) + i] for i, rid in enumerate(self.IDS)}
        self.extra_args = tuple(extra_args)
        self.procs: dict[int, subprocess.Popen] = {}
        self.clients: dict[int, GroupClient] = {}

    async def start(self, rid: int) -> None:
        with open(self.directory / f"replica{rid}.log", "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dynstore.replication.group_process", "--id", str(rid), "--peers",
                 self.peer_spec, "--data-dir", str(self.directory / f"r{rid}"), "--client-port",
                 str(self.client_ports[rid]), "--election-timeout", str(self.election_timeout), "--seed", str(rid),
                 *self.extra_args],
                stdout=subprocess.PIPE, stderr=log_file)
        self.procs[rid] = proc
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        if line != b"ready\n":
            raise RuntimeError(f"replica {rid} did not start\n{self.logs()}")
        self.clients[rid] = await GroupClient.connect(self.client_ports[rid])

    async def start_all(self) -> None:
        for rid in self.IDS:
            await self.start(rid)

    async def kill(self, rid: int, sig: int = signal.SIGKILL) -> int:
        """Send sig to a replica and wait for it to exit; returns its exit code."""
        await self.clients.pop(rid).close()
        proc = self.procs.pop(rid)
        proc.send_signal(sig)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, proc.wait, STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"replica {rid} did not stop within {STOP_WAIT_S} s of signal {sig}") from None

    async def close(self) -> None:
        for rid in list(self.procs):
            await self.kill(rid, signal.SIGTERM)

    def logs(self, tail_chars: int = 3000) -> str:
        out = []
        for rid in self.IDS:
            path = self.directory / f"replica{rid}.log"
            if path.exists():
                out.append(f"--- replica {rid} ---\n" + path.read_text()[-tail_chars:])
        return "\n".join(out)

    async def call(self, rid: int, op: str, **fields) -> dict:
        return await asyncio.wait_for(self.clients[rid].call(op, **fields), 10)

    async def status(self, rid: int) -> dict:
        return (await self.call(rid, "status"))["status"]

    async def leaders(self) -> list[int]:
        """Replicas that hold a valid lease right now."""
        return [rid for rid in self.clients if (await self.status(rid))["lease_valid"]]

    async def wait_leader(self, within: float, exclude=()) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [rid for rid in await self.leaders() if rid not in exclude]
            if found:
                return found[0]
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no leader within {within} s\n{self.logs()}")

    async def put(self, key: str, value: str, *, deadline: float, prefer: int | None = None) -> bool:
        """Write through whichever replica leads, following NotLeader hints; False if the write
        was not acknowledged by the deadline (it may still have committed)."""
        target = prefer if prefer in self.clients else min(self.clients)
        while time.monotonic() < deadline:
            try:
                r = await asyncio.wait_for(self.clients[target].call("put", key=key, value=value),
                                           max(0.01, deadline - time.monotonic()))
            except (ConnectionError, asyncio.TimeoutError, KeyError):
                r = {"ok": False, "leader": None}
            if r["ok"]:
                return True
            hint = r.get("leader")
            if hint in self.clients and hint != target:
                target = hint
            else:
                ids = sorted(self.clients)
                target = ids[(ids.index(target) + 1) % len(ids)] if target in ids else ids[0]
            await asyncio.sleep(0.01)
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynstore.replication.group_process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--id", type=int, required=True, help="this replica's id (a key of --peers)")
    parser.add_argument("--peers", required=True, help="id=host:port,... of every replica, this one included")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--client-port", type=int, required=True)
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--election-timeout", type=float, default=ELECTION_TIMEOUT_S,
                        help="seconds; the heartbeat is a tenth of it")
    parser.add_argument("--seed", type=int, default=0, help="seeds election jitter and the fault hooks")
    parser.add_argument("--storage", choices=("native", "reference"), default=None)
    parser.add_argument("--sync", default="auto", choices=("auto", "uring", "fdatasync"))
    parser.add_argument("--segment-bytes", type=int, default=WAL_SEGMENT_BYTES_DEFAULT)
    parser.add_argument("--checkpoint-entries", type=int, default=CHECKPOINT_ENTRIES,
                        help="applied entries between checkpoints of the tree")
    parser.add_argument("--log-keep-entries", type=int, default=LOG_KEEP_ENTRIES,
                        help="committed entries kept in the log below a checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s r{args.id} %(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        return await GroupProcess(args).run()

    return uvloop.run(run())


if __name__ == "__main__":
    sys.exit(main())
