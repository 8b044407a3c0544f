"""The paged B+tree holding one partition's applied state: ``BTree``.

``BTree(path, cache_bytes=..., backend=None)`` opens (or creates) one file and returns
the native tree (``dynstore.storage._btree``, from native/btree.pyx) or the pure-Python
reference (btree_ref.py), as chosen by ``backend`` or ``DYNSTORE_STORAGE``. Both write
the format below and honour one contract: get / put / delete / write_batch / scan /
bulk_load / checkpoint (at once, or in steps) / write_dirty (changed pages written ahead of
a checkpoint) / snapshot / stats / fileno / close (see the storage contracts).

On-disk format (format version 1, little-endian, one file of 16 KiB pages)
--------------------------------------------------------------------------
Every page starts with a 32-byte header::

    0  u32 crc32c of bytes 4..16383 of the page, checked on every read from disk
    4  u8  type: 1 meta, 2 leaf, 3 internal, 4 overflow, 5 free list
    5  u8  0
    6  u16 count: cells (leaf, internal) or page numbers (free list)
    8  u32 page number of the page itself (catches misdirected reads and writes)
    12 u32 link: internal -> leftmost child; overflow, free list -> next page; else 0
    16 u16 cell start: lowest byte of the cell area (16384 when empty)
    18 u16 0
    20 u32 used: payload bytes of an overflow page
    24 u64 generation of the checkpoint the page was written for

Pages 0 and 1 are the two meta slots; checkpoint generation g writes slot g % 2, so a
torn meta write leaves the other slot, the previous checkpoint, intact. After the header:
magic "dynbtree", u32 version, u32 page size, u64 checkpoint LSN, u32 root (0: empty
tree), u32 page count (file length in pages), u32 free-list head, u32 free pages,
u64 items, u32 height. Opening picks the valid slot with the highest generation.

Leaf and internal pages are slotted: u16 cell offsets follow the header in key order,
and the cells are packed downwards from the end of the page in slot order (cell 0 ends
at byte 16384), unused bytes zero, so one logical page has exactly one encoding. A leaf
cell is ``u16 key length, u16 flags, u32 value length, key, value`` — or with flag 1
(overflow) ``..., key, u32 first overflow page``. An internal cell is ``u16 key length,
u16 0, u32 child, key``: the child holds keys >= key, the header's link the keys below
the first. Separators are the shortest prefix of the right page's first key that sorts
after the left page's last key. A cell (slot included) is at most a third of the page
body, so any split leaves two pages that fit; a value that would make it larger goes to
a chain of overflow pages (16352 payload bytes each).

A free-list page lists u32 page numbers that the checkpoint's tree does not use. The file
never shrinks, but a checkpoint that freed at least 64 pages more than were taken since the
one before (many deletes: a partition's split takes half its items away) gives the disk
blocks of the excess back to the file system (``fallocate`` punching holes; ``stats()``
counts them as ``punched_pages``), keeping the lowest free pages, which the next
checkpoints reuse first. A free page is written before it is read again, so its hole,
reading as zeros, loses nothing. Steady updates free about what they take and make none.

Copy-on-write and faults survived
---------------------------------
A page the last checkpoint references is never written: changing it allocates a new page
(lowest free page first, else the file grows) and frees the old one only once the next
checkpoint is durable, and later still if an open snapshot reads it. ``checkpoint(lsn)``
writes dirty pages and the new free list, fdatasyncs, writes the other meta slot,
fdatasyncs. The same runs in steps: ``checkpoint_begin(lsn)`` writes the pages and the free
list, ``checkpoint_seal()`` the meta slot, ``checkpoint_end()`` makes it the last checkpoint,
with ``sync_data()`` (or an fdatasync of ``fileno()`` in another thread) before the seal and
before the end. Between the steps the tree takes changes: the pages written belong to the
checkpoint under way, so a change copies them, and pages freed wait for the checkpoint after
it. A crash at any moment (kill -9, power loss with honest fsync) reopens to the
last checkpoint whose meta write completed, exactly; pages written after it are free in
it. Between checkpoints dirty pages may outgrow the buffer pool: eviction writes them to
their (fresh, unreferenced) pages, so memory stays within ``cache_bytes``. A page whose
checksum, number or type is wrong raises CorruptionError naming the file and offset;
wrong data is never returned. ``close()`` does not checkpoint: changes since the last
checkpoint are dropped, as in a crash (the WAL replays them).
"""
from __future__ import annotations

import abc
import os

from dynstore import limits
from dynstore.storage import btree_ref
from dynstore.storage.backend import default_backend


class BTree(abc.ABC):
    """Open the B+tree at `path` with the chosen backend (a native or reference instance)."""

    def __new__(cls, path: str | os.PathLike, *, cache_bytes: int = limits.BTREE_CACHE_BYTES_DEFAULT, backend=None):
        name = backend or default_backend()
        if name == "native":
            from dynstore.storage import _btree

            return _btree.NativeBTree(path, cache_bytes=cache_bytes)
        if name == "reference":
            return btree_ref.ReferenceBTree(path, cache_bytes=cache_bytes)
        raise ValueError(f"unknown storage backend {name!r}")


BTree.register(btree_ref.ReferenceBTree)
try:
    from dynstore.storage import _btree
except ImportError:  # not built yet: only the reference backend is available
    _btree = None
else:
    BTree.register(_btree.NativeBTree)
    # Both backends write one format: pair their constants here so a drift fails at import.
    assert _btree.format_constants() == {
        "page_bytes": btree_ref.PAGE,
        "header_bytes": btree_ref.HEADER_BYTES,
        "cell_bytes_max": btree_ref.CELL_BYTES_MAX,
        "overflow_bytes": btree_ref.OVERFLOW_BYTES,
        "freelist_entries": btree_ref.FREELIST_ENTRIES,
        "format_version": btree_ref.FORMAT_VERSION,
        "key_bytes_max": limits.BTREE_KEY_BYTES_MAX,
        "value_bytes_max": limits.BTREE_VALUE_BYTES_MAX,
        "height_max": limits.BTREE_HEIGHT_MAX,
        "chain_pages_max": -(-limits.BTREE_VALUE_BYTES_MAX // btree_ref.OVERFLOW_BYTES),
        "cells_max": btree_ref.USABLE // (btree_ref.SLOT_BYTES + btree_ref.LEAF_CELL_HEADER) + 1,
    }
