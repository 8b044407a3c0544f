"""Pure-Python reference of the paged B+tree (the native one is native/btree.pyx).

It writes the file format described in dynstore/storage/btree.py, byte for byte the
same page encoding, so a file written by either backend opens with the other. It
keeps decoded pages (lists of keys and values) in its buffer pool instead of raw
page images, which is what makes it readable; the algorithms — page choice on
split, shortest separators, empty-page removal, copy-on-write, lowest-free-page
allocation, checkpoint order — are the native ones, step for step.

Not thread-safe: one tree is used from one thread (its partition's event loop).
"""
from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import heapq
import os
import struct
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, NamedTuple

import crc32c

from dynstore import limits
from dynstore.storage.errors import ClosedError, CorruptionError, DiskFullError, StorageError

PAGE = limits.BTREE_PAGE_BYTES
HEADER_BYTES = 32
USABLE = PAGE - HEADER_BYTES  # bytes for slots and cells
CELL_BYTES_MAX = USABLE // 3  # slot included: three cells always fit, so a split always works
LEAF_CELL_HEADER = 8  # key length u16, flags u16, value length u32
INTERNAL_CELL_HEADER = 8  # key length u16, zero u16, child page u32
SLOT_BYTES = 2
OVERFLOW_BYTES = USABLE  # value bytes per overflow page
FREELIST_ENTRIES = USABLE // 4  # page numbers per free-list page
FLAG_OVERFLOW = 1  # leaf cell flag: the value lives in an overflow chain, the cell holds its first page
PUNCH_PAGES_MIN = 64  # a checkpoint frees this many pages more than were taken: holes for them

MAGIC = b"dynbtree"
FORMAT_VERSION = 1

TYPE_META = 1
TYPE_LEAF = 2
TYPE_INTERNAL = 3
TYPE_OVERFLOW = 4
TYPE_FREELIST = 5

# crc32c, type, zero, count, page number, link, cell start, zero, used bytes, generation
HEADER = struct.Struct("<IBBHIIHHIQ")
# magic, version, page size, checkpoint lsn, root, page count, free-list head, free pages, items, height
META = struct.Struct("<8sIIQIIIIQI")
CELL = struct.Struct("<HHI")
U32 = struct.Struct("<I")
assert HEADER.size == HEADER_BYTES

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2  # linux/falloc.h

_NO_OVERFLOW_CELL = SLOT_BYTES + LEAF_CELL_HEADER + limits.BTREE_KEY_BYTES_MAX + 4
assert _NO_OVERFLOW_CELL <= CELL_BYTES_MAX  # the largest key with an overflowed value still fits


class Overflow(NamedTuple):
    """A leaf value stored in a chain of overflow pages."""

    first: int  # first page of the chain
    length: int  # value bytes


class _Node:
    """A decoded leaf or internal page held in the buffer pool."""

    __slots__ = ("pno", "leaf", "keys", "vals", "used", "pins", "dirty")

    def __init__(self, pno: int, leaf: bool, keys: list, vals: list, used: int):
        self.pno = pno  # page number on disk
        self.leaf = leaf
        self.keys = keys  # sorted keys; separators in an internal page
        self.vals = vals  # leaf: bytes | Overflow per key; internal: child pages, len(keys) + 1
        self.used = used  # slot and cell bytes, <= USABLE
        self.pins = 0  # operations holding it; a pinned page is never evicted
        self.dirty = False  # differs from the page on disk


def leaf_cell_bytes(key: bytes, value) -> int:
    body = 4 if isinstance(value, Overflow) else len(value)
    return SLOT_BYTES + LEAF_CELL_HEADER + len(key) + body


def internal_cell_bytes(key: bytes) -> int:
    return SLOT_BYTES + INTERNAL_CELL_HEADER + len(key)


def inline_fits(key: bytes, value: bytes) -> bool:
    return SLOT_BYTES + LEAF_CELL_HEADER + len(key) + len(value) <= CELL_BYTES_MAX


def shortest_separator(left: bytes, right: bytes) -> bytes:
    """The shortest prefix of `right` that sorts after `left` (left < right)."""
    n = min(len(left), len(right))
    i = 0
    while i < n and left[i] == right[i]:
        i += 1
    return right[: i + 1]


def split_point(sizes: list[int]) -> int:
    """Cells [0, i) stay left: the smallest i holding at least half of the bytes."""
    total = sum(sizes)
    acc = i = 0
    while 2 * acc < total:
        acc += sizes[i]
        i += 1
    return i


