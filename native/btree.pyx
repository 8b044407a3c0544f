# cython: language_level=3, wraparound=False, cdivision=True
"""The native paged B+tree: dynstore.storage._btree.NativeBTree.

File format, copy-on-write rules and the faults survived are described in
dynstore/storage/btree.py; dynstore/storage/btree_ref.py runs the same steps in
Python (same split points, separators, allocation order), and the two read each
other's files. Pages live as raw 16 KiB images in a clock-managed buffer pool;
keys are compared with memcmp on the page, and Python objects are made only for
the keys and values handed back.

A tree is used from one thread; the GIL is released only around fdatasync.
"""
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from btree cimport *
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memmove, memset
from libc.errno cimport errno, ENOSPC, EDQUOT, EINTR
from posix.unistd cimport fdatasync, ftruncate, pread, pwrite
from posix.types cimport off_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "<fcntl.h>" nogil:
    enum:
        FALLOC_FL_KEEP_SIZE
        FALLOC_FL_PUNCH_HOLE
    int fallocate(int fd, int mode, off_t offset, off_t length)

import array
import os

from dynstore import limits
from dynstore.storage.btree_ref import range_cursor, snapshot_cursor
from dynstore.storage.errors import ClosedError, CorruptionError, DiskFullError, StorageError

cdef bytes MAGIC = b"dynbtree"


def format_constants():
    """The format numbers compiled in, compared with the reference's at import."""
    return {
        "page_bytes": PAGE,
        "header_bytes": HEADER_BYTES,
        "cell_bytes_max": CELL_BYTES_MAX,
        "overflow_bytes": OVERFLOW_BYTES,
        "freelist_entries": FREELIST_ENTRIES,
        "format_version": FORMAT_VERSION,
        "key_bytes_max": KEY_BYTES_MAX,
        "value_bytes_max": VALUE_BYTES_MAX,
        "height_max": HEIGHT_MAX,
        "chain_pages_max": CHAIN_PAGES_MAX,
        "cells_max": CELLS_MAX,
    }


# --- little-endian fields and slotted pages ----------------------------------------------

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint64_t rd64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr64(uint8_t *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)

cdef inline int keycmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) noexcept nogil:
    cdef int c = memcmp(a, b, an if an < bn else bn)
    if c:
        return c
    return (an > bn) - (an < bn)

cdef inline int count_of(const uint8_t *p) noexcept nogil:
    return rd16(p + 6)

cdef inline uint32_t slot_of(const uint8_t *p, int i) noexcept nogil:
    return rd16(p + HEADER_BYTES + SLOT_BYTES * i)

cdef inline uint32_t cell_top(const uint8_t *p, int i) noexcept nogil:
    # Cells are packed downwards in slot order: cell i ends where cell i-1 starts.
    return PAGE if i == 0 else slot_of(p, i - 1)

cdef inline int free_bytes(const uint8_t *p) noexcept nogil:
    return USABLE - (PAGE - rd16(p + 16)) - SLOT_BYTES * count_of(p)

cdef inline const uint8_t *key_at(const uint8_t *p, int i, size_t *n) noexcept nogil:
    cdef uint32_t off = slot_of(p, i)
    n[0] = rd16(p + off)
    return p + off + CELL_HEADER

cdef inline uint32_t child_at(const uint8_t *p, int i) noexcept nogil:
    if i == 0:
        return rd32(p + 12)
    return rd32(p + slot_of(p, i - 1) + 4)

cdef inline void set_child(uint8_t *p, int i, uint32_t pno) noexcept nogil:
    if i == 0:
        wr32(p + 12, pno)
    else:
        wr32(p + slot_of(p, i - 1) + 4, pno)

cdef inline int lower_bound(const uint8_t *p, const uint8_t *k, size_t kn) noexcept nogil:
    """First cell whose key is >= k."""
    cdef int lo = 0, hi = count_of(p), mid
    cdef size_t n
    cdef const uint8_t *key
    while lo < hi:
        mid = (lo + hi) >> 1
        key = key_at(p, mid, &n)
        if keycmp(key, n, k, kn) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo

cdef inline int upper_bound(const uint8_t *p, const uint8_t *k, size_t kn) noexcept nogil:
    """First cell whose key is > k: the child index to follow in an internal page."""
    cdef int lo = 0, hi = count_of(p), mid
    cdef size_t n
    cdef const uint8_t *key
    while lo < hi:
        mid = (lo + hi) >> 1
        key = key_at(p, mid, &n)
        if keycmp(key, n, k, kn) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo

cdef inline bint key_is(const uint8_t *p, int i, const uint8_t *k, size_t kn) noexcept nogil:
    cdef size_t n
    cdef const uint8_t *key
    if i >= count_of(p):
        return 0
    key = key_at(p, i, &n)
    return n == kn and memcmp(key, k, kn) == 0

cdef uint32_t insert_space(uint8_t *p, int i, uint32_t cs) noexcept nogil:
    """Open room for a cell of cs bytes at slot i; returns its offset."""
    cdef int n = count_of(p), j
    cdef uint32_t start = rd16(p + 16), top = cell_top(p, i)
    memmove(p + start - cs, p + start, top - start)
    for j in range(i, n):
        wr16(p + HEADER_BYTES + SLOT_BYTES * j, <uint16_t>(slot_of(p, j) - cs))
    memmove(p + HEADER_BYTES + SLOT_BYTES * (i + 1), p + HEADER_BYTES + SLOT_BYTES * i, SLOT_BYTES * (n - i))
    wr16(p + HEADER_BYTES + SLOT_BYTES * i, <uint16_t>(top - cs))
    wr16(p + 6, <uint16_t>(n + 1))
    wr16(p + 16, <uint16_t>(start - cs))
    return top - cs

cdef void remove_space(uint8_t *p, int i) noexcept nogil:
    """Remove cell i, keeping the cells packed and unused bytes zero."""
    cdef int n = count_of(p), j
    cdef uint32_t start = rd16(p + 16), off = slot_of(p, i)
    cdef uint32_t cs = cell_top(p, i) - off
    memmove(p + start + cs, p + start, off - start)
    memset(p + start, 0, cs)
    for j in range(i + 1, n):
        wr16(p + HEADER_BYTES + SLOT_BYTES * j, <uint16_t>(slot_of(p, j) + cs))
    memmove(p + HEADER_BYTES + SLOT_BYTES * i, p + HEADER_BYTES + SLOT_BYTES * (i + 1), SLOT_BYTES * (n - i - 1))
    wr16(p + HEADER_BYTES + SLOT_BYTES * (n - 1), 0)
    wr16(p + 6, <uint16_t>(n - 1))
    wr16(p + 16, <uint16_t>(start + cs))

cdef inline uint32_t append_space(uint8_t *p, uint32_t cs) noexcept nogil:
    cdef int n = count_of(p)
    cdef uint32_t off = rd16(p + 16) - cs
    wr16(p + HEADER_BYTES + SLOT_BYTES * n, <uint16_t>off)
    wr16(p + 6, <uint16_t>(n + 1))
    wr16(p + 16, <uint16_t>off)
    return off

cdef inline void write_internal_cell(uint8_t *dst, const uint8_t *k, uint32_t kn, uint32_t child) noexcept nogil:
    wr16(dst, <uint16_t>kn)
    wr16(dst + 2, 0)
    wr32(dst + 4, child)
    memcpy(dst + CELL_HEADER, k, kn)

