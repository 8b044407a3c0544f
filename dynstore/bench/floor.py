"""The floor: an HTTP server that answers every request at once, without looking at it.

What the generator measures against it is what any endpoint's latency on this machine
includes before the endpoint does any work: the generator's own time (signing, framing,
parsing the answer), the loopback hops, and the wake-ups of idle processes. It parses
each request with httptools as the DynamoDB endpoint does, and answers GetItem with a
stored item of the generator's item size and anything else with ``{}``, with the headers
and the x-amz-crc32 a DynamoDB answer carries.

Run: ``python -m dynstore.bench.floor --port N [--item-size B]``; ``dynstore bench
--compare floor`` starts one for the length of a run.
"""
from __future__ import annotations

import asyncio
import zlib

import click
import httptools
import orjson
import uvloop

from dynstore.bench.workloads import DATA_ATTRIBUTE, KEY_ATTRIBUTE, key_name, make_filler


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: %d\r\n" \
           b"Connection: keep-alive\r\nx-amzn-RequestId: FLOOR\r\nx-amz-crc32: %d\r\n\r\n%s" % (
               len(body), zlib.crc32(body), body)


class _Connection(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes]):
        self._answers = answers
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._target = b""

    def connection_made(self, transport):
        self._transport = transport

    def data_received(self, data: bytes):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_header(self, name: bytes, value: bytes):
        if name.lower() == b"x-amz-target":
            self._target = value.rpartition(b".")[2]

    def on_message_complete(self):
        self._transport.write(self._answers.get(self._target, self._answers[b""]))


async def _serve(port: int, item_size: int) -> None:
    item = {KEY_ATTRIBUTE: {"S": key_name(0)}, DATA_ATTRIBUTE: {"S": make_filler(item_size)}}
    answers = {b"GetItem": _answer(orjson.dumps({"Item": item})), b"": _answer(b"{}")}
    server = await asyncio.get_running_loop().create_server(lambda: _Connection(answers), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@click.command()
@click.option("--port", type=int, required=True)
@click.option("--item-size", type=int, default=1024, show_default=True)
def main(port: int, item_size: int) -> None:
    uvloop.run(_serve(port, item_size))


if __name__ == "__main__":
    main()