def check_entry(key, value) -> None:
    if type(key) is not bytes:
        raise TypeError(f"keys are bytes, not {type(key).__name__}")
    if len(key) > limits.BTREE_KEY_BYTES_MAX:
        raise ValueError(f"key of {len(key)} bytes exceeds {limits.BTREE_KEY_BYTES_MAX}")
    if value is None:
        return
    if type(value) is not bytes:
        raise TypeError(f"values are bytes, not {type(value).__name__}")
    if len(value) > limits.BTREE_VALUE_BYTES_MAX:
        raise ValueError(f"value of {len(value)} bytes exceeds {limits.BTREE_VALUE_BYTES_MAX}")


def range_cursor(scan_batch: Callable, start, end, reverse: bool, limit) -> Iterator[tuple[bytes, bytes]]:
    """Iterate a key range batch by batch; each batch descends from the root again.

    `scan_batch(start, start_inclusive, end, reverse, n) -> (items, done)`. Resuming
    from the last key returned (exclusive) keeps the cursor correct when the tree
    changes between batches: it then shows each key once, with its value at the time
    its batch was read. Shared by both backends.
    """
    if start is not None and type(start) is not bytes or end is not None and type(end) is not bytes:
        raise TypeError("scan bounds are bytes or None")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    return _batches(scan_batch, start, end, reverse, limit)


def _batches(scan_batch: Callable, start, end, reverse: bool, limit) -> Iterator[tuple[bytes, bytes]]:
    remaining = limit
    inclusive = True
    while remaining is None or remaining > 0:
        n = limits.BTREE_SCAN_BATCH_ITEMS if remaining is None else min(remaining, limits.BTREE_SCAN_BATCH_ITEMS)
        items, done = scan_batch(start, inclusive, end, reverse, n)
        yield from items
        if done or not items:
            return
        if remaining is not None:
            remaining -= len(items)
        if reverse:
            end = items[-1][0]
        else:
            start, inclusive = items[-1][0], False


@contextlib.contextmanager
def snapshot_cursor(tree) -> Iterator[Iterator[tuple[bytes, bytes]]]:
    """Register a snapshot of the last checkpoint with `tree`, yield its cursor, release it.

    While registered, the pages the checkpoint uses are not reused, so the cursor's
    batches all read one consistent tree. Shared by both backends.
    """
    gen, root = tree._snapshot_open()

    def batch(start, inclusive, end, reverse, n):
        return tree._scan_batch(root, start, inclusive, end, reverse, n)

    try:
        yield range_cursor(batch, None, None, False, None)
    finally:
        tree._snapshot_close(gen)