cdef inline uint32_t shortest_separator(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) noexcept nogil:
    """Length of the shortest prefix of b sorting after a (a < b)."""
    cdef size_t i = 0, n = an if an < bn else bn
    while i < n and a[i] == b[i]:
        i += 1
    return <uint32_t>(i + 1)


# --- page-number vectors and the free-page heap -------------------------------------------

cdef int vec_push(U32Vec *v, uint32_t x) except -1:
    cdef size_t cap
    cdef uint32_t *items
    if v.len == v.cap:
        cap = v.cap * 2 if v.cap else 256
        items = <uint32_t *>realloc(v.items, cap * sizeof(uint32_t))
        if items == NULL:
            raise MemoryError()
        v.items, v.cap = items, cap
    v.items[v.len] = x
    v.len += 1
    return 0

cdef int heap_push(U32Vec *h, uint32_t x) except -1:
    vec_push(h, x)
    cdef size_t i = h.len - 1, parent
    while i > 0:
        parent = (i - 1) >> 1
        if h.items[parent] <= x:
            break
        h.items[i] = h.items[parent]
        i = parent
    h.items[i] = x
    return 0

cdef void heap_sift_down(U32Vec *h, size_t i) noexcept nogil:
    cdef uint32_t x = h.items[i]
    cdef size_t c
    while True:
        c = 2 * i + 1
        if c >= h.len:
            break
        if c + 1 < h.len and h.items[c + 1] < h.items[c]:
            c += 1
        if x <= h.items[c]:
            break
        h.items[i] = h.items[c]
        i = c
    h.items[i] = x

cdef uint32_t heap_pop(U32Vec *h) noexcept nogil:
    cdef uint32_t top = h.items[0]
    h.len -= 1
    if h.len:
        h.items[0] = h.items[h.len]
        heap_sift_down(h, 0)
    return top

cdef void heapify(U32Vec *h) noexcept nogil:
    cdef size_t i = h.len // 2
    while i > 0:
        i -= 1
        heap_sift_down(h, i)

cdef void vec_free(U32Vec *v) noexcept nogil:
    free(v.items)
    v.items, v.len, v.cap = NULL, 0, 0

cdef int cmp_u32(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t *>a)[0], y = (<const uint32_t *>b)[0]
    return (x > y) - (x < y)

cdef int cmp_u64(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t *>a)[0], y = (<const uint64_t *>b)[0]
    return (x > y) - (x < y)

cdef inline uint32_t hash_pno(uint32_t pno) noexcept nogil:
    cdef uint32_t h = pno * <uint32_t>2654435761u
    return h ^ (h >> 16)


cdef int check_entry(object key, object value) except -1:
    if type(key) is not bytes:
        raise TypeError(f"keys are bytes, not {type(key).__name__}")
    if PyBytes_GET_SIZE(key) > KEY_BYTES_MAX:
        raise ValueError(f"key of {PyBytes_GET_SIZE(key)} bytes exceeds {KEY_BYTES_MAX}")
    if value is None:
        return 0
    if type(value) is not bytes:
        raise TypeError(f"values are bytes, not {type(value).__name__}")
    if PyBytes_GET_SIZE(value) > VALUE_BYTES_MAX:
        raise ValueError(f"value of {PyBytes_GET_SIZE(value)} bytes exceeds {VALUE_BYTES_MAX}")
    return 0


