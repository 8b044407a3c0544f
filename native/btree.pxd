# The paged B+tree, native side: format numbers and C types of dynstore.storage._btree.
#
# The file format and the copy-on-write rules are described in
# dynstore/storage/btree.py; dynstore/storage/btree_ref.py is the same tree in
# Python, step for step. btree.pyx cimports this header by name (the extension is
# built as dynstore.storage._btree, so Cython would not pair the two files on its
# own); the tree's fields are declared, one comment each, at the top of its class.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "crc32c.h":
    uint32_t ds_crc32c(uint32_t crc, const void *p, size_t n) nogil


cdef enum:
    PAGE = 16384                   # bytes per page (dynstore.limits.BTREE_PAGE_BYTES)
    HEADER_BYTES = 32              # page header, see btree.py
    USABLE = PAGE - HEADER_BYTES   # slot and cell bytes of a leaf or internal page
    CELL_BYTES_MAX = USABLE // 3   # a cell with its slot: three always fit, so splits work
    CELL_HEADER = 8                # leaf: klen u16, flags u16, vlen u32; internal: klen u16, 0, child u32
    SLOT_BYTES = 2                 # u16 cell offset
    OVERFLOW_BYTES = USABLE        # value bytes per overflow page
    FREELIST_ENTRIES = USABLE // 4 # u32 page numbers per free-list page
    FLAG_OVERFLOW = 1              # leaf cell: value in an overflow chain
    FORMAT_VERSION = 1
    KEY_BYTES_MAX = 4096           # dynstore.limits.BTREE_KEY_BYTES_MAX
    VALUE_BYTES_MAX = 524288       # dynstore.limits.BTREE_VALUE_BYTES_MAX
    CHAIN_PAGES_MAX = 33           # ceil(VALUE_BYTES_MAX / OVERFLOW_BYTES): pages of the largest value
    HEIGHT_MAX = 40                # dynstore.limits.BTREE_HEIGHT_MAX
    CELLS_MAX = 1636               # USABLE / (SLOT_BYTES + CELL_HEADER) + 1: a full page plus the new cell
    PUNCH_PAGES_MIN = 64           # a checkpoint frees this many pages more than were taken: holes for them

    TYPE_META = 1
    TYPE_LEAF = 2
    TYPE_INTERNAL = 3
    TYPE_OVERFLOW = 4
    TYPE_FREELIST = 5

    FRAME_DIRTY = 1                # frame differs from its page on disk (always a fresh page)
    FRAME_REF = 2                  # clock bit: used since the hand last passed


cdef struct U32Vec:
    # A growable array of page numbers (also used as a binary min-heap).
    uint32_t *items
    size_t len
    size_t cap