def _io_error(exc: OSError, path: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left for the B-tree file {path}: free space and retry")
    return StorageError(f"I/O error on the B-tree file {path}: {exc}")


class ReferenceBTree:
    """The pure-Python B+tree; see dynstore/storage/btree.py for the contract and format."""

    backend = "reference"

    def __init__(self, path, *, cache_bytes: int = limits.BTREE_CACHE_BYTES_DEFAULT):
        if cache_bytes < limits.BTREE_CACHE_BYTES_MIN:
            raise ValueError(f"cache_bytes must be at least {limits.BTREE_CACHE_BYTES_MIN}")
        self._path = os.fspath(path)
        self._frames = cache_bytes // PAGE
        self._pool: OrderedDict[int, _Node] = OrderedDict()  # LRU order, least recent first
        self._hits = self._misses = self._evictions = 0
        self._reusable: list[int] = []  # heap of pages free now (lowest reused first)
        self._pending: list[int] = []  # freed since the last checkpoint, which still references them
        self._deferred: list[tuple[int, list[int]]] = []  # (freeing generation, pages) kept for snapshots
        self._fresh: set[int] = set()  # allocated since the last checkpoint: rewritten in place
        self._snapshots: dict[int, int] = {}  # generation -> open snapshots
        self._freelist_pages: list[int] = []  # pages holding the last checkpoint's free list
        self._ck: dict | None = None  # the checkpoint under way (checkpoint_begin .. checkpoint_end)
        self._allocs = 0  # pages taken (and kept) since the last checkpoint began
        self._punched = 0  # pages whose disk blocks went back to the file system
        self._can_punch = True  # the file system makes holes (cleared the first time it refuses)
        self._fd = -1
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._fd = fd
            self._open()
        except BaseException:
            self._fd = -1
            os.close(fd)
            raise

    # --- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        size = os.fstat(self._fd).st_size
        metas = []
        for slot in (0, 1):
            meta = self._read_meta(slot, size)
            if meta is not None:
                metas.append(meta)
        if not metas:
            if size >= 2 * PAGE:
                raise CorruptionError("both B-tree meta pages fail their checksum", self._path, 0)
            # A new file, or one whose creation crashed before its meta pages were durable.
            self._gen, self._ckpt_lsn, self._root, self._page_count = 0, 0, 0, 2
            self._items, self._height, self._durable_root = 0, 0, 0
            for slot in (0, 1):
                self._pwrite(self._encode_meta(slot, 0, 0, 0, 0), slot * PAGE)
            self._fsync()
            dfd = os.open(os.path.dirname(os.path.abspath(self._path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return
        gen, lsn, root, page_count, fl_head, fl_count, items, height = max(metas)
        self._gen, self._ckpt_lsn, self._root, self._page_count = gen, lsn, root, page_count
        self._items, self._height = items, height
        pno = fl_head
        while pno:
            page = self._read_page(pno, TYPE_FREELIST)
            count = HEADER.unpack_from(page)[3]
            self._reusable.extend(struct.unpack_from(f"<{count}I", page, HEADER_BYTES))
            self._freelist_pages.append(pno)
            pno = HEADER.unpack_from(page)[5]
        if len(self._reusable) != fl_count:
            raise CorruptionError(f"free list holds {len(self._reusable)} pages, meta says {fl_count}", self._path, 0)
        heapq.heapify(self._reusable)
        if size > page_count * PAGE:
            # Pages past the checkpoint's end were written after it and are referenced by nothing.
            os.ftruncate(self._fd, page_count * PAGE)
        self._durable_root = root

    def _read_meta(self, slot: int, size: int):
        if size < (slot + 1) * PAGE:
            return None
        page = os.pread(self._fd, PAGE, slot * PAGE)
        crc, ptype, _, _, pno, _, _, _, _, gen = HEADER.unpack_from(page)
        if crc != crc32c.crc32c(memoryview(page)[4:]) or ptype != TYPE_META or pno != slot:
            return None
        magic, version, page_bytes, lsn, root, page_count, fl_head, fl_count, items, height = META.unpack_from(
            page, HEADER_BYTES
        )
        if magic != MAGIC:
            return None
        if version != FORMAT_VERSION or page_bytes != PAGE:
            raise StorageError(
                f"{self._path} has B-tree format {version} with {page_bytes}-byte pages; "
                f"this build reads format {FORMAT_VERSION} with {PAGE}-byte pages"
            )
        return gen, lsn, root, page_count, fl_head, fl_count, items, height

    # --- pages on disk -------------------------------------------------------------------

    def _pwrite(self, data, offset: int) -> None:
        try:
            written = os.pwrite(self._fd, data, offset)
        except OSError as exc:
            raise _io_error(exc, self._path) from exc
        if written != len(data):
            raise DiskFullError(f"short write to the B-tree file {self._path}: free space and retry")

    def _fsync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_error(exc, self._path) from exc

    def _seal(self, buf: bytearray, ptype: int, pno: int, count: int, link: int, cell_start: int, used: int, gen: int):
        HEADER.pack_into(buf, 0, 0, ptype, 0, count, pno, link, cell_start, 0, used, gen)
        U32.pack_into(buf, 0, crc32c.crc32c(memoryview(buf)[4:]))
        return buf

    def _read_page(self, pno: int, *ptypes: int) -> bytes:
        offset = pno * PAGE
        if not 2 <= pno < self._page_count:
            raise CorruptionError(f"B-tree reference to page {pno} outside the file", self._path, offset)
        try:
            page = os.pread(self._fd, PAGE, offset)
        except OSError as exc:
            raise _io_error(exc, self._path) from exc
        if len(page) != PAGE:
            raise CorruptionError(f"B-tree page {pno} is cut short", self._path, offset)
        crc, ptype, _, _, stored_pno = HEADER.unpack_from(page)[:5]
        if crc != crc32c.crc32c(memoryview(page)[4:]):
            raise CorruptionError(f"B-tree page {pno} fails its checksum", self._path, offset)
        if stored_pno != pno or ptype not in ptypes:
            raise CorruptionError(f"B-tree page {pno} holds page {stored_pno} of type {ptype}", self._path, offset)
        return page

    def _encode_meta(self, slot: int, gen: int, lsn: int, fl_head: int, fl_count: int) -> bytearray:
        buf = bytearray(PAGE)
        META.pack_into(
            buf, HEADER_BYTES, MAGIC, FORMAT_VERSION, PAGE, lsn, self._root, self._page_count,
            fl_head, fl_count, self._items, self._height,
        )
        return self._seal(buf, TYPE_META, slot, 0, 0, 0, 0, gen)

    def _encode_node(self, node: _Node) -> bytearray:
        buf = bytearray(PAGE)
        top = PAGE
        for i, key in enumerate(node.keys):
            if node.leaf:
                value = node.vals[i]
                if isinstance(value, Overflow):
                    cell = CELL.pack(len(key), FLAG_OVERFLOW, value.length) + key + U32.pack(value.first)
                else:
                    cell = CELL.pack(len(key), 0, len(value)) + key + value
            else:
                cell = CELL.pack(len(key), 0, node.vals[i + 1]) + key
            top -= len(cell)
            buf[top : top + len(cell)] = cell
            struct.pack_into("<H", buf, HEADER_BYTES + SLOT_BYTES * i, top)
        ptype, link = (TYPE_LEAF, 0) if node.leaf else (TYPE_INTERNAL, node.vals[0])
        return self._seal(buf, ptype, node.pno, len(node.keys), link, top, 0, self._gen + 1)

    def _decode_node(self, pno: int, page: bytes) -> _Node:
        _, ptype, _, count, _, link, _, _, _, _ = HEADER.unpack_from(page)
        offsets = struct.unpack_from(f"<{count}H", page, HEADER_BYTES)
        keys = []
        leaf = ptype == TYPE_LEAF
        vals = [] if leaf else [link]
        for off in offsets:
            klen, flags, word = CELL.unpack_from(page, off)
            kstart = off + LEAF_CELL_HEADER
            keys.append(page[kstart : kstart + klen])
            if not leaf:
                vals.append(word)
            elif flags & FLAG_OVERFLOW:
                vals.append(Overflow(U32.unpack_from(page, kstart + klen)[0], word))
            else:
                vals.append(page[kstart + klen : kstart + klen + word])
        used = PAGE - HEADER.unpack_from(page)[6] + SLOT_BYTES * count
        return _Node(pno, leaf, keys, vals, used)

    # --- buffer pool ---------------------------------------------------------------------

    def _fetch(self, pno: int) -> _Node:
        node = self._pool.get(pno)
        if node is not None:
            self._pool.move_to_end(pno)
            self._hits += 1
            return node
        self._misses += 1
        node = self._decode_node(pno, self._read_page(pno, TYPE_LEAF, TYPE_INTERNAL))
        self._make_room()
        self._pool[pno] = node
        return node

    def _make_room(self) -> None:
        while len(self._pool) >= self._frames:
            for pno, node in self._pool.items():
                if not node.pins:
                    break
            else:
                raise StorageError(f"all {self._frames} buffer-pool frames are pinned: raise cache_bytes")
            if node.dirty:
                # Dirty pages are fresh (allocated since the last checkpoint, referenced by no
                # durable meta), so writing them out early is safe and keeps memory bounded.
                self._pwrite(self._encode_node(node), pno * PAGE)
                node.dirty = False
            del self._pool[pno]
            self._evictions += 1

    def _new_node(self, leaf: bool, keys: list, vals: list, used: int) -> _Node:
        node = _Node(self._alloc(), leaf, keys, vals, used)
        node.dirty = True
        self._make_room()
        self._pool[node.pno] = node
        return node

    # --- page allocation -----------------------------------------------------------------

    def _alloc(self) -> int:
        if self._reusable:
            pno = heapq.heappop(self._reusable)
        else:
            pno = self._page_count
            if pno >= 1 << 32:
                raise StorageError(f"{self._path} reached the format's 2^32 pages")
            self._page_count += 1
        self._fresh.add(pno)
        self._allocs += 1
        stale = self._pool.pop(pno, None)  # a clean copy a snapshot read before the page was freed
        assert stale is None or (not stale.dirty and not stale.pins)
        return pno

    def _free(self, pno: int) -> None:
        if pno in self._fresh:
            # Referenced by no checkpoint and no snapshot: reusable at once, and not taken after all.
            self._fresh.discard(pno)
            heapq.heappush(self._reusable, pno)
            self._allocs -= 1
            self._pool.pop(pno, None)
        else:
            self._pending.append(pno)

    def _writable(self, node: _Node) -> bool:
        """Copy-on-write: a page of the last checkpoint moves to a fresh page. True if it moved."""
        node.dirty = True
        if node.pno in self._fresh:
            return False
        old = node.pno
        del self._pool[old]
        node.pno = self._alloc()
        self._pool[node.pno] = node
        self._pending.append(old)
        return True

    # --- overflow chains -----------------------------------------------------------------

    def _write_chain(self, value: bytes) -> Overflow:
        pnos = [self._alloc() for _ in range(-(-len(value) // OVERFLOW_BYTES))]
        for j, pno in enumerate(pnos):
            chunk = value[j * OVERFLOW_BYTES : (j + 1) * OVERFLOW_BYTES]
            buf = bytearray(PAGE)
            buf[HEADER_BYTES : HEADER_BYTES + len(chunk)] = chunk
            link = pnos[j + 1] if j + 1 < len(pnos) else 0
            self._pwrite(self._seal(buf, TYPE_OVERFLOW, pno, 0, link, 0, len(chunk), self._gen + 1), pno * PAGE)
        return Overflow(pnos[0], len(value))

    def _chain(self, first: int) -> Iterator[tuple[int, bytes]]:
        pno = first
        while pno:
            page = self._read_page(pno, TYPE_OVERFLOW)
            yield pno, page
            pno = HEADER.unpack_from(page)[5]

    def _read_chain(self, ref: Overflow) -> bytes:
        parts = []
        for _, page in self._chain(ref.first):
            used = HEADER.unpack_from(page)[8]
            parts.append(page[HEADER_BYTES : HEADER_BYTES + used])
        value = b"".join(parts)
        if len(value) != ref.length:
            raise CorruptionError(
                f"overflow chain at page {ref.first} holds {len(value)} bytes, not {ref.length}",
                self._path, ref.first * PAGE,
            )
        return value

    def _free_chain(self, ref: Overflow) -> None:
        for pno in [pno for pno, _ in self._chain(ref.first)]:
            self._free(pno)

    def _value(self, value):
        return self._read_chain(value) if isinstance(value, Overflow) else value

    # --- reads ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ClosedError(f"the B-tree {self._path} is closed")

    @property
    def checkpoint_lsn(self) -> int:
        return self._ckpt_lsn

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        pno = self._root
        if not pno:
            return None
        node = self._fetch(pno)
        while not node.leaf:
            node = self._fetch(node.vals[bisect.bisect_right(node.keys, key)])
        i = bisect.bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return self._value(node.vals[i])
        return None

    def scan(self, start=None, end=None, *, reverse=False, limit=None) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        return range_cursor(self._live_batch, start, end, reverse, limit)

    def _live_batch(self, start, inclusive, end, reverse, n):
        return self._scan_batch(self._root, start, inclusive, end, reverse, n)

    def _scan_batch(self, root: int, start, inclusive: bool, end, reverse: bool, n: int):
        """Up to n items of [start, end) from the tree at `root`, and whether the range is done."""
        self._check_open()
        out: list[tuple[bytes, bytes]] = []
        if not root:
            return out, True
        stack: list[list] = []  # [internal node, child index] from the root down
        node = self._fetch(root)
        while not node.leaf:
            if reverse:
                ci = len(node.keys) if end is None else bisect.bisect_left(node.keys, end)
            else:
                ci = 0 if start is None else bisect.bisect_right(node.keys, start)
            stack.append([node, ci])
            node = self._fetch(node.vals[ci])
        if reverse:
            i = len(node.keys) - 1 if end is None else bisect.bisect_left(node.keys, end) - 1
        elif start is None:
            i = 0
        else:
            i = (bisect.bisect_left if inclusive else bisect.bisect_right)(node.keys, start)
        while len(out) < n:
            if 0 <= i < len(node.keys):
                key = node.keys[i]
                if reverse and start is not None and key < start or not reverse and end is not None and key >= end:
                    return out, True
                out.append((key, self._value(node.vals[i])))
                i += -1 if reverse else 1
                continue
            # The leaf is done: climb to the nearest ancestor with a sibling subtree, go down its edge.
            while stack and (stack[-1][1] == 0 if reverse else stack[-1][1] + 1 >= len(stack[-1][0].vals)):
                stack.pop()
            if not stack:
                return out, True
            stack[-1][1] += -1 if reverse else 1
            node = self._fetch(stack[-1][0].vals[stack[-1][1]])
            while not node.leaf:
                ci = len(node.vals) - 1 if reverse else 0
                stack.append([node, ci])
                node = self._fetch(node.vals[ci])
            i = len(node.keys) - 1 if reverse else 0
        return out, False

    def snapshot(self):
        """Context manager: iterator over the last checkpoint's items, stable while open."""
        self._check_open()
        return snapshot_cursor(self)

    def _snapshot_open(self) -> tuple[int, int]:
        self._snapshots[self._gen] = self._snapshots.get(self._gen, 0) + 1
        return self._gen, self._durable_root

    def _snapshot_close(self, gen: int) -> None:
        self._snapshots[gen] -= 1
        if not self._snapshots[gen]:
            del self._snapshots[gen]
        oldest = min(self._snapshots, default=None)
        while self._deferred and (oldest is None or self._deferred[0][0] <= oldest):
            for pno in self._deferred.pop(0)[1]:
                heapq.heappush(self._reusable, pno)

    def stats(self) -> dict:
        self._check_open()
        free = len(self._reusable) + len(self._pending) + sum(len(p) for _, p in self._deferred) \
            + (len(self._ck["pending"]) if self._ck else 0)
        return {
            "backend": self.backend,
            "page_bytes": PAGE,
            "pages": self._page_count,
            "free_pages": free,
            "items": self._items,
            "height": self._height,
            "generation": self._gen,
            "checkpoint_lsn": self._ckpt_lsn,
            "cache_bytes": len(self._pool) * PAGE,
            "cache_bytes_max": self._frames * PAGE,
            "cache_hits": self._hits,
            "cache_misses": self._misses,
            "cache_evictions": self._evictions,
            "dirty_pages": sum(1 for node in self._pool.values() if node.dirty),
            "snapshots": sum(self._snapshots.values()),
            "punched_pages": self._punched,
        }

    # --- writes --------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        self._check_open()
        check_entry(key, value)
        if value is None:
            raise TypeError("values are bytes, not NoneType")
        self._put(key, value)

    def delete(self, key: bytes) -> bool:
        self._check_open()
        check_entry(key, None)
        return self._delete(key)

    def write_batch(self, ops: Iterable[tuple[bytes, bytes | None]]) -> None:
        self._check_open()
        ops = list(ops)
        for key, value in ops:
            check_entry(key, value)  # all or nothing: refuse the batch before changing anything
        for key, value in ops:
            if value is None:
                self._delete(key)
            else:
                self._put(key, value)

    def _descend(self, key: bytes, path: list[list]) -> None:
        """Fill `path` with the pinned [node, child index] from the root to the leaf for key."""
        node = self._fetch(self._root)
        while True:
            node.pins += 1
            if node.leaf:
                path.append([node, -1])
                return
            ci = bisect.bisect_right(node.keys, key)
            path.append([node, ci])
            if len(path) >= limits.BTREE_HEIGHT_MAX:
                raise CorruptionError(f"B-tree deeper than {limits.BTREE_HEIGHT_MAX}", self._path, node.pno * PAGE)
            node = self._fetch(node.vals[ci])

    @staticmethod
    def _unpin(path: list[list]) -> None:
        for entry in path:
            entry[0].pins -= 1

    def _cow_path(self, path: list[list]) -> None:
        parent = None
        for node, ci in path:
            if self._writable(node):
                if parent is None:
                    self._root = node.pno
                else:
                    parent[0].vals[parent[1]] = node.pno
            parent = (node, ci)

    def _put(self, key: bytes, value: bytes) -> None:
        val = value if inline_fits(key, value) else self._write_chain(value)
        if not self._root:
            self._root = self._new_node(True, [], [], 0).pno
            self._height = 1
        path: list[list] = []
        try:
            self._descend(key, path)
            leaf = path[-1][0]
            i = bisect.bisect_left(leaf.keys, key)
            self._cow_path(path)
            if i < len(leaf.keys) and leaf.keys[i] == key:
                self._leaf_remove(leaf, i)
            else:
                self._items += 1
            leaf.keys.insert(i, key)
            leaf.vals.insert(i, val)
            leaf.used += leaf_cell_bytes(key, val)
            depth = len(path) - 1
            while depth >= 0 and path[depth][0].used > USABLE:
                self._split(path, depth)
                depth -= 1
        finally:
            self._unpin(path)

    def _leaf_remove(self, leaf: _Node, i: int) -> None:
        key = leaf.keys.pop(i)
        value = leaf.vals.pop(i)
        leaf.used -= leaf_cell_bytes(key, value)
        if isinstance(value, Overflow):
            self._free_chain(value)

    def _split(self, path: list[list], depth: int) -> None:
        node = path[depth][0]
        if node.leaf:
            i = split_point([leaf_cell_bytes(k, v) for k, v in zip(node.keys, node.vals)])
            assert 0 < i < len(node.keys)
            sep = shortest_separator(node.keys[i - 1], node.keys[i])
            right_keys, right_vals = node.keys[i:], node.vals[i:]
            del node.keys[i:], node.vals[i:]
        else:
            i = split_point([internal_cell_bytes(k) for k in node.keys])
            sep = node.keys[i - 1]
            right_keys, right_vals = node.keys[i:], node.vals[i:]
            del node.keys[i - 1 :], node.vals[i:]
        cell = leaf_cell_bytes if node.leaf else (lambda k, _: internal_cell_bytes(k))
        right_used = sum(cell(k, v) for k, v in zip(right_keys, right_vals))
        node.used -= right_used + (0 if node.leaf else internal_cell_bytes(sep))
        right = self._new_node(node.leaf, right_keys, right_vals, right_used)
        if depth == 0:
            self._root = self._new_node(False, [sep], [node.pno, right.pno], internal_cell_bytes(sep)).pno
            self._height += 1
            return
        parent, ci = path[depth - 1]
        parent.keys.insert(ci, sep)
        parent.vals.insert(ci + 1, right.pno)
        parent.used += internal_cell_bytes(sep)

    def _delete(self, key: bytes) -> bool:
        if not self._root:
            return False
        path: list[list] = []
        try:
            self._descend(key, path)
            leaf = path[-1][0]
            i = bisect.bisect_left(leaf.keys, key)
            if i == len(leaf.keys) or leaf.keys[i] != key:
                return False
            self._cow_path(path)
            self._leaf_remove(leaf, i)
            self._items -= 1
            if not leaf.keys:
                self._remove_empty(path)
            return True
        finally:
            self._unpin(path)

    def _remove_empty(self, path: list[list]) -> None:
        """Drop an empty leaf, and ancestors left without children; then shorten the root.

        Pages are removed when empty and never merged with siblings (as PostgreSQL's
        nbtree does): deletes stay local, and freed pages are reused by later inserts.
        """
        depth = len(path) - 1
        while True:
            self._free(path[depth][0].pno)
            if depth == 0:
                self._root, self._height = 0, 0
                return
            parent, ci = path[depth - 1]
            if not parent.keys:
                parent.vals.pop()
                depth -= 1
                continue
            sep = parent.keys.pop(max(ci - 1, 0))
            parent.vals.pop(ci)
            parent.used -= internal_cell_bytes(sep)
            break
        root = path[0][0]
        while not root.leaf and not root.keys:
            child = root.vals[0]
            self._free(root.pno)
            self._root = child
            self._height -= 1
            root = self._fetch(child)

    def bulk_load(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Fill an empty tree from items sorted by key, pages packed left to right."""
        self._check_open()
        if self._root:
            raise ValueError("bulk_load fills an empty tree; this one has items")
        levels: list[_Node] = []  # the page being filled at each level, leaf level first; pinned
        created: list[int] = []  # pages written so far, freed again if the input is refused
        chains: list[Overflow] = []
        prev = None
        count = 0
        try:
            for key, value in items:
                check_entry(key, value)
                if value is None:
                    raise TypeError("values are bytes, not NoneType")
                if prev is not None and key <= prev:
                    raise ValueError("bulk_load input must be sorted by key, strictly ascending")
                val = value if inline_fits(key, value) else self._write_chain(value)
                if isinstance(val, Overflow):
                    chains.append(val)
                size = leaf_cell_bytes(key, val)
                if not levels or levels[0].used + size > USABLE:
                    leaf = self._bulk_node(True, [], created)
                    if levels:
                        self._bulk_push(levels, 1, shortest_separator(prev, key), leaf, created)
                        levels[0].pins -= 1
                        levels[0] = leaf
                    else:
                        levels.append(leaf)
                leaf = levels[0]
                leaf.keys.append(key)
                leaf.vals.append(val)
                leaf.used += size
                prev = key
                count += 1
        except BaseException:
            for node in levels:
                node.pins -= 1
            for pno in created:
                self._free(pno)
            for ref in chains:
                self._free_chain(ref)
            raise
        for node in levels:
            node.pins -= 1
        if levels:
            self._root, self._height, self._items = levels[-1].pno, len(levels), count

    def _bulk_node(self, leaf: bool, vals: list, created: list[int]) -> _Node:
        node = self._new_node(leaf, [], vals, 0)
        node.pins += 1
        created.append(node.pno)
        return node

    def _bulk_push(self, levels: list[_Node], depth: int, sep: bytes, child: _Node, created: list[int]) -> None:
        """Append (sep, child) to the open page at `depth`, starting a new page when it is full."""
        if depth == len(levels):
            levels.append(self._bulk_node(False, [levels[depth - 1].pno], created))
        node = levels[depth]
        size = internal_cell_bytes(sep)
        if node.used + size > USABLE:
            fresh = self._bulk_node(False, [child.pno], created)
            self._bulk_push(levels, depth + 1, sep, fresh, created)
            node.pins -= 1
            levels[depth] = fresh
            return
        node.keys.append(sep)
        node.vals.append(child.pno)
        node.used += size

    # --- checkpoints ---------------------------------------------------------------------

    def checkpoint(self, lsn: int) -> None:
        """Make the current state durable as of `lsn`; a crash after this returns reopens it."""
        self.checkpoint_begin(lsn)
        self.sync_data()
        self.checkpoint_seal()
        self.sync_data()
        self.checkpoint_end()

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def sync_data(self) -> None:
        """fdatasync the file; it may run in another thread while this one uses the tree."""
        self._check_open()
        self._fsync()

    def write_dirty(self, pages_max: int) -> int:
        """Write up to `pages_max` changed pages to disk, as eviction does, keeping them cached
        and clean; returns how many (see the native tree)."""
        self._check_open()
        written = 0
        for node in self._pool.values():
            if written >= pages_max:
                break
            if node.dirty:
                self._pwrite(self._encode_node(node), node.pno * PAGE)
                node.dirty = False
                written += 1
        return written

    def checkpoint_begin(self, lsn: int) -> None:
        """Write the current state as of `lsn` and its free list to pages no durable checkpoint
        uses; checkpoint_seal and checkpoint_end, each after sync_data, make it durable."""
        self._check_open()
        if self._ck is not None:
            raise ValueError("a checkpoint is already under way")
        if lsn < self._ckpt_lsn:
            raise ValueError(f"checkpoint lsn {lsn} is below the last checkpoint's {self._ckpt_lsn}")
        for node in sorted((n for n in self._pool.values() if n.dirty), key=lambda n: n.pno):
            self._pwrite(self._encode_node(node), node.pno * PAGE)
            node.dirty = False
        # The old free list pages are referenced by the old meta only: free in the new state.
        pending = self._pending + self._freelist_pages
        held = [pno for _, pages in self._deferred for pno in pages]
        fl_pages: list[int] = []
        try:
            while len(fl_pages) * FREELIST_ENTRIES < len(self._reusable) + len(pending) + len(held):
                fl_pages.append(self._alloc())
            free = sorted(self._reusable + pending + held)
            for j, pno in enumerate(fl_pages):
                entries = free[j * FREELIST_ENTRIES : (j + 1) * FREELIST_ENTRIES]
                buf = bytearray(PAGE)
                struct.pack_into(f"<{len(entries)}I", buf, HEADER_BYTES, *entries)
                link = fl_pages[j + 1] if j + 1 < len(fl_pages) else 0
                self._seal(buf, TYPE_FREELIST, pno, len(entries), link, 0, 0, self._gen + 1)
                self._pwrite(buf, pno * PAGE)
        except BaseException:
            for pno in fl_pages:
                self._free(pno)
            raise
        gen = self._gen + 1
        meta = self._encode_meta(gen % 2, gen, lsn, fl_pages[0] if fl_pages else 0, len(free))
        # Every page of the state written belongs to the checkpoint now: a change copies it, and
        # a page freed from here on waits for the checkpoint after this one.
        self._fresh.clear()
        self._pending = []
        self._ck = {"gen": gen, "lsn": lsn, "root": self._root, "meta": meta, "pending": pending,
                    "freelist": fl_pages, "taken": self._allocs, "sealed": False}
        self._allocs = 0

    def checkpoint_seal(self) -> None:
        """Write the begun checkpoint's meta page, once its pages are durable (sync_data)."""
        self._check_open()
        if self._ck is None or self._ck["sealed"]:
            raise ValueError("no checkpoint was begun, or it was sealed already")
        self._pwrite(self._ck["meta"], (self._ck["gen"] % 2) * PAGE)
        self._ck["sealed"] = True

    def checkpoint_end(self) -> None:
        """The sealed checkpoint's meta page is durable (sync_data): it is the last checkpoint."""
        self._check_open()
        ck = self._ck
        if ck is None or not ck["sealed"]:
            raise ValueError("no checkpoint was sealed")
        self._ck = None
        self._gen, self._ckpt_lsn, self._durable_root = ck["gen"], ck["lsn"], ck["root"]
        self._freelist_pages = ck["freelist"]
        if self._snapshots:
            self._deferred.append((ck["gen"], ck["pending"]))
        else:
            if len(ck["pending"]) >= ck["taken"] + PUNCH_PAGES_MIN:
                self._punch(ck["pending"], ck["taken"])
            for pno in ck["pending"]:
                heapq.heappush(self._reusable, pno)

    def _punch(self, pages: list[int], keep: int) -> None:
        """Give the file system back the disk blocks of free ``pages`` but the ``keep`` lowest,
        which the next checkpoints reuse first: a free page is written before it is read again,
        so its hole loses nothing. Only for a checkpoint that freed far more than was taken (a
        steady stream of updates frees what it takes; holes there would cost the disk twice)."""
        if not self._can_punch:
            return
        pages = sorted(pages)[keep:]
        i = 0
        while i < len(pages):
            j = i + 1
            while j < len(pages) and pages[j] == pages[j - 1] + 1:
                j += 1
            if _libc.fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, pages[i] * PAGE,
                               (j - i) * PAGE) != 0:
                self._can_punch = False  # not this file system (a failure here is only space not given back)
                return
            self._punched += j - i
            i = j

    def close(self) -> None:
        """Release the file. Changes since the last checkpoint are dropped, as in a crash."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._pool.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