cdef class NativeBTree:
    """The native B+tree; see dynstore/storage/btree.py for the contract and format."""

    cdef int fd                     # the tree's file; -1 once closed
    cdef readonly str path
    # State of the tree as it is now and as of the last checkpoint.
    cdef uint64_t gen               # generation of the last durable checkpoint
    cdef uint64_t ckpt_lsn          # its LSN
    cdef uint32_t durable_root      # its root, read by snapshots
    cdef uint32_t root              # current root page, 0 for an empty tree
    cdef uint32_t height            # levels, 0 for an empty tree
    cdef uint64_t items             # keys in the current tree
    cdef uint32_t page_count        # pages in the file (allocated high-water mark)
    # Buffer pool: nframes page images, a clock, and an open-addressing map page -> frame.
    cdef uint8_t *frames
    cdef uint32_t nframes
    cdef uint32_t *frame_pno        # page held by each frame, 0 when the frame is free
    cdef uint16_t *frame_pins       # operations using the frame; pinned frames are not evicted
    cdef uint8_t *frame_flags       # FRAME_DIRTY | FRAME_REF
    cdef int32_t *table             # frame index per slot, -1 empty; linear probing
    cdef uint32_t table_mask
    cdef uint32_t hand              # clock hand
    cdef uint64_t hits, misses, evictions
    # Free space. A page the last checkpoint uses is never written (copy-on-write).
    cdef U32Vec reusable            # min-heap of pages free now
    cdef U32Vec pending             # freed since the last checkpoint, which still uses them
    cdef U32Vec freelist_pages      # pages holding the last checkpoint's free list
    cdef uint8_t *fresh             # bitmap: allocated since the last checkpoint (rewritable)
    cdef size_t fresh_bytes
    cdef list deferred              # [(freeing generation, array of pages)] kept for snapshots
    cdef dict snapshots             # generation -> open snapshots
    # A checkpoint under way (checkpoint_begin .. checkpoint_end): 1 its pages are written, 2 its
    # meta page too; the generation, LSN and root it makes durable, its meta page image, the
    # pages it frees once durable and the pages holding its free list.
    cdef int ck_state
    cdef uint64_t ck_gen, ck_lsn
    cdef uint32_t ck_root
    cdef uint8_t ck_meta[PAGE]
    cdef U32Vec ck_pending, ck_fl
    cdef size_t allocs                  # pages taken (and kept) since the last checkpoint began
    cdef size_t ck_taken                # pages taken before it began: about what the next ones take
    cdef uint64_t punched               # pages whose disk blocks went back to the file system
    cdef bint can_punch                 # the file system makes holes (cleared the first time it refuses)
    # Scratch space of one operation (the tree is used from one thread).
    cdef int32_t path_frame[HEIGHT_MAX]   # pinned frames from the root down
    cdef int32_t path_index[HEIGHT_MAX]   # child index taken at each internal level
    cdef int depth                        # entries in path_frame
    cdef uint8_t cell_buf[CELL_BYTES_MAX] # the cell being inserted
    cdef uint8_t sep_buf[KEY_BYTES_MAX]   # separator moving up a level
    cdef uint32_t sep_len
    cdef uint8_t scratch[PAGE]            # copy of a page being split
    cdef uint8_t io_buf[PAGE]             # overflow, free-list and meta pages on their way to or from disk
    cdef const uint8_t *split_cell[CELLS_MAX]
    cdef uint32_t split_size[CELLS_MAX]

    backend = "native"

    def __cinit__(self):
        self.fd = -1

    def __init__(self, path, *, cache_bytes=limits.BTREE_CACHE_BYTES_DEFAULT):
        if cache_bytes < limits.BTREE_CACHE_BYTES_MIN:
            raise ValueError(f"cache_bytes must be at least {limits.BTREE_CACHE_BYTES_MIN}")
        self.path = os.fspath(path)
        self.nframes = cache_bytes // PAGE
        cdef uint32_t table_size = 1
        while table_size < 2 * self.nframes:
            table_size <<= 1
        self.table_mask = table_size - 1
        # The page images are touched only when used, so a large, idle pool costs no RSS.
        self.frames = <uint8_t *>malloc(<size_t>self.nframes * PAGE)
        self.frame_pno = <uint32_t *>calloc(self.nframes, sizeof(uint32_t))
        self.frame_pins = <uint16_t *>calloc(self.nframes, sizeof(uint16_t))
        self.frame_flags = <uint8_t *>calloc(self.nframes, sizeof(uint8_t))
        self.table = <int32_t *>malloc(table_size * sizeof(int32_t))
        if not (self.frames and self.frame_pno and self.frame_pins and self.frame_flags and self.table):
            raise MemoryError()
        memset(self.table, 0xFF, table_size * sizeof(int32_t))
        self.deferred = []
        self.snapshots = {}
        self.can_punch = True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.fd = fd
        try:
            self._open()
        except BaseException:
            self.fd = -1
            os.close(fd)
            raise

    def __dealloc__(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._release_memory()

    cdef void _release_memory(self) noexcept:
        free(self.frames)
        free(self.frame_pno)
        free(self.frame_pins)
        free(self.frame_flags)
        free(self.table)
        free(self.fresh)
        self.frames = NULL
        self.frame_pno = NULL
        self.frame_pins = NULL
        self.frame_flags = NULL
        self.table = NULL
        self.fresh = NULL
        self.fresh_bytes = 0
        vec_free(&self.reusable)
        vec_free(&self.pending)
        vec_free(&self.freelist_pages)
        vec_free(&self.ck_pending)
        vec_free(&self.ck_fl)
        self.ck_state = 0

    # --- opening ---------------------------------------------------------------------------

    def _open(self):
        size = os.fstat(self.fd).st_size
        best = None
        for slot in (0, 1):
            meta = self._read_meta(slot, size)
            if meta is not None and (best is None or meta[0] > best[0]):
                best = meta
        if best is None:
            if size >= 2 * PAGE:
                raise CorruptionError("both B-tree meta pages fail their checksum", self.path, 0)
            # A new file, or one whose creation crashed before its meta pages were durable.
            self.gen = self.ckpt_lsn = self.items = 0
            self.root = self.durable_root = self.height = 0
            self.page_count = 2
            self.write_meta(0, 0, 0, 0)
            self.sync()
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return
        gen, lsn, root, page_count, fl_head, fl_count, items, height = best
        self.gen, self.ckpt_lsn, self.root, self.durable_root = gen, lsn, root, root
        self.page_count, self.items, self.height = page_count, items, height
        cdef uint32_t pno = fl_head
        cdef int j, n
        while pno:
            self.read_page(self.io_buf, pno, TYPE_FREELIST, TYPE_FREELIST)
            n = count_of(self.io_buf)
            for j in range(n):
                vec_push(&self.reusable, rd32(self.io_buf + HEADER_BYTES + 4 * j))
            vec_push(&self.freelist_pages, pno)
            pno = rd32(self.io_buf + 12)
        if self.reusable.len != fl_count:
            raise CorruptionError(f"free list holds {self.reusable.len} pages, meta says {fl_count}", self.path, 0)
        heapify(&self.reusable)
        if size > <uint64_t>page_count * PAGE:
            # Pages past the checkpoint's end were written after it and are referenced by nothing.
            os.ftruncate(self.fd, <uint64_t>page_count * PAGE)

    def _read_meta(self, int slot, size):
        if size < (slot + 1) * PAGE:
            return None
        cdef uint8_t *p = self.io_buf
        cdef ssize_t got = pread(self.fd, p, PAGE, <uint64_t>slot * PAGE)
        if got != PAGE:
            return None
        if rd32(p) != ds_crc32c(0, p + 4, PAGE - 4) or p[4] != TYPE_META or rd32(p + 8) != <uint32_t>slot:
            return None
        if memcmp(p + 32, <const char *>MAGIC, 8) != 0:
            return None
        if rd32(p + 40) != FORMAT_VERSION or rd32(p + 44) != PAGE:
            raise StorageError(
                f"{self.path} has B-tree format {rd32(p + 40)} with {rd32(p + 44)}-byte pages; "
                f"this build reads format {FORMAT_VERSION} with {PAGE}-byte pages"
            )
        return (rd64(p + 24), rd64(p + 48), rd32(p + 56), rd32(p + 60), rd32(p + 64), rd32(p + 68),
                rd64(p + 72), rd32(p + 80))

    cdef void fill_meta(self, uint8_t *p, uint32_t slot, uint64_t gen, uint64_t lsn, uint32_t fl_head,
                        uint32_t fl_count) noexcept:
        """The image of meta slot ``slot`` for the tree as it is now."""
        memset(p, 0, PAGE)
        p[4] = TYPE_META
        wr32(p + 8, slot)
        wr64(p + 24, gen)
        memcpy(p + 32, <const char *>MAGIC, 8)
        wr32(p + 40, FORMAT_VERSION)
        wr32(p + 44, PAGE)
        wr64(p + 48, lsn)
        wr32(p + 56, self.root)
        wr32(p + 60, self.page_count)
        wr32(p + 64, fl_head)
        wr32(p + 68, fl_count)
        wr64(p + 72, self.items)
        wr32(p + 80, self.height)
        wr32(p, ds_crc32c(0, p + 4, PAGE - 4))

    cdef int write_meta(self, uint64_t gen, uint64_t lsn, uint32_t fl_head, uint32_t fl_count) except -1:
        """Write meta slot gen % 2 (both slots for generation 0, the new file)."""
        cdef uint32_t slot
        for slot in range(2):
            if gen and slot != gen % 2:
                continue
            self.fill_meta(self.io_buf, slot, gen, lsn, fl_head, fl_count)
            self._pwrite_all(self.io_buf, <uint64_t>slot * PAGE)
        return 0

    # --- pages on disk ---------------------------------------------------------------------

    cdef int _pwrite_all(self, const uint8_t *p, uint64_t offset) except -1:
        cdef ssize_t n
        cdef size_t done = 0
        while done < PAGE:
            n = pwrite(self.fd, p + done, PAGE - done, offset + done)
            if n < 0:
                if errno == EINTR:
                    continue
                self._io_error(errno)
            if n == 0:
                raise DiskFullError(f"short write to the B-tree file {self.path}: free space and retry")
            done += n
        return 0

    cdef int _io_error(self, int err) except -1:
        if err == ENOSPC or err == EDQUOT:
            raise DiskFullError(f"no space left for the B-tree file {self.path}: free space and retry")
        raise StorageError(f"I/O error on the B-tree file {self.path}: {os.strerror(err)}")

    cdef int write_page(self, uint8_t *p, uint32_t pno) except -1:
        wr32(p + 8, pno)
        wr64(p + 24, self.gen + 1 + (self.ck_state != 0))  # the checkpoint that will reference it
        wr32(p, ds_crc32c(0, p + 4, PAGE - 4))
        return self._pwrite_all(p, <uint64_t>pno * PAGE)

    cdef int read_page(self, uint8_t *p, uint32_t pno, int type_a, int type_b) except -1:
        cdef uint64_t offset = <uint64_t>pno * PAGE
        cdef ssize_t n
        cdef size_t done = 0
        if pno < 2 or pno >= self.page_count:
            raise CorruptionError(f"B-tree reference to page {pno} outside the file", self.path, offset)
        while done < PAGE:
            n = pread(self.fd, p + done, PAGE - done, offset + done)
            if n < 0:
                if errno == EINTR:
                    continue
                self._io_error(errno)
            if n == 0:
                raise CorruptionError(f"B-tree page {pno} is cut short", self.path, offset)
            done += n
        if rd32(p) != ds_crc32c(0, p + 4, PAGE - 4):
            raise CorruptionError(f"B-tree page {pno} fails its checksum", self.path, offset)
        if rd32(p + 8) != pno or (p[4] != type_a and p[4] != type_b):
            raise CorruptionError(f"B-tree page {pno} holds page {rd32(p + 8)} of type {p[4]}", self.path, offset)
        if (p[4] == TYPE_LEAF or p[4] == TYPE_INTERNAL) and (
                rd16(p + 16) > PAGE or rd16(p + 16) < HEADER_BYTES + SLOT_BYTES * count_of(p)):
            raise CorruptionError(f"B-tree page {pno} has a bad cell area", self.path, offset)
        return 0

    cdef int sync(self) except -1:
        cdef int rc
        with nogil:
            rc = fdatasync(self.fd)
        if rc != 0:
            self._io_error(errno)
        return 0

    # --- buffer pool -----------------------------------------------------------------------

    cdef uint8_t *page(self, int32_t f) noexcept:
        return self.frames + <size_t>f * PAGE

    cdef int32_t lookup(self, uint32_t pno) noexcept:
        cdef uint32_t i = hash_pno(pno) & self.table_mask
        cdef int32_t f
        while True:
            f = self.table[i]
            if f < 0 or self.frame_pno[f] == pno:
                return f
            i = (i + 1) & self.table_mask

    cdef void map_insert(self, uint32_t pno, int32_t f) noexcept:
        cdef uint32_t i = hash_pno(pno) & self.table_mask
        while self.table[i] >= 0:
            i = (i + 1) & self.table_mask
        self.table[i] = f

    cdef void map_remove(self, uint32_t pno) noexcept:
        # Linear probing with backward-shift deletion: no tombstones to accumulate.
        cdef uint32_t i = hash_pno(pno) & self.table_mask, j, k
        while self.frame_pno[self.table[i]] != pno:
            i = (i + 1) & self.table_mask
        j = i
        while True:
            j = (j + 1) & self.table_mask
            if self.table[j] < 0:
                break
            k = hash_pno(self.frame_pno[self.table[j]]) & self.table_mask
            if (i < k <= j) if i <= j else (i < k or k <= j):
                continue
            self.table[i] = self.table[j]
            i = j
        self.table[i] = -1

    cdef int32_t victim(self) except -1:
        """A frame to reuse: a free one, else the clock's next unpinned, unreferenced page."""
        cdef uint32_t step
        cdef int32_t f
        for step in range(2 * self.nframes + 1):
            f = self.hand
            self.hand = (self.hand + 1) % self.nframes
            if self.frame_pins[f]:
                continue
            if self.frame_pno[f] == 0:
                return f
            if self.frame_flags[f] & FRAME_REF:
                self.frame_flags[f] &= ~FRAME_REF
                continue
            if self.frame_flags[f] & FRAME_DIRTY:
                # Dirty pages are fresh (allocated since the last checkpoint, referenced by no
                # durable meta), so writing them out early is safe and keeps memory bounded.
                self.write_page(self.page(f), self.frame_pno[f])
            self.map_remove(self.frame_pno[f])
            self.frame_pno[f] = 0
            self.frame_flags[f] = 0
            self.evictions += 1
            return f
        raise StorageError(f"all {self.nframes} buffer-pool frames are pinned: raise cache_bytes")

    cdef int32_t fetch(self, uint32_t pno) except -1:
        cdef int32_t f = self.lookup(pno)
        if f >= 0:
            self.frame_flags[f] |= FRAME_REF
            self.hits += 1
            return f
        self.misses += 1
        f = self.victim()
        self.read_page(self.page(f), pno, TYPE_LEAF, TYPE_INTERNAL)
        self.frame_pno[f] = pno
        self.frame_flags[f] = FRAME_REF
        self.map_insert(pno, f)
        return f

    cdef int32_t new_page(self, int ptype) except -1:
        cdef uint32_t pno = self.alloc()
        cdef int32_t f = self.victim()
        cdef uint8_t *p = self.page(f)
        memset(p, 0, PAGE)
        p[4] = <uint8_t>ptype
        wr16(p + 16, PAGE)
        self.frame_pno[f] = pno
        self.frame_flags[f] = FRAME_DIRTY | FRAME_REF
        self.map_insert(pno, f)
        return f

    cdef void drop_frame(self, uint32_t pno) noexcept:
        cdef int32_t f = self.lookup(pno)
        if f >= 0:
            self.map_remove(pno)
            self.frame_pno[f] = 0
            self.frame_flags[f] = 0

    # --- page allocation -------------------------------------------------------------------

    cdef bint is_fresh(self, uint32_t pno) noexcept:
        return (pno >> 3) < self.fresh_bytes and (self.fresh[pno >> 3] >> (pno & 7)) & 1

    cdef uint32_t alloc(self) except 0:
        cdef uint32_t pno
        cdef size_t need, size
        cdef uint8_t *bits
        if self.reusable.len:
            pno = heap_pop(&self.reusable)
        else:
            if self.page_count == 0xFFFFFFFF:
                raise StorageError(f"{self.path} reached the format's 2^32 pages")
            pno = self.page_count
            self.page_count += 1
        need = (pno >> 3) + 1
        if need > self.fresh_bytes:
            size = max(need * 2, <size_t>4096)
            bits = <uint8_t *>realloc(self.fresh, size)
            if bits == NULL:
                raise MemoryError()
            memset(bits + self.fresh_bytes, 0, size - self.fresh_bytes)
            self.fresh, self.fresh_bytes = bits, size
        self.fresh[pno >> 3] |= 1 << (pno & 7)
        self.allocs += 1
        # A clean copy a snapshot read before the page was freed: stale now.
        self.drop_frame(pno)
        return pno

    cdef int free_page(self, uint32_t pno) except -1:
        if self.is_fresh(pno):
            # Referenced by no checkpoint and no snapshot: reusable at once, and not taken after all.
            self.fresh[pno >> 3] &= ~(1 << (pno & 7))
            heap_push(&self.reusable, pno)
            self.allocs -= 1
            self.drop_frame(pno)
        else:
            vec_push(&self.pending, pno)
        return 0

    cdef int writable(self, int32_t f) except -1:
        """Copy-on-write: a page of the last checkpoint moves to a fresh page. 1 if it moved."""
        cdef uint32_t old = self.frame_pno[f], pno
        self.frame_flags[f] |= FRAME_DIRTY
        if self.is_fresh(old):
            return 0
        pno = self.alloc()
        self.map_remove(old)
        self.frame_pno[f] = pno
        self.map_insert(pno, f)
        vec_push(&self.pending, old)
        return 1

    # --- overflow chains -------------------------------------------------------------------

    cdef uint32_t write_chain(self, const uint8_t *v, size_t n) except 0:
        cdef uint32_t pnos[CHAIN_PAGES_MAX]
        cdef int npages = <int>((n + OVERFLOW_BYTES - 1) // OVERFLOW_BYTES), j, made = 0
        cdef size_t chunk
        cdef uint8_t *p = self.io_buf
        try:
            for j in range(npages):
                pnos[j] = self.alloc()
                made += 1
            for j in range(npages):
                chunk = min(<size_t>OVERFLOW_BYTES, n - <size_t>j * OVERFLOW_BYTES)
                memset(p, 0, PAGE)
                p[4] = TYPE_OVERFLOW
                wr32(p + 12, pnos[j + 1] if j + 1 < npages else 0)
                wr32(p + 20, <uint32_t>chunk)
                memcpy(p + HEADER_BYTES, v + <size_t>j * OVERFLOW_BYTES, chunk)
                self.write_page(p, pnos[j])
        except BaseException:
            for j in range(made):
                self.free_page(pnos[j])
            raise
        return pnos[0]

    cdef object read_chain(self, uint32_t first, size_t n):
        cdef object value = PyBytes_FromStringAndSize(NULL, n)
        cdef uint8_t *dst = <uint8_t *>PyBytes_AS_STRING(value)
        cdef size_t got = 0, used
        cdef uint32_t pno = first
        cdef int pages = 0
        while pno and pages <= CHAIN_PAGES_MAX:
            self.read_page(self.io_buf, pno, TYPE_OVERFLOW, TYPE_OVERFLOW)
            used = rd32(self.io_buf + 20)
            if used > OVERFLOW_BYTES or got + used > n:
                break
            memcpy(dst + got, self.io_buf + HEADER_BYTES, used)
            got += used
            pages += 1
            pno = rd32(self.io_buf + 12)
        if pno or got != n:
            raise CorruptionError(f"overflow chain at page {first} does not hold {n} bytes", self.path,
                                  <uint64_t>first * PAGE)
        return value

    cdef int free_chain(self, uint32_t first) except -1:
        cdef uint32_t pno = first, next_pno
        while pno:
            self.read_page(self.io_buf, pno, TYPE_OVERFLOW, TYPE_OVERFLOW)
            next_pno = rd32(self.io_buf + 12)
            self.free_page(pno)
            pno = next_pno
        return 0

    cdef object cell_value(self, const uint8_t *p, uint32_t off):
        cdef uint32_t kn = rd16(p + off), vn = rd32(p + off + 4)
        if rd16(p + off + 2) & FLAG_OVERFLOW:
            return self.read_chain(rd32(p + off + CELL_HEADER + kn), vn)
        return PyBytes_FromStringAndSize(<const char *>p + off + CELL_HEADER + kn, vn)

    # --- reads -----------------------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.fd < 0:
            raise ClosedError(f"the B-tree {self.path} is closed")
        return 0

    @property
    def checkpoint_lsn(self):
        return self.ckpt_lsn

    def get(self, bytes key not None):
        """The value stored under key, or None."""
        self._check_open()
        cdef const uint8_t *k = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef size_t kn = PyBytes_GET_SIZE(key)
        cdef uint32_t pno = self.root
        cdef int32_t f
        cdef uint8_t *p
        cdef int i, levels = 0
        if not pno:
            return None
        while True:
            f = self.fetch(pno)
            p = self.page(f)
            if p[4] == TYPE_LEAF:
                break
            levels += 1
            if levels >= HEIGHT_MAX:
                raise CorruptionError(f"B-tree deeper than {HEIGHT_MAX}", self.path, <uint64_t>pno * PAGE)
            pno = child_at(p, upper_bound(p, k, kn))
        i = lower_bound(p, k, kn)
        if not key_is(p, i, k, kn):
            return None
        return self.cell_value(p, slot_of(p, i))

    def scan(self, start=None, end=None, *, reverse=False, limit=None):
        """Iterator of (key, value) with start <= key < end, in key order or reversed."""
        self._check_open()
        return range_cursor(self._live_batch, start, end, reverse, limit)

    def _live_batch(self, start, inclusive, end, reverse, n):
        return self._scan_batch(self.root, start, inclusive, end, reverse, n)

    def _scan_batch(self, uint32_t root, start, bint inclusive, end, bint reverse, Py_ssize_t n):
        """Up to n items of [start, end) from the tree at `root`, and whether the range is done."""
        self._check_open()
        cdef list out = []
        cdef int32_t stack[HEIGHT_MAX]  # pinned frames, root first, the leaf last
        cdef int index[HEIGHT_MAX]  # child index taken at each internal level
        cdef int sd = 0, ci, i
        cdef int32_t f
        cdef uint8_t *p
        cdef const uint8_t *k
        cdef size_t kn
        cdef const uint8_t *s = NULL
        cdef const uint8_t *e = NULL
        cdef size_t sn = 0, en = 0
        cdef bint has_start = start is not None, has_end = end is not None
        cdef bint bounded
        if not root:
            return out, True
        if has_start:
            s, sn = <const uint8_t *>PyBytes_AS_STRING(start), PyBytes_GET_SIZE(start)
        if has_end:
            e, en = <const uint8_t *>PyBytes_AS_STRING(end), PyBytes_GET_SIZE(end)
        try:
            f = self.fetch(root)
            bounded = True  # the first descent follows the bounds, later ones the subtree's edge
            while True:
                # Down from frame f to a leaf, pinning every level.
                while True:
                    self.frame_pins[f] += 1
                    stack[sd] = f
                    sd += 1
                    p = self.page(f)
                    if p[4] == TYPE_LEAF:
                        break
                    if sd >= HEIGHT_MAX:
                        raise CorruptionError(f"B-tree deeper than {HEIGHT_MAX}", self.path, <uint64_t>root * PAGE)
                    if not bounded:
                        ci = count_of(p) if reverse else 0
                    elif reverse:
                        ci = lower_bound(p, e, en) if has_end else count_of(p)
                    else:
                        ci = upper_bound(p, s, sn) if has_start else 0
                    index[sd - 1] = ci
                    f = self.fetch(child_at(p, ci))
                if not bounded:
                    i = count_of(p) - 1 if reverse else 0
                elif reverse:
                    i = (lower_bound(p, e, en) if has_end else count_of(p)) - 1
                elif not has_start:
                    i = 0
                else:
                    i = lower_bound(p, s, sn) if inclusive else upper_bound(p, s, sn)
                bounded = False
                while len(out) < n:
                    p = self.page(stack[sd - 1])
                    if 0 <= i < count_of(p):
                        k = key_at(p, i, &kn)
                        if reverse and has_start and keycmp(k, kn, s, sn) < 0:
                            return out, True
                        if not reverse and has_end and keycmp(k, kn, e, en) >= 0:
                            return out, True
                        out.append((PyBytes_FromStringAndSize(<const char *>k, kn), self.cell_value(p, slot_of(p, i))))
                        i += -1 if reverse else 1
                        continue
                    # The leaf is done: climb to the nearest ancestor with a sibling subtree, go down its edge.
                    sd -= 1
                    self.frame_pins[stack[sd]] -= 1
                    while sd and (index[sd - 1] == 0 if reverse else index[sd - 1] >= count_of(self.page(stack[sd - 1]))):
                        sd -= 1
                        self.frame_pins[stack[sd]] -= 1
                    if not sd:
                        return out, True
                    index[sd - 1] += -1 if reverse else 1
                    f = self.fetch(child_at(self.page(stack[sd - 1]), index[sd - 1]))
                    break
                else:
                    return out, False
        finally:
            while sd:
                sd -= 1
                self.frame_pins[stack[sd]] -= 1

    def snapshot(self):
        """Context manager: iterator over the last checkpoint's items, stable while open."""
        self._check_open()
        return snapshot_cursor(self)

    def _snapshot_open(self):
        gen = self.gen
        self.snapshots[gen] = self.snapshots.get(gen, 0) + 1
        return gen, self.durable_root

    def _snapshot_close(self, gen):
        self.snapshots[gen] -= 1
        if not self.snapshots[gen]:
            del self.snapshots[gen]
        oldest = min(self.snapshots, default=None)
        while self.deferred and (oldest is None or self.deferred[0][0] <= oldest):
            for pno in self.deferred.pop(0)[1]:
                heap_push(&self.reusable, pno)

    def stats(self):
        self._check_open()
        cdef uint32_t f, used = 0, dirty = 0
        for f in range(self.nframes):
            if self.frame_pno[f]:
                used += 1
                dirty += self.frame_flags[f] & FRAME_DIRTY
        return {
            "backend": self.backend,
            "page_bytes": PAGE,
            "pages": self.page_count,
            "free_pages": self.reusable.len + self.pending.len + self.ck_pending.len
                          + sum(len(p) for _, p in self.deferred),
            "items": self.items,
            "height": self.height,
            "generation": self.gen,
            "checkpoint_lsn": self.ckpt_lsn,
            "cache_bytes": used * PAGE,
            "cache_bytes_max": self.nframes * PAGE,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_evictions": self.evictions,
            "dirty_pages": dirty,
            "snapshots": sum(self.snapshots.values()),
            "punched_pages": self.punched,
        }

    # --- writes ----------------------------------------------------------------------------

    def put(self, bytes key not None, bytes value not None):
        self._check_open()
        check_entry(key, value)
        self.put_one(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                     <const uint8_t *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))

    def delete(self, bytes key not None):
        """Remove key; True if it was there."""
        self._check_open()
        check_entry(key, None)
        return self.delete_one(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) == 1

    def write_batch(self, ops):
        """Apply [(key, value or None to delete)], refusing the whole batch if one entry is bad."""
        self._check_open()
        cdef list batch = list(ops)
        for key, value in batch:
            check_entry(key, value)
        for key, value in batch:
            if value is None:
                self.delete_one(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            else:
                self.put_one(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                             <const uint8_t *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))

    cdef int descend(self, const uint8_t *k, size_t kn) except -1:
        """Pin the path from the root to the leaf for k into path_frame / path_index."""
        cdef uint32_t pno = self.root
        cdef int32_t f
        cdef uint8_t *p
        cdef int ci
        self.depth = 0
        while True:
            if self.depth >= HEIGHT_MAX:
                raise CorruptionError(f"B-tree deeper than {HEIGHT_MAX}", self.path, <uint64_t>pno * PAGE)
            f = self.fetch(pno)
            self.frame_pins[f] += 1
            self.path_frame[self.depth] = f
            self.depth += 1
            p = self.page(f)
            if p[4] == TYPE_LEAF:
                self.path_index[self.depth - 1] = -1
                return 0
            ci = upper_bound(p, k, kn)
            self.path_index[self.depth - 1] = ci
            pno = child_at(p, ci)

    cdef void unpin_path(self) noexcept:
        while self.depth:
            self.depth -= 1
            self.frame_pins[self.path_frame[self.depth]] -= 1

    cdef int cow_path(self) except -1:
        cdef int d
        for d in range(self.depth):
            if self.writable(self.path_frame[d]):
                if d == 0:
                    self.root = self.frame_pno[self.path_frame[0]]
                else:
                    set_child(self.page(self.path_frame[d - 1]), self.path_index[d - 1],
                              self.frame_pno[self.path_frame[d]])
        return 0

    cdef size_t build_leaf_cell(self, const uint8_t *k, size_t kn, const uint8_t *v, size_t vn) except 0:
        """Encode the leaf cell for (k, v) into cell_buf, writing an overflow chain if needed."""
        cdef uint8_t *c = self.cell_buf
        wr16(c, <uint16_t>kn)
        wr32(c + 4, <uint32_t>vn)
        memcpy(c + CELL_HEADER, k, kn)
        if SLOT_BYTES + CELL_HEADER + kn + vn <= CELL_BYTES_MAX:
            wr16(c + 2, 0)
            memcpy(c + CELL_HEADER + kn, v, vn)
            return CELL_HEADER + kn + vn
        first = self.write_chain(v, vn)
        wr16(c + 2, FLAG_OVERFLOW)
        wr32(c + CELL_HEADER + kn, first)
        return CELL_HEADER + kn + 4

    cdef int put_one(self, const uint8_t *k, size_t kn, const uint8_t *v, size_t vn) except -1:
        cdef size_t cs = self.build_leaf_cell(k, kn, v, vn)
        cdef int32_t f
        cdef uint8_t *p
        cdef int i
        if not self.root:
            self.root = self.frame_pno[self.new_page(TYPE_LEAF)]
            self.height = 1
        try:
            self.descend(k, kn)
            p = self.page(self.path_frame[self.depth - 1])
            i = lower_bound(p, k, kn)
            self.cow_path()
            if key_is(p, i, k, kn):
                self.remove_leaf_cell(p, i)
            else:
                self.items += 1
            self.insert_at(self.depth - 1, i, cs)
        finally:
            self.unpin_path()
        return 0

    cdef int remove_leaf_cell(self, uint8_t *p, int i) except -1:
        cdef uint32_t off = slot_of(p, i), first = 0
        if rd16(p + off + 2) & FLAG_OVERFLOW:
            first = rd32(p + off + CELL_HEADER + rd16(p + off))
        remove_space(p, i)
        if first:
            self.free_chain(first)
        return 0

    cdef int insert_at(self, int d, int i, size_t cs) except -1:
        """Insert cell_buf (cs bytes) at slot i of the page at path level d, splitting upwards."""
        cdef uint8_t *p
        cdef uint32_t off, right
        cdef int32_t rf
        while True:
            p = self.page(self.path_frame[d])
            if free_bytes(p) >= <int>(cs + SLOT_BYTES):
                off = insert_space(p, i, <uint32_t>cs)
                memcpy(p + off, self.cell_buf, cs)
                return 0
            right = self.split(d, i, cs)
            if d == 0:
                rf = self.new_page(TYPE_INTERNAL)
                p = self.page(rf)
                wr32(p + 12, self.frame_pno[self.path_frame[0]])
                off = append_space(p, CELL_HEADER + self.sep_len)
                write_internal_cell(p + off, self.sep_buf, self.sep_len, right)
                self.root = self.frame_pno[rf]
                self.height += 1
                return 0
            write_internal_cell(self.cell_buf, self.sep_buf, self.sep_len, right)
            cs = CELL_HEADER + self.sep_len
            i = self.path_index[d - 1]
            d -= 1

    cdef uint32_t split(self, int d, int i, size_t cs) except 0:
        """Split the page at level d around a new cell (cell_buf) at slot i; returns the right page.

        Leaves the separator for the parent in sep_buf. The split point is the first cell
        at which the left page holds half of the bytes, as in the reference.
        """
        cdef uint8_t *p = self.page(self.path_frame[d])
        cdef uint8_t *src = self.scratch
        cdef uint8_t *rp
        cdef int n, m, j, jj, s
        cdef uint32_t off, total = 0, acc = 0, rpno
        cdef int32_t rf
        cdef size_t an, bn
        cdef const uint8_t *a
        cdef const uint8_t *b
        cdef bint leaf = p[4] == TYPE_LEAF
        memcpy(src, p, PAGE)
        n = count_of(src)
        m = n + 1
        for j in range(m):
            if j == i:
                self.split_cell[j] = self.cell_buf
                self.split_size[j] = <uint32_t>cs
            else:
                jj = j if j < i else j - 1
                off = slot_of(src, jj)
                self.split_cell[j] = src + off
                self.split_size[j] = cell_top(src, jj) - off
            total += self.split_size[j] + SLOT_BYTES
        s = 0
        while 2 * acc < total:
            acc += self.split_size[s] + SLOT_BYTES
            s += 1
        rf = self.new_page(TYPE_LEAF if leaf else TYPE_INTERNAL)
        self.frame_pins[rf] += 1
        rp = self.page(rf)
        memset(p + HEADER_BYTES, 0, PAGE - HEADER_BYTES)
        wr16(p + 6, 0)
        wr16(p + 16, PAGE)
        if leaf:
            assert 0 < s < m
            a, an = self.split_cell[s - 1] + CELL_HEADER, rd16(self.split_cell[s - 1])
            b, bn = self.split_cell[s] + CELL_HEADER, rd16(self.split_cell[s])
            self.sep_len = shortest_separator(a, an, b, bn)
            memcpy(self.sep_buf, b, self.sep_len)
            for j in range(s):
                memcpy(p + append_space(p, self.split_size[j]), self.split_cell[j], self.split_size[j])
        else:
            self.sep_len = rd16(self.split_cell[s - 1])
            memcpy(self.sep_buf, self.split_cell[s - 1] + CELL_HEADER, self.sep_len)
            wr32(rp + 12, rd32(self.split_cell[s - 1] + 4))
            for j in range(s - 1):
                memcpy(p + append_space(p, self.split_size[j]), self.split_cell[j], self.split_size[j])
        for j in range(s, m):
            memcpy(rp + append_space(rp, self.split_size[j]), self.split_cell[j], self.split_size[j])
        rpno = self.frame_pno[rf]
        self.frame_pins[rf] -= 1
        return rpno

    cdef int delete_one(self, const uint8_t *k, size_t kn) except -1:
        cdef uint8_t *p
        cdef int i
        if not self.root:
            return 0
        try:
            self.descend(k, kn)
            p = self.page(self.path_frame[self.depth - 1])
            i = lower_bound(p, k, kn)
            if not key_is(p, i, k, kn):
                return 0
            self.cow_path()
            self.remove_leaf_cell(p, i)
            self.items -= 1
            if not count_of(p):
                self.remove_empty()
            return 1
        finally:
            self.unpin_path()

    cdef int remove_empty(self) except -1:
        """Drop an empty leaf, and ancestors left without children; then shorten the root.

        Pages are removed when empty and never merged with siblings (as PostgreSQL's
        nbtree does): deletes stay local, and freed pages are reused by later inserts.
        """
        cdef int d = self.depth - 1, ci
        cdef uint8_t *pp
        cdef uint32_t child
        while True:
            self.free_page(self.frame_pno[self.path_frame[d]])
            if d == 0:
                self.root = 0
                self.height = 0
                return 0
            pp = self.page(self.path_frame[d - 1])
            ci = self.path_index[d - 1]
            if not count_of(pp):
                d -= 1
                continue
            if ci == 0:
                wr32(pp + 12, child_at(pp, 1))
                remove_space(pp, 0)
            else:
                remove_space(pp, ci - 1)
            break
        while True:
            pp = self.page(self.fetch(self.root))
            if pp[4] != TYPE_INTERNAL or count_of(pp):
                return 0
            child = rd32(pp + 12)
            self.free_page(self.root)
            self.root = child
            self.height -= 1

    def bulk_load(self, items):
        """Fill an empty tree from items sorted by key, pages packed left to right."""
        self._check_open()
        if self.root:
            raise ValueError("bulk_load fills an empty tree; this one has items")
        cdef int32_t levels[HEIGHT_MAX]  # the page being filled at each level, leaf first; pinned
        cdef int nlevels = 0, j
        cdef list created = []  # pages written so far, freed again if the input is refused
        cdef list chains = []
        cdef object prev = None
        cdef uint64_t count = 0
        cdef size_t cs, kn
        cdef const uint8_t *k
        cdef uint8_t *p
        cdef int32_t f
        try:
            for key, value in items:
                check_entry(key, value)
                if value is None:
                    raise TypeError("values are bytes, not NoneType")
                k, kn = <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)
                if prev is not None and keycmp(k, kn, <const uint8_t *>PyBytes_AS_STRING(prev),
                                               PyBytes_GET_SIZE(prev)) <= 0:
                    raise ValueError("bulk_load input must be sorted by key, strictly ascending")
                cs = self.build_leaf_cell(k, kn, <const uint8_t *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
                if rd16(self.cell_buf + 2) & FLAG_OVERFLOW:
                    chains.append(rd32(self.cell_buf + CELL_HEADER + kn))
                if not nlevels or free_bytes(self.page(levels[0])) < <int>(cs + SLOT_BYTES):
                    f = self.new_page(TYPE_LEAF)
                    self.frame_pins[f] += 1
                    created.append(self.frame_pno[f])
                    if nlevels:
                        self.sep_len = shortest_separator(<const uint8_t *>PyBytes_AS_STRING(prev),
                                                          PyBytes_GET_SIZE(prev), k, kn)
                        memcpy(self.sep_buf, k, self.sep_len)
                        self.bulk_push(levels, &nlevels, 1, self.frame_pno[f], created)
                        self.frame_pins[levels[0]] -= 1
                    else:
                        nlevels = 1
                    levels[0] = f
                p = self.page(levels[0])
                memcpy(p + append_space(p, <uint32_t>cs), self.cell_buf, cs)
                prev = key
                count += 1
        except BaseException:
            for j in range(nlevels):
                self.frame_pins[levels[j]] -= 1
            for pno in created:
                self.free_page(pno)
            for first in chains:
                self.free_chain(first)
            raise
        for j in range(nlevels):
            self.frame_pins[levels[j]] -= 1
        if nlevels:
            self.root = self.frame_pno[levels[nlevels - 1]]
            self.height = nlevels
            self.items = count

    cdef int bulk_push(self, int32_t *levels, int *nlevels, int d, uint32_t child, list created) except -1:
        """Append (sep_buf, child) to the open page at level d, starting a new page when full."""
        cdef int32_t f
        cdef uint8_t *p
        if d == nlevels[0]:
            if d >= HEIGHT_MAX:
                raise StorageError(f"bulk load deeper than {HEIGHT_MAX} levels")
            f = self.new_page(TYPE_INTERNAL)
            self.frame_pins[f] += 1
            created.append(self.frame_pno[f])
            wr32(self.page(f) + 12, self.frame_pno[levels[d - 1]])
            levels[d] = f
            nlevels[0] += 1
        p = self.page(levels[d])
        if free_bytes(p) < <int>(CELL_HEADER + self.sep_len + SLOT_BYTES):
            f = self.new_page(TYPE_INTERNAL)
            self.frame_pins[f] += 1
            created.append(self.frame_pno[f])
            wr32(self.page(f) + 12, child)
            self.bulk_push(levels, nlevels, d + 1, self.frame_pno[f], created)
            self.frame_pins[levels[d]] -= 1
            levels[d] = f
            return 0
        write_internal_cell(p + append_space(p, CELL_HEADER + self.sep_len), self.sep_buf, self.sep_len, child)
        return 0

    # --- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, uint64_t lsn):
        """Make the current state durable as of lsn; a crash after this returns reopens it."""
        self.checkpoint_begin(lsn)
        self.sync_data()
        self.checkpoint_seal()
        self.sync_data()
        self.checkpoint_end()

    def fileno(self):
        self._check_open()
        return self.fd

    def sync_data(self):
        """fdatasync the file. It releases the GIL and touches nothing else of the tree, so it
        may run in another thread while this one goes on using the tree (not closing it)."""
        self._check_open()
        self.sync()

    def write_dirty(self, size_t pages_max):
        """Write up to pages_max changed pages to disk, as eviction does (they are fresh: no
        durable checkpoint uses them), keeping them cached and clean; returns how many. Pages
        written ahead are pages the next checkpoint_begin need not write while nothing else runs."""
        self._check_open()
        cdef uint32_t f
        cdef size_t n = 0
        for f in range(self.nframes):
            if n >= pages_max:
                break
            if self.frame_pno[f] and self.frame_flags[f] & FRAME_DIRTY:
                self.write_page(self.page(f), self.frame_pno[f])
                self.frame_flags[f] &= ~FRAME_DIRTY
                n += 1
        return n

    def checkpoint_begin(self, uint64_t lsn):
        """Write the current state, as of lsn, to pages no durable checkpoint uses, and its free
        list; the tree then goes on taking changes (copying those pages). After sync_data,
        checkpoint_seal writes its meta page; after sync_data again, checkpoint_end makes it the
        checkpoint a reopen finds. A crash or close before then reopens the previous one."""
        self._check_open()
        if self.ck_state:
            raise ValueError("a checkpoint is already under way")
        if lsn < self.ckpt_lsn:
            raise ValueError(f"checkpoint lsn {lsn} is below the last checkpoint's {self.ckpt_lsn}")
        cdef uint32_t f, ndirty = 0, j, entries
        cdef uint64_t *dirty = <uint64_t *>malloc(self.nframes * sizeof(uint64_t) + 8)
        cdef U32Vec pending, fl, free_set
        cdef size_t held = 0, pos
        cdef uint8_t *p = self.io_buf
        if dirty == NULL:
            raise MemoryError()
        memset(&pending, 0, sizeof(U32Vec))
        memset(&fl, 0, sizeof(U32Vec))
        memset(&free_set, 0, sizeof(U32Vec))
        try:
            for f in range(self.nframes):
                if self.frame_pno[f] and self.frame_flags[f] & FRAME_DIRTY:
                    dirty[ndirty] = (<uint64_t>self.frame_pno[f] << 32) | f
                    ndirty += 1
            qsort(dirty, ndirty, sizeof(uint64_t), cmp_u64)
            for j in range(ndirty):
                f = <uint32_t>(dirty[j] & 0xFFFFFFFF)
                self.write_page(self.page(f), self.frame_pno[f])
                self.frame_flags[f] &= ~FRAME_DIRTY
            # The old free list pages are referenced by the old meta only: free in the new state.
            for j in range(self.pending.len):
                vec_push(&pending, self.pending.items[j])
            for j in range(self.freelist_pages.len):
                vec_push(&pending, self.freelist_pages.items[j])
            for _, pages in self.deferred:
                held += len(pages)
            try:
                while fl.len * FREELIST_ENTRIES < self.reusable.len + pending.len + held:
                    vec_push(&fl, self.alloc())
                for j in range(self.reusable.len):
                    vec_push(&free_set, self.reusable.items[j])
                for j in range(pending.len):
                    vec_push(&free_set, pending.items[j])
                for _, pages in self.deferred:
                    for pno in pages:
                        vec_push(&free_set, pno)
                if free_set.len:
                    qsort(free_set.items, free_set.len, sizeof(uint32_t), cmp_u32)
                for j in range(fl.len):
                    pos = <size_t>j * FREELIST_ENTRIES
                    entries = <uint32_t>min(<size_t>FREELIST_ENTRIES, free_set.len - pos)
                    memset(p, 0, PAGE)
                    p[4] = TYPE_FREELIST
                    wr16(p + 6, <uint16_t>entries)
                    wr32(p + 12, fl.items[j + 1] if j + 1 < fl.len else 0)
                    memcpy(p + HEADER_BYTES, free_set.items + pos, entries * sizeof(uint32_t))
                    self.write_page(p, fl.items[j])
            except BaseException:
                for j in range(fl.len):
                    self.free_page(fl.items[j])
                raise
            self.ck_gen, self.ck_lsn, self.ck_root = self.gen + 1, lsn, self.root
            self.fill_meta(self.ck_meta, <uint32_t>(self.ck_gen % 2), self.ck_gen, lsn, fl.items[0] if fl.len else 0,
                           <uint32_t>free_set.len)
            # Every page of the state written belongs to the checkpoint now: a change copies it,
            # and a page freed from here on waits for the checkpoint after this one.
            if self.fresh_bytes:
                memset(self.fresh, 0, self.fresh_bytes)
            self.pending.len = 0
            self.ck_pending = pending
            self.ck_fl = fl
            self.ck_taken, self.allocs = self.allocs, 0
            pending.items, pending.len, pending.cap = NULL, 0, 0
            fl.items, fl.len, fl.cap = NULL, 0, 0
            self.ck_state = 1
        finally:
            free(dirty)
            vec_free(&pending)
            vec_free(&fl)
            vec_free(&free_set)

    def checkpoint_seal(self):
        """Write the meta page of the checkpoint begun, once its pages are durable (sync_data)."""
        self._check_open()
        if self.ck_state != 1:
            raise ValueError("no checkpoint was begun, or it was sealed already")
        self._pwrite_all(self.ck_meta, (self.ck_gen % 2) * PAGE)
        self.ck_state = 2

    def checkpoint_end(self):
        """The sealed checkpoint's meta page is durable (sync_data): it is the last checkpoint."""
        self._check_open()
        if self.ck_state != 2:
            raise ValueError("no checkpoint was sealed")
        cdef uint32_t j
        self.gen, self.ckpt_lsn, self.durable_root = self.ck_gen, self.ck_lsn, self.ck_root
        vec_free(&self.freelist_pages)
        self.freelist_pages = self.ck_fl
        self.ck_fl.items, self.ck_fl.len, self.ck_fl.cap = NULL, 0, 0
        if self.snapshots:
            self.deferred.append((self.gen, array.array("I", [self.ck_pending.items[j]
                                                              for j in range(self.ck_pending.len)])))
        else:
            if self.ck_pending.len >= self.ck_taken + PUNCH_PAGES_MIN:
                self.punch(&self.ck_pending, self.ck_taken)
            for j in range(self.ck_pending.len):
                heap_push(&self.reusable, self.ck_pending.items[j])
        vec_free(&self.ck_pending)
        self.ck_state = 0

    cdef void punch(self, U32Vec *pages, size_t keep) noexcept:
        """Give the file system back the disk blocks of ``pages`` (free pages) but the ``keep``
        lowest, which the next checkpoints reuse first. A free page is written before it is
        read again, so its hole (reading as zeros) loses nothing, and the file keeps its size.
        This is for a checkpoint that freed far more than was taken (many deletes, such as a
        partition's split): a steady stream of updates frees about what it takes, and making
        holes only for the same pages to be written again would cost the disk twice."""
        cdef size_t i, j
        if not self.can_punch:
            return
        qsort(pages.items, pages.len, sizeof(uint32_t), cmp_u32)
        i = keep
        while i < pages.len:
            j = i + 1
            while j < pages.len and pages.items[j] == pages.items[j - 1] + 1:
                j += 1
            if fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, <off_t>pages.items[i] * PAGE,
                         <off_t>(j - i) * PAGE) != 0:
                self.can_punch = False  # not this file system (a failure here is only space not given back)
                return
            self.punched += j - i
            i = j

    def close(self):
        """Release the file. Changes since the last checkpoint are dropped, as in a crash."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._release_memory()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
