"""How an item is stored as a B-tree value.

Format: one tag byte, then the payload.

* ``J`` — the item's DynamoDB JSON, as orjson writes it. The common case: one C call
  each way.
* ``Z`` — the same JSON compressed with zstd. Used when the JSON is larger than
  ``_COMPRESS_FROM`` bytes, so that every item DynamoDB accepts (400 KB, counted in
  raw bytes) fits the B-tree's 512 KiB value limit even though JSON spells binary
  values in base64 (4/3 larger) and escapes control characters: base64 text
  compresses back to about its raw size, escapes compress to their entropy.

The JSON is exactly what DynamoDB would return, so a read decodes and hands the
attribute map to the response without another conversion.
"""
from __future__ import annotations

import orjson
import zstandard

from dynstore import limits

_JSON = b"J"
_ZSTD = b"Z"
# Below this the JSON certainly fits and compression would only cost time.
_COMPRESS_FROM = 64 * 1024
_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


def encode_item(item: dict) -> bytes:
    text = orjson.dumps(item)
    if len(text) < _COMPRESS_FROM:
        return _JSON + text
    stored = _ZSTD + _compressor.compress(text)
    assert len(stored) <= limits.STORED_VALUE_BYTES_MAX, len(stored)
    return stored


def decode_item(stored: bytes) -> dict:
    tag = stored[:1]
    if tag == _JSON:
        return orjson.loads(memoryview(stored)[1:])
    assert tag == _ZSTD, tag
    return orjson.loads(_decompressor.decompress(stored[1:]))
