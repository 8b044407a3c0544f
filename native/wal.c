/*
 * wal.c — the write-ahead log: segment files, group commit, recovery.
 *
 * On-disk format (all integers little-endian; dynstore/storage/wal_ref.py writes the same)
 * ---------------------------------------------------------------------------------------
 * A log is a directory of segment files named "<first_lsn as 20 decimal digits>.wal".
 * Each segment is preallocated whole with posix_fallocate when it is created, so a full
 * disk shows there and never in the middle of a record, and zeros are written a megabyte
 * ahead of the records (zero_ahead). A segment starts with 64 bytes:
 *
 *   offset size field
 *   0      8    magic          "DSWALSEG"
 *   8      4    version        1
 *   12     4    flags          0
 *   16     8    first_lsn      LSN of the first record this segment holds (or will hold)
 *   24     8    segment_bytes  size of the file; a record too large for the configured
 *                              size gets a segment of its own, rounded up to 4 KiB
 *   32     4    header_crc     crc32c of bytes 0..32
 *   36     28   zero
 *
 * Records follow back to back from offset 64, a 28-byte header then the payload:
 *
 *   0      4    length         payload bytes
 *   4      4    crc            crc32c of bytes 0..4, then 8..28, then the payload
 *   8      8    lsn            one more than the previous record's
 *   16     8    term           Paxos term that wrote the record
 *   24     4    type           record type, chosen by the caller
 *   28     length payload
 *
 * A segment ends where the next record does not fit; that record starts the next segment.
 * Bytes after the last record are zero (preallocation; truncation and recovery zero what
 * they cut). New segments are written as "<name>.tmp" and renamed once durable; a lone
 * valid ".tmp" with no segment beside it is an interrupted reset and is completed.
 *
 * Group commit
 * ------------
 * Appenders encode records (checksum computed over the caller's bytes) into a pending
 * buffer under a mutex and return at once. One flusher thread swaps that buffer out,
 * re-verifies every record in it (paired with the check after every read), and makes it
 * durable with one write and one fdatasync per segment touched: pwrite + fdatasync, or,
 * when asked for (DS_WAL_SYNC_URING), a linked io_uring write -> fsync(DATASYNC) pair.
 * pwrite + fdatasync is the default because the flusher waits for its batch either way,
 * and io_uring hands every fsync to one of its kernel worker threads (io-wq): one more
 * wake-up per batch, which costs a durable append 100-150 us at the median on a 2-core
 * machine with ext4, and 15-45 % of the rate of a single appender. io_uring is used through
 * the raw system calls (io_uring_setup/io_uring_enter and the mmap'ed rings), so the build
 * needs only the kernel headers. Each advance of durable_lsn is signalled on an eventfd and a
 * condition variable.
 *
 * Faults survived
 * ---------------
 * - Crash at any moment: recovery stops at the first invalid record. It is a torn tail,
 *   cut off and zeroed, when no valid record follows it and one of its 512-byte sectors is
 *   still zero (an interrupted write on a preallocated file). Otherwise — a completely
 *   written record failing its checksum, or a bad record followed by a valid one — it is
 *   corruption: DS_WAL_ECORRUPT naming file and offset, because shortening the log could
 *   drop acknowledged writes.
 * - ENOSPC or EIO while flushing: the unflushed records fail, later appends fail, and the
 *   log stays failed until reopened ("fail-stop"): after a failed fdatasync the kernel may
 *   have dropped the dirty pages, so retrying could call durable what is not on disk.
 */
#define _GNU_SOURCE
#include "wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the WAL format is little-endian and this code stores integers with memcpy"
#endif

#define SEG_MAGIC "DSWALSEG"
#define SEG_VERSION 1u
#define SEG_HDR_BYTES 64u     /* records start here */
#define SEG_HDR_CRC_AT 32u    /* the header checksum covers the bytes before it */
#define SEG_ALIGN_BYTES 4096u /* oversized segments are whole pages */
#define SEG_SUFFIX ".wal"
#define SEG_TMP_SUFFIX ".wal.tmp"
#define REC_HDR_BYTES 28u
#define SECTOR_BYTES 512u /* a disk writes whole sectors; a torn write leaves some zero */
#define URING_ENTRIES 8u  /* one write and one fsync in flight, with room to spare */
#define ZERO_CHUNK_BYTES (1u << 20)
/* Waiters sleep on one of these by LSN, so a flush wakes only the threads it made durable
 * instead of every waiter (64 waiting threads on two cores otherwise spend the CPU the
 * next batch needs). */
#define DURABLE_CVS 64u

#define DS_CHECK(cond)                                                                     \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "wal.c:%d: invariant failed: %s\n", __LINE__, #cond);          \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

enum { IO_FDATASYNC = 0, IO_URING = 1 };

typedef struct seg {
    char *path;         /* file name in the log directory, malloc'ed */
    uint64_t first_lsn; /* LSN of its first record */
    uint64_t size;      /* preallocated file size */
    uint64_t end;       /* offset just past its last record */
    uint64_t zeroed;    /* zeros (or records) are written up to here: no extents left to convert */
    int fd;             /* open read-write */
    uint8_t *map;       /* whole file mapped read-only, for recovery and reads */
} seg;

typedef struct buf {
    uint8_t *data; /* encoded records */
    size_t len;    /* bytes used */
    size_t cap;    /* bytes allocated */
} buf;

typedef struct uring {
    int fd;                      /* io_uring instance, -1 when unused */
    unsigned *sq_tail, *sq_mask; /* submission ring indices (we are the only producer) */
    unsigned *sq_array;          /* submission ring slots -> sqe index */
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;   /* submission entries */
    struct io_uring_cqe *cqes;   /* completion entries */
    void *sq_ring, *cq_ring;     /* mappings, cq_ring == sq_ring with IORING_FEAT_SINGLE_MMAP */
    size_t sq_ring_bytes, cq_ring_bytes, sqes_bytes;
} uring;

struct ds_wal {
    char *dir;                   /* log directory */
    ds_wal_config cfg;           /* limits and sync mode given at open */
    pthread_mutex_t mu;          /* guards the fields down to `failure` (writes of the atomic ones) */
    pthread_cond_t work_cv;      /* the flusher waits here for records */
    pthread_cond_t done_cv;      /* the flusher took a batch (room freed), went idle, or failed */
    pthread_cond_t durable_cv[DURABLE_CVS]; /* waiters for LSN l sleep on durable_cv[l % DURABLE_CVS] */
    _Atomic uint64_t next_lsn;   /* LSN the next append gets; changed under the mutex, read without */
    buf pending;                 /* encoded records not yet taken by the flusher */
    buf batch;                   /* the batch the flusher is writing (its own while busy) */
    int busy;                    /* the flusher is writing `batch` */
    int closing;                 /* close() began: no more appends, the flusher drains and exits */
    _Atomic int failed;          /* a flush failed: fail-stop until reopened; set under the mutex, after
                                    `failure`, and read without it by ds_wal_failure's fast path */
    ds_wal_error failure;        /* why it failed */
    _Atomic uint64_t durable;    /* every record <= this is durable; read without the mutex */
    pthread_rwlock_t segs_lock;  /* the segment array: readers share, rolls and admin exclude */
    seg *segs;                   /* segments in LSN order; the last one takes appends */
    size_t nsegs, segs_cap;
    int closed;                  /* segments released (under segs_lock) */
    int efd;                     /* eventfd bumped on every durable advance or failure */
    int io_path;                 /* IO_URING or IO_FDATASYNC */
    uring ring;                  /* the flusher's ring when io_path == IO_URING */
    pthread_t flusher;
    int flusher_running;         /* pthread_create succeeded and not yet joined */
};

/* --- small helpers ----------------------------------------------------------------------- */

static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

__attribute__((format(printf, 6, 7))) static int fail(ds_wal_error *err, int code, int sys_errno, const char *path,
                                                      uint64_t offset, const char *fmt, ...) {
    err->code = code;
    err->sys_errno = sys_errno;
    err->offset = offset;
    snprintf(err->path, sizeof err->path, "%s", path ? path : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

/* An OSError-like failure: ENOSPC/EDQUOT become DS_WAL_ENOSPC with advice, the rest EIO. */
static int fail_os(ds_wal_error *err, int e, const char *what, const char *path) {
    if (e == ENOSPC || e == EDQUOT)
        return fail(err, DS_WAL_ENOSPC, e, path, 0,
                    "no space left to %s %s: free space or grow the volume, then reopen the log", what, path);
    return fail(err, DS_WAL_EIO, e, path, 0, "cannot %s %s: %s", what, path, strerror(e));
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int fsync_dir(const char *dir, ds_wal_error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_os(err, errno, "open directory", dir);
    int rc = fsync(fd) ? fail_os(err, errno, "sync directory", dir) : 0;
    close(fd);
    return rc;
}

static int buf_reserve(buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

/* --- records ----------------------------------------------------------------------------- */

static uint32_t record_crc(const uint8_t *hdr, const uint8_t *payload, uint32_t len) {
    uint32_t crc = ds_crc32c(0, hdr, 4);
    crc = ds_crc32c(crc, hdr + 8, REC_HDR_BYTES - 8);
    return ds_crc32c(crc, payload, len);
}

typedef struct rec {
    uint64_t term;
    uint32_t type;
    uint32_t len;
    uint64_t next; /* offset just past the record */
} rec;

/* Is there a valid record with this lsn at `at` (before `end`)? Checksum verified if `verify`. */
static int parse_record(const ds_wal *w, const uint8_t *base, uint64_t at, uint64_t end, uint64_t lsn, int verify,
                        rec *out) {
    if (at + REC_HDR_BYTES > end) return 0;
    const uint8_t *h = base + at;
    uint32_t len = ld32(h);
    if (ld64(h + 8) != lsn || len > w->cfg.record_payload_bytes_max || at + REC_HDR_BYTES + len > end) return 0;
    if (verify && record_crc(h, h + REC_HDR_BYTES, len) != ld32(h + 4)) return 0;
    out->term = ld64(h + 16);
    out->type = ld32(h + 24);
    out->len = len;
    out->next = at + REC_HDR_BYTES + len;
    return 1;
}

static void encode_record(uint8_t *dst, uint64_t lsn, uint64_t term, uint32_t type, const uint8_t *payload,
                          uint32_t len) {
    uint8_t h[REC_HDR_BYTES];
    st32(h, len);
    st32(h + 4, 0);
    st64(h + 8, lsn);
    st64(h + 16, term);
    st32(h + 24, type);
    st32(h + 4, record_crc(h, payload, len)); /* over the caller's bytes, before any copy */
    memcpy(dst, h, REC_HDR_BYTES);
    memcpy(dst + REC_HDR_BYTES, payload, len);
    /* The buffer must say what we were given; the flusher re-checks the checksum. */
    DS_CHECK(ld32(dst) == len && ld64(dst + 8) == lsn && ld64(dst + 16) == term && ld32(dst + 24) == type);
}

/* Every record of a batch checks out before it is written (pairs with the check on read). */
static void verify_batch(const ds_wal *w, const uint8_t *data, size_t len) {
    uint64_t at = 0, lsn = ld64(data + 8);
    rec r;
    while (at < len) {
        DS_CHECK(parse_record(w, data, at, len, lsn, 1, &r));
        at = r.next;
        lsn++;
    }
}

static uint64_t segment_size_for(const ds_wal *w, uint32_t payload_len) {
    uint64_t need = SEG_HDR_BYTES + REC_HDR_BYTES + (uint64_t)payload_len;
    need = (need + SEG_ALIGN_BYTES - 1) / SEG_ALIGN_BYTES * SEG_ALIGN_BYTES;
    return need > w->cfg.segment_bytes ? need : w->cfg.segment_bytes;
}

/* --- io_uring through the raw system calls ----------------------------------------------- */

static int uring_enter(int fd, unsigned submit, unsigned wait) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, IORING_ENTER_GETEVENTS, NULL, 0);
}

static void uring_exit(uring *r) {
    if (r->fd < 0) return;
    if (r->sqes) munmap(r->sqes, r->sqes_bytes);
    if (r->cq_ring && r->cq_ring != r->sq_ring) munmap(r->cq_ring, r->cq_ring_bytes);
    if (r->sq_ring) munmap(r->sq_ring, r->sq_ring_bytes);
    close(r->fd);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

/* Queue one sqe; the caller fills it. Only the flusher submits, so no locking. */
static struct io_uring_sqe *uring_sqe(uring *r, unsigned *tail) {
    unsigned idx = *tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    r->sq_array[idx] = idx;
    (*tail)++;
    return sqe;
}

/* Submit what uring_sqe queued and collect `n` completions into res[user_data]. */
static int uring_run(uring *r, unsigned tail, unsigned n, int *res) {
    atomic_store_explicit((_Atomic unsigned *)r->sq_tail, tail, memory_order_release);
    unsigned submit = n, got = 0;
    while (got < n) {
        int rc = uring_enter(r->fd, submit, n - got);
        if (rc < 0 && errno != EINTR) return -errno;
        if (rc >= 0) submit = 0;
        unsigned head = *r->cq_head;
        unsigned ctail = atomic_load_explicit((_Atomic unsigned *)r->cq_tail, memory_order_acquire);
        while (head != ctail) {
            struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
            if (cqe->user_data < n) res[cqe->user_data] = cqe->res;
            head++;
            got++;
        }
        atomic_store_explicit((_Atomic unsigned *)r->cq_head, head, memory_order_release);
    }
    return 0;
}

/* Set up a ring and prove it works with a NOP; a negative errno when the kernel refuses. */
static int uring_init(uring *r) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    memset(r, 0, sizeof *r);
    r->fd = (int)syscall(__NR_io_uring_setup, URING_ENTRIES, &p);
    if (r->fd < 0) {
        r->fd = -1;
        return -errno;
    }
    r->sq_ring_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_ring_bytes = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && r->cq_ring_bytes > r->sq_ring_bytes) r->sq_ring_bytes = r->cq_ring_bytes;
    r->sq_ring = mmap(NULL, r->sq_ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                      IORING_OFF_SQ_RING);
    if (r->sq_ring == MAP_FAILED) goto fail;
    r->cq_ring = single ? r->sq_ring
                        : mmap(NULL, r->cq_ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                               IORING_OFF_CQ_RING);
    if (r->cq_ring == MAP_FAILED) goto fail;
    r->sqes_bytes = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) goto fail;
    uint8_t *sq = r->sq_ring, *cq = r->cq_ring;
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    unsigned tail = *r->sq_tail;
    uring_sqe(r, &tail)->opcode = IORING_OP_NOP;
    int res[1] = {-EIO};
    int rc = uring_run(r, tail, 1, res);
    if (rc < 0 || res[0] < 0) {
        int e = rc < 0 ? rc : res[0];
        uring_exit(r);
        return e;
    }
    return 0;
fail:;
    int e = -errno;
    if (r->sq_ring == MAP_FAILED) r->sq_ring = NULL;
    if (r->cq_ring == MAP_FAILED) r->cq_ring = NULL;
    if (r->sqes == MAP_FAILED) r->sqes = NULL;
    uring_exit(r);
    return e;
}

/* --- durable writes ---------------------------------------------------------------------- */

static int pwrite_all(int fd, const uint8_t *data, size_t len, uint64_t off) {
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        data += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Write data at off and make it durable: one linked write -> fdatasync, or pwrite + fdatasync. */
static int write_durable(ds_wal *w, seg *s, const uint8_t *data, size_t len, uint64_t off, ds_wal_error *err) {
    if (w->io_path == IO_URING) {
        uring *r = &w->ring;
        unsigned tail = *r->sq_tail;
        /* WRITEV rather than WRITE: it exists on every kernel with io_uring (5.1+). */
        struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
        struct io_uring_sqe *wr = uring_sqe(r, &tail);
        wr->opcode = IORING_OP_WRITEV;
        wr->fd = s->fd;
        wr->addr = (uint64_t)(uintptr_t)&iov;
        wr->len = 1;
        wr->off = off;
        wr->flags = IOSQE_IO_LINK; /* the fsync runs only after the write completed in full */
        wr->user_data = 0;
        struct io_uring_sqe *fs = uring_sqe(r, &tail);
        fs->opcode = IORING_OP_FSYNC;
        fs->fd = s->fd;
        fs->fsync_flags = IORING_FSYNC_DATASYNC;
        fs->user_data = 1;
        int res[2] = {-EIO, -EIO};
        int rc = uring_run(r, tail, 2, res);
        if (rc < 0) return fail_os(err, -rc, "submit io_uring write to", s->path);
        if (res[0] < 0) return fail_os(err, -res[0], "write", s->path);
        if ((size_t)res[0] == len && res[1] >= 0) return 0;
        if (res[1] < 0 && res[1] != -ECANCELED) return fail_os(err, -res[1], "sync", s->path);
        /* A short write broke the link and cancelled the fsync: finish the plain way. */
        data += res[0];
        off += (uint64_t)res[0];
        len -= (size_t)res[0];
    }
    int e = pwrite_all(s->fd, data, len, off);
    if (e) return fail_os(err, e, "write", s->path);
    if (fdatasync(s->fd)) return fail_os(err, errno, "sync", s->path);
    return 0;
}

/* --- segments ---------------------------------------------------------------------------- */

static void seg_release(seg *s) {
    if (s->map) munmap(s->map, s->size);
    if (s->fd >= 0) close(s->fd);
    free(s->path);
    s->map = NULL;
    s->fd = -1;
    s->path = NULL;
}

static int segs_push(ds_wal *w, const seg *s) {
    if (w->nsegs == w->segs_cap) {
        size_t cap = w->segs_cap ? w->segs_cap * 2 : 16;
        seg *n = realloc(w->segs, cap * sizeof *n);
        if (!n) return -1;
        w->segs = n;
        w->segs_cap = cap;
    }
    w->segs[w->nsegs++] = *s;
    return 0;
}

static int seg_map(seg *s, ds_wal_error *err) {
    s->map = mmap(NULL, s->size, PROT_READ, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return fail_os(err, errno, "map", s->path);
    }
    return 0;
}

static void segment_name(char *out, size_t n, uint64_t first_lsn, const char *suffix) {
    snprintf(out, n, "%020llu%s", (unsigned long long)first_lsn, suffix);
}

/*
 * Create a segment under its ".tmp" name: preallocated, header written, durable. With
 * `publish` it is renamed to its final name (and the directory synced) before returning.
 */
static int segment_create(ds_wal *w, uint64_t first_lsn, uint64_t size, int publish, seg *out,
                          ds_wal_error *err) {
    char name[64];
    segment_name(name, sizeof name, first_lsn, SEG_TMP_SUFFIX);
    char *tmp = join_path(w->dir, name);
    segment_name(name, sizeof name, first_lsn, SEG_SUFFIX);
    char *path = join_path(w->dir, name);
    memset(out, 0, sizeof *out);
    out->fd = -1;
    int rc = 0;
    if (!tmp || !path) {
        rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
        goto done;
    }
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = fail_os(err, errno, "create WAL segment", tmp);
        goto done;
    }
    uint8_t h[SEG_HDR_BYTES] = {0};
    memcpy(h, SEG_MAGIC, 8);
    st32(h + 8, SEG_VERSION);
    st64(h + 16, first_lsn);
    st64(h + 24, size);
    st32(h + SEG_HDR_CRC_AT, ds_crc32c(0, h, SEG_HDR_CRC_AT));
    int e = posix_fallocate(fd, 0, (off_t)size);
    if (!e) e = pwrite_all(fd, h, sizeof h, 0);
    if (!e && fdatasync(fd)) e = errno;
    if (!e && publish && rename(tmp, path)) e = errno;
    if (e) {
        close(fd);
        unlink(tmp);
        rc = fail_os(err, e, "create WAL segment", path);
        goto done;
    }
    if (publish && (rc = fsync_dir(w->dir, err))) {
        close(fd);
        goto done;
    }
    out->fd = fd;
    out->first_lsn = first_lsn;
    out->size = size;
    out->end = SEG_HDR_BYTES;
    out->zeroed = SEG_HDR_BYTES;
    out->path = publish ? path : tmp;
    if (publish) path = NULL; else tmp = NULL;
    if ((rc = seg_map(out, err))) seg_release(out);
done:
    free(tmp);
    free(path);
    return rc;
}

/* Append a new segment for the record `lsn` of payload_len (the flusher rolls with this). */
static int segment_roll(ds_wal *w, uint64_t lsn, uint32_t payload_len, ds_wal_error *err) {
    seg s;
    int rc = segment_create(w, lsn, segment_size_for(w, payload_len), 1, &s, err);
    if (rc) return rc;
    pthread_rwlock_wrlock(&w->segs_lock);
    int bad = segs_push(w, &s);
    pthread_rwlock_unlock(&w->segs_lock);
    if (bad) {
        seg_release(&s);
        return fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
    }
    return 0;
}

/* Unlink segments [from, to) (in the given direction), then sync the directory. */
static int segments_remove(ds_wal *w, size_t from, size_t to, int backwards, ds_wal_error *err) {
    for (size_t k = 0; k < to - from; k++) {
        seg *s = &w->segs[backwards ? to - 1 - k : from + k];
        if (unlink(s->path)) return fail_os(err, errno, "delete WAL segment", s->path);
        seg_release(s);
    }
    return fsync_dir(w->dir, err);
}

static int write_zeros(seg *s, uint64_t from, uint64_t to, ds_wal_error *err) {
    static const uint8_t zeros[ZERO_CHUNK_BYTES];
    for (uint64_t at = from; at < to;) {
        size_t n = to - at < sizeof zeros ? (size_t)(to - at) : sizeof zeros;
        int e = pwrite_all(s->fd, zeros, n, at);
        if (e) return fail_os(err, e, "write", s->path);
        at += n;
    }
    return 0;
}

/* Zero [from, to) durably (truncation, a torn tail). */
static int zero_range(seg *s, uint64_t from, uint64_t to, ds_wal_error *err) {
    int rc = write_zeros(s, from, to, err);
    if (!rc && from < to && fdatasync(s->fd)) return fail_os(err, errno, "sync", s->path);
    return rc;
}

/* --- recovery ---------------------------------------------------------------------------- */

static uint64_t last_nonzero(const uint8_t *base, uint64_t from, uint64_t end) {
    while (end > from && (end & 7)) {
        if (base[end - 1]) return end;
        end--;
    }
    while (end >= from + 8 && ld64(base + end - 8) == 0) end -= 8;
    while (end > from && base[end - 1] == 0) end--;
    return end;
}

/* The invalid record at `at` was never completely written: one sector of it is still zero. */
static int is_torn(const ds_wal *w, const uint8_t *base, uint64_t at, uint64_t end) {
    uint64_t len = at + 4 <= end ? ld32(base + at) : 0;
    uint64_t stop = at + REC_HDR_BYTES + len;
    if (len > w->cfg.record_payload_bytes_max || stop > end) stop = end;
    while (at < stop) {
        uint64_t next = (at / SECTOR_BYTES + 1) * SECTOR_BYTES;
        if (next > stop) next = stop;
        if (last_nonzero(base, at, next) == at) return 1;
        at = next;
    }
    return 0;
}

/* A valid record with an LSN above `lsn` somewhere after `at`? Its offset, or 0. */
static uint64_t later_valid_record(const ds_wal *w, const uint8_t *base, uint64_t at, uint64_t end, uint64_t lsn) {
    uint64_t lsn_max = lsn + (end - at) / REC_HDR_BYTES;
    rec r;
    for (uint64_t p = at + 1; p + REC_HDR_BYTES <= end; p++) {
        uint64_t cand = ld64(base + p + 8);
        if (cand > lsn && cand <= lsn_max && parse_record(w, base, p, end, cand, 1, &r)) return p;
    }
    return 0;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Open one segment found on disk and check its header. */
static int segment_load(ds_wal *w, const char *name, seg *s, ds_wal_error *err) {
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->path = join_path(w->dir, name);
    if (!s->path) return fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
    s->fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (s->fd < 0) return fail_os(err, errno, "open WAL segment", s->path);
    struct stat st;
    if (fstat(s->fd, &st)) return fail_os(err, errno, "stat WAL segment", s->path);
    s->size = (uint64_t)st.st_size;
    if (s->size < SEG_HDR_BYTES)
        return fail(err, DS_WAL_ECORRUPT, 0, s->path, 0, "WAL segment shorter than its header");
    int rc = seg_map(s, err);
    if (rc) return rc;
    const uint8_t *h = s->map;
    if (memcmp(h, SEG_MAGIC, 8) || ld32(h + SEG_HDR_CRC_AT) != ds_crc32c(0, h, SEG_HDR_CRC_AT))
        return fail(err, DS_WAL_ECORRUPT, 0, s->path, 0, "WAL segment header is damaged");
    if (ld32(h + 8) != SEG_VERSION)
        return fail(err, DS_WAL_ECORRUPT, 0, s->path, 0, "WAL segment version %u is not supported (expected %u)",
                    ld32(h + 8), SEG_VERSION);
    if (ld64(h + 24) != s->size)
        return fail(err, DS_WAL_ECORRUPT, 0, s->path, 0, "WAL segment is %llu bytes, its header says %llu",
                    (unsigned long long)s->size, (unsigned long long)ld64(h + 24));
    s->first_lsn = ld64(h + 16);
    char expect[64];
    segment_name(expect, sizeof expect, s->first_lsn, has_suffix(name, SEG_TMP_SUFFIX) ? SEG_TMP_SUFFIX : SEG_SUFFIX);
    if (strcmp(expect, name))
        return fail(err, DS_WAL_ECORRUPT, 0, s->path, 0, "WAL segment header says first LSN %llu",
                    (unsigned long long)s->first_lsn);
    s->end = SEG_HDR_BYTES;
    return 0;
}

/*
 * A lone valid ".tmp" segment is a reset that deleted the old segments but was interrupted
 * before publishing the new one: publish it. Any other ".tmp" is an unfinished creation.
 */
static int recover_tmp(ds_wal *w, char **names, size_t n, size_t nseg, ds_wal_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!has_suffix(names[i], SEG_TMP_SUFFIX)) continue;
        char *path = join_path(w->dir, names[i]);
        if (!path) return fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
        ds_wal_error ignored;
        seg s;
        int ok = nseg == 0 && segment_load(w, names[i], &s, &ignored) == 0;
        if (nseg == 0) seg_release(&s);
        int rc = 0;
        if (ok) {
            char final[4096];
            snprintf(final, sizeof final, "%s", path);
            final[strlen(final) - 4] = 0; /* drop ".tmp" */
            if (rename(path, final)) rc = fail_os(err, errno, "rename", path);
            else names[i][strlen(names[i]) - 4] = 0;
        } else if (unlink(path)) {
            rc = fail_os(err, errno, "delete", path);
        }
        free(path);
        if (rc) return rc;
        if (ok) return fsync_dir(w->dir, err);
    }
    return 0;
}

static int recover(ds_wal *w, ds_wal_error *err) {
    DIR *d = opendir(w->dir);
    if (!d) return fail_os(err, errno, "open directory", w->dir);
    char **names = NULL;
    size_t n = 0, cap = 0, nseg = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int is_seg = has_suffix(de->d_name, SEG_SUFFIX);
        if (!is_seg && !has_suffix(de->d_name, SEG_TMP_SUFFIX)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) { rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory"); break; }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) { rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory"); break; }
        n++;
        nseg += is_seg;
    }
    closedir(d);
    if (!rc) rc = recover_tmp(w, names, n, nseg, err);
    if (!rc) qsort(names, n, sizeof *names, name_cmp);
    uint64_t lsn = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!has_suffix(names[i], SEG_SUFFIX)) continue; /* removed by recover_tmp */
        seg s;
        rc = segment_load(w, names[i], &s, err);
        if (!rc && segs_push(w, &s)) rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
        if (rc) { seg_release(&s); break; }
        seg *cur = &w->segs[w->nsegs - 1];
        if (w->nsegs > 1 && cur->first_lsn != lsn) {
            seg *prev = cur - 1;
            rc = fail(err, DS_WAL_ECORRUPT, 0, prev->path, prev->end,
                      "WAL record %llu is damaged (next segment starts at %llu)", (unsigned long long)lsn,
                      (unsigned long long)cur->first_lsn);
            break;
        }
        lsn = cur->first_lsn;
        rec r;
        while (parse_record(w, cur->map, cur->end, cur->size, lsn, 1, &r)) {
            cur->end = r.next;
            lsn++;
        }
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc) return rc;
    if (w->nsegs == 0) {
        w->next_lsn = 1;
        return segment_roll(w, 1, 0, err);
    }
    /* Only the last segment can end in a torn write: the flusher syncs before it rolls. */
    seg *s = &w->segs[w->nsegs - 1];
    uint64_t end = last_nonzero(s->map, s->end, s->size);
    if (end > s->end) {
        if (later_valid_record(w, s->map, s->end, end, lsn))
            return fail(err, DS_WAL_ECORRUPT, 0, s->path, s->end,
                        "WAL record %llu is damaged and valid records follow it", (unsigned long long)lsn);
        if (!is_torn(w, s->map, s->end, s->size))
            return fail(err, DS_WAL_ECORRUPT, 0, s->path, s->end,
                        "WAL record %llu fails its checksum although completely written", (unsigned long long)lsn);
        if ((rc = zero_range(s, s->end, end, err))) return rc;
    }
    w->next_lsn = lsn;
    return 0;
}

/* --- the flusher ------------------------------------------------------------------------- */

/*
 * posix_fallocate leaves unwritten extents: the first sync after a write into one must
 * convert it, a journal commit that waits behind every other file's data flush (tens of ms
 * on a busy disk). So zeros are written ahead of the records, ZERO_CHUNK_BYTES at a time,
 * and only one batch in that many bytes pays for the conversion; the batch's own sync makes
 * the zeros durable with it.
 */
static int zero_ahead(seg *s, uint64_t upto, ds_wal_error *err) {
    uint64_t from = s->zeroed > s->end ? s->zeroed : s->end;
    uint64_t to = upto + ZERO_CHUNK_BYTES < s->size ? upto + ZERO_CHUNK_BYTES : s->size;
    int rc = write_zeros(s, from, to, err);
    if (!rc) s->zeroed = to;
    return rc;
}

/* Write a batch to the active segment, rolling as needed; each segment's part made durable. */
static int write_batch(ds_wal *w, const buf *b, ds_wal_error *err) {
    seg *s = &w->segs[w->nsegs - 1];
    size_t i = 0;
    while (i < b->len) {
        size_t j = i;
        uint64_t at = s->end;
        while (j < b->len) {
            uint64_t n = REC_HDR_BYTES + (uint64_t)ld32(b->data + j);
            if (at + n > s->size) break;
            at += n;
            j += n;
        }
        if (j > i) {
            verify_batch(w, b->data + i, j - i);
            int rc = at > s->zeroed ? zero_ahead(s, at, err) : 0;
            if (!rc) rc = write_durable(w, s, b->data + i, j - i, s->end, err);
            if (rc) return rc;
            s->end = at;
        }
        if (j < b->len) {
            int rc = segment_roll(w, ld64(b->data + j + 8), ld32(b->data + j), err);
            if (rc) return rc;
            s = &w->segs[w->nsegs - 1];
        }
        i = j;
    }
    return 0;
}

static void signal_event(ds_wal *w) {
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof one);
    (void)n; /* EAGAIN only when the counter is near 2^64: the fd is readable anyway */
}

/* Wake the waiters of LSNs from..to (all of them when the range covers every slot). */
static void wake_durable(ds_wal *w, uint64_t from, uint64_t to) {
    for (uint64_t l = from; l <= to && l - from < DURABLE_CVS; l++)
        pthread_cond_broadcast(&w->durable_cv[l % DURABLE_CVS]);
}

static void *flusher_main(void *arg) {
    ds_wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->pending.len == 0 && !w->closing) pthread_cond_wait(&w->work_cv, &w->mu);
        if (w->pending.len == 0) break;
        buf t = w->batch;
        w->batch = w->pending;
        w->pending = t;
        w->pending.len = 0;
        uint64_t last = w->next_lsn - 1;
        w->busy = 1;
        pthread_cond_broadcast(&w->done_cv); /* room for appenders waiting on a full queue */
        pthread_mutex_unlock(&w->mu);

        ds_wal_error e;
        int rc = write_batch(w, &w->batch, &e);

        pthread_mutex_lock(&w->mu);
        w->busy = 0;
        w->batch.len = 0;
        if (rc == 0) {
            uint64_t before = atomic_load(&w->durable);
            atomic_store(&w->durable, last);
            wake_durable(w, before + 1, last);
        } else {
            w->failure = e;
            w->failed = 1;
            w->pending.len = 0; /* fail-stop: nothing queued after the failure is written */
            wake_durable(w, 0, UINT64_MAX);
        }
        pthread_cond_broadcast(&w->done_cv);
        /* The event loop wakes on this and asks for the log's state at once: the mutex is let go
         * first, so that the woken thread (which may take this thread's CPU) does not block on it. */
        pthread_mutex_unlock(&w->mu);
        signal_event(w);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* --- public interface -------------------------------------------------------------------- */

int ds_wal_open(const char *dir, const ds_wal_config *cfg, ds_wal **out, ds_wal_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    if (cfg->segment_bytes < SEG_HDR_BYTES + REC_HDR_BYTES || cfg->record_payload_bytes_max > UINT32_MAX ||
        cfg->queue_bytes_max < cfg->record_payload_bytes_max + REC_HDR_BYTES)
        return fail(err, DS_WAL_EINVAL, 0, dir, 0, "inconsistent WAL limits");
    ds_crc32c_init(); /* choose the CRC implementation before threads race to do it */
    ds_wal *w = calloc(1, sizeof *w);
    if (!w) return fail(err, DS_WAL_EIO, ENOMEM, dir, 0, "out of memory");
    w->cfg = *cfg;
    w->efd = -1;
    w->ring.fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    for (unsigned i = 0; i < DURABLE_CVS; i++) pthread_cond_init(&w->durable_cv[i], NULL);
    pthread_rwlock_init(&w->segs_lock, NULL);
    int rc = 0;
    if (!(w->dir = strdup(dir))) rc = fail(err, DS_WAL_EIO, ENOMEM, dir, 0, "out of memory");
    if (!rc) rc = recover(w, err);
    if (!rc && cfg->sync_mode == DS_WAL_SYNC_URING) {
        int e = uring_init(&w->ring);
        if (e == 0) w->io_path = IO_URING;
        else
            rc = fail(err, DS_WAL_EIO, -e, dir, 0, "sync='uring' but the kernel refuses io_uring (%s); use sync='auto'",
                      strerror(-e));
    }
    if (!rc && (w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) rc = fail_os(err, errno, "create eventfd", dir);
    atomic_store(&w->durable, w->next_lsn - 1);
    if (!rc && (errno = pthread_create(&w->flusher, NULL, flusher_main, w)))
        rc = fail_os(err, errno, "start the flusher thread for", dir);
    if (!rc) w->flusher_running = 1;
    if (rc) {
        ds_wal_error ignored;
        ds_wal_close(w, &ignored);
        ds_wal_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* Encode one record into the queue; the caller holds the mutex. */
static int append_locked(ds_wal *w, uint64_t term, uint32_t type, const uint8_t *payload, uint32_t len,
                         ds_wal_error *err) {
    size_t need = REC_HDR_BYTES + (size_t)len;
    while (!w->closing && !w->failed && w->pending.len && w->pending.len + need > w->cfg.queue_bytes_max)
        pthread_cond_wait(&w->done_cv, &w->mu);
    if (w->closing) return fail(err, DS_WAL_ECLOSED, 0, w->dir, 0, "the WAL is closed");
    if (w->failed) {
        *err = w->failure;
        return err->code;
    }
    if (buf_reserve(&w->pending, need)) return fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
    encode_record(w->pending.data + w->pending.len, w->next_lsn, term, type, payload, len);
    w->pending.len += need;
    w->next_lsn++;
    return 0;
}

static int check_len(ds_wal *w, size_t len, ds_wal_error *err) {
    if (len <= w->cfg.record_payload_bytes_max) return 0;
    return fail(err, DS_WAL_EINVAL, 0, w->dir, 0,
                "WAL record payload of %zu bytes exceeds WAL_RECORD_PAYLOAD_BYTES_MAX=%llu", len,
                (unsigned long long)w->cfg.record_payload_bytes_max);
}

int ds_wal_append(ds_wal *w, uint64_t term, uint32_t type, const uint8_t *payload, size_t len, uint64_t *lsn,
                  ds_wal_error *err) {
    int rc = check_len(w, len, err);
    if (rc) return rc;
    pthread_mutex_lock(&w->mu);
    rc = append_locked(w, term, type, payload, (uint32_t)len, err);
    *lsn = w->next_lsn - 1;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_append_many(ds_wal *w, size_t n, const uint64_t *terms, const uint32_t *types, const uint32_t *lens,
                       const uint8_t *payloads, uint64_t *last_lsn, ds_wal_error *err) {
    for (size_t i = 0; i < n; i++) {
        int rc = check_len(w, lens[i], err);
        if (rc) return rc;
    }
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < n && !rc; i++) {
        rc = append_locked(w, terms[i], types[i], payloads, lens[i], err);
        payloads += lens[i];
    }
    *last_lsn = w->next_lsn - 1;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_wait(ds_wal *w, uint64_t lsn, int64_t timeout_ms, ds_wal_error *err) {
    if (atomic_load(&w->durable) >= lsn) return 0;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    if (timeout_ms >= 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    if (lsn >= w->next_lsn)
        rc = fail(err, DS_WAL_EINVAL, 0, w->dir, 0, "LSN %llu was never appended (last is %llu)",
                  (unsigned long long)lsn, (unsigned long long)(w->next_lsn - 1));
    while (!rc && atomic_load(&w->durable) < lsn) {
        if (w->failed) {
            *err = w->failure;
            rc = err->code;
        } else if (w->closing && !w->flusher_running) {
            rc = fail(err, DS_WAL_ECLOSED, 0, w->dir, 0, "the WAL was closed before LSN %llu became durable",
                      (unsigned long long)lsn);
        } else if (timeout_ms < 0) {
            pthread_cond_wait(&w->durable_cv[lsn % DURABLE_CVS], &w->mu);
        } else if (pthread_cond_timedwait(&w->durable_cv[lsn % DURABLE_CVS], &w->mu, &deadline) == ETIMEDOUT &&
                   atomic_load(&w->durable) < lsn) {
            rc = fail(err, DS_WAL_ETIMEDOUT, 0, w->dir, 0, "LSN %llu not durable within %lld ms",
                      (unsigned long long)lsn, (long long)timeout_ms);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_failure(ds_wal *w, ds_wal_error *err) {
    if (!w->failed) return 0; /* asked after every durable advance: no mutex while all is well */
    pthread_mutex_lock(&w->mu);
    int code = w->failed ? w->failure.code : 0;
    if (code) *err = w->failure;
    pthread_mutex_unlock(&w->mu);
    return code;
}

uint64_t ds_wal_first_lsn(ds_wal *w) {
    pthread_rwlock_rdlock(&w->segs_lock);
    uint64_t first = w->nsegs ? w->segs[0].first_lsn : 0;
    pthread_rwlock_unlock(&w->segs_lock);
    return first < ds_wal_last_lsn(w) + 1 ? first : 0;
}

uint64_t ds_wal_last_lsn(ds_wal *w) { return w->next_lsn - 1; }

uint64_t ds_wal_durable_lsn(ds_wal *w) { return atomic_load(&w->durable); }

int ds_wal_event_fd(ds_wal *w) { return w->efd; }

void ds_wal_ack_event(ds_wal *w) {
    uint64_t v;
    ssize_t n = read(w->efd, &v, sizeof v);
    (void)n; /* EAGAIN: nothing signalled since the last drain */
}

const char *ds_wal_io_path(ds_wal *w) { return w->io_path == IO_URING ? "uring" : "fdatasync"; }

/* Index of the segment holding lsn (the last whose first_lsn <= lsn); segs_lock held. */
static size_t segment_of(const ds_wal *w, uint64_t lsn) {
    size_t lo = 0, hi = w->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (w->segs[mid].first_lsn <= lsn) lo = mid;
        else hi = mid;
    }
    return lo;
}

int ds_wal_read(ds_wal *w, uint64_t from_lsn, uint64_t to_lsn, uint8_t *out, size_t cap, size_t *used,
                ds_wal_error *err) {
    uint64_t durable = atomic_load(&w->durable);
    if (to_lsn > durable) to_lsn = durable;
    *used = 0;
    int rc = 0;
    pthread_rwlock_rdlock(&w->segs_lock);
    if (w->closed) {
        rc = fail(err, DS_WAL_ECLOSED, 0, w->dir, 0, "the WAL is closed");
    } else if (from_lsn <= to_lsn && from_lsn < w->segs[0].first_lsn) {
        rc = fail(err, DS_WAL_EINVAL, 0, w->dir, 0, "LSN %llu was dropped; the log starts at %llu",
                  (unsigned long long)from_lsn, (unsigned long long)w->segs[0].first_lsn);
    } else if (from_lsn <= to_lsn) {
        size_t i = segment_of(w, from_lsn);
        uint64_t at = SEG_HDR_BYTES, lsn = w->segs[i].first_lsn;
        while (lsn <= to_lsn) {
            seg *s = &w->segs[i];
            rec r;
            /* Records skipped on the way are walked by header; those returned are verified. */
            if (!parse_record(w, s->map, at, s->size, lsn, lsn >= from_lsn, &r)) {
                if (i + 1 < w->nsegs && w->segs[i + 1].first_lsn == lsn) {
                    i++;
                    at = SEG_HDR_BYTES;
                    continue;
                }
                rc = fail(err, DS_WAL_ECORRUPT, 0, s->path, at, "WAL record %llu fails its checksum on read",
                          (unsigned long long)lsn);
                break;
            }
            if (lsn >= from_lsn) {
                size_t n = (size_t)(r.next - at);
                if (*used + n > cap) {
                    if (*used == 0) {
                        *used = n;
                        rc = DS_WAL_ETOOSMALL;
                    }
                    break;
                }
                memcpy(out + *used, s->map + at, n);
                *used += n;
            }
            at = r.next;
            lsn++;
        }
    }
    pthread_rwlock_unlock(&w->segs_lock);
    return rc;
}

/* Take the mutex and wait until everything appended is durable (admin operations hold it). */
static int quiesce(ds_wal *w, ds_wal_error *err) {
    pthread_mutex_lock(&w->mu);
    while (!w->failed && !w->closing && (w->pending.len || w->busy)) pthread_cond_wait(&w->done_cv, &w->mu);
    if (w->closing) return fail(err, DS_WAL_ECLOSED, 0, w->dir, 0, "the WAL is closed");
    if (w->failed) {
        *err = w->failure;
        return err->code;
    }
    return 0;
}

int ds_wal_truncate_after(ds_wal *w, uint64_t lsn, ds_wal_error *err) {
    int rc = quiesce(w, err);
    if (rc || lsn + 1 >= w->next_lsn) goto out;
    if (lsn + 1 < w->segs[0].first_lsn) {
        rc = fail(err, DS_WAL_EINVAL, 0, w->dir, 0, "cannot truncate after LSN %llu: the log starts at %llu",
                  (unsigned long long)lsn, (unsigned long long)w->segs[0].first_lsn);
        goto out;
    }
    pthread_rwlock_wrlock(&w->segs_lock);
    size_t i = segment_of(w, lsn + 1);
    seg *s = &w->segs[i];
    uint64_t at = SEG_HDR_BYTES;
    rec r;
    for (uint64_t cur = s->first_lsn; cur <= lsn; cur++) {
        DS_CHECK(parse_record(w, s->map, at, s->end, cur, 0, &r));
        at = r.next;
    }
    /* Later segments go first: a crash in between leaves a longer, still contiguous log. */
    rc = segments_remove(w, i + 1, w->nsegs, 1, err);
    if (!rc) {
        w->nsegs = i + 1;
        rc = zero_range(s, at, s->end, err);
    }
    if (!rc) {
        s->end = at;
        w->next_lsn = lsn + 1;
        atomic_store(&w->durable, lsn);
    }
    pthread_rwlock_unlock(&w->segs_lock);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_drop_before(ds_wal *w, uint64_t lsn, ds_wal_error *err) {
    /* The flusher must be idle: it holds a pointer into the segment array while it writes. */
    int rc = quiesce(w, err);
    pthread_rwlock_wrlock(&w->segs_lock);
    size_t n = 0;
    while (!rc && n + 1 < w->nsegs && w->segs[n + 1].first_lsn <= lsn) n++;
    if (n) {
        rc = segments_remove(w, 0, n, 0, err);
        memmove(w->segs, w->segs + n, (w->nsegs - n) * sizeof *w->segs);
        w->nsegs -= n;
    }
    pthread_rwlock_unlock(&w->segs_lock);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_reset(ds_wal *w, uint64_t next_lsn, ds_wal_error *err) {
    if (next_lsn < 1) return fail(err, DS_WAL_EINVAL, 0, w->dir, 0, "next_lsn must be at least 1");
    int rc = quiesce(w, err);
    if (rc) goto out;
    /* The new segment exists (durably, as .tmp) before anything is deleted, so a full disk
     * fails here with the old log intact; recovery publishes a lone .tmp. */
    seg s;
    if ((rc = segment_create(w, next_lsn, w->cfg.segment_bytes, 0, &s, err))) goto out;
    pthread_rwlock_wrlock(&w->segs_lock);
    rc = segments_remove(w, 0, w->nsegs, 0, err);
    if (!rc) {
        w->nsegs = 0;
        char *final = strdup(s.path);
        if (!final) rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
        else {
            final[strlen(final) - 4] = 0; /* drop ".tmp" */
            if (rename(s.path, final)) rc = fail_os(err, errno, "rename", s.path);
            free(s.path);
            s.path = final;
        }
    }
    if (!rc) rc = fsync_dir(w->dir, err);
    if (!rc && segs_push(w, &s)) rc = fail(err, DS_WAL_EIO, ENOMEM, w->dir, 0, "out of memory");
    if (rc) {
        seg_release(&s);
        w->failed = 1; /* the segment list no longer matches the disk: reopen to recover */
        w->failure = *err;
    } else {
        w->next_lsn = next_lsn;
        atomic_store(&w->durable, next_lsn - 1);
    }
    pthread_rwlock_unlock(&w->segs_lock);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ds_wal_close(ds_wal *w, ds_wal_error *err) {
    pthread_mutex_lock(&w->mu);
    int already = w->closing;
    w->closing = 1;
    pthread_cond_broadcast(&w->work_cv);
    pthread_cond_broadcast(&w->done_cv);
    pthread_mutex_unlock(&w->mu);
    if (already) return 0;
    if (w->flusher_running) pthread_join(w->flusher, NULL);
    pthread_mutex_lock(&w->mu);
    w->flusher_running = 0;
    pthread_cond_broadcast(&w->done_cv);
    wake_durable(w, 0, UINT64_MAX); /* waiters of LSNs that will never be durable see the close */
    pthread_mutex_unlock(&w->mu);
    pthread_rwlock_wrlock(&w->segs_lock);
    for (size_t i = 0; i < w->nsegs; i++) seg_release(&w->segs[i]);
    w->nsegs = 0;
    w->closed = 1;
    pthread_rwlock_unlock(&w->segs_lock);
    uring_exit(&w->ring);
    signal_event(w); /* wake asyncio waiters so they see the close */
    (void)err;       /* closing cannot fail; a flush failure was reported to its waiters */
    return 0;
}

void ds_wal_free(ds_wal *w) {
    if (!w) return;
    ds_wal_error ignored;
    ds_wal_close(w, &ignored);
    if (w->efd >= 0) close(w->efd);
    free(w->segs);
    free(w->pending.data);
    free(w->batch.data);
    free(w->dir);
    pthread_rwlock_destroy(&w->segs_lock);
    pthread_cond_destroy(&w->done_cv);
    for (unsigned i = 0; i < DURABLE_CVS; i++) pthread_cond_destroy(&w->durable_cv[i]);
    pthread_cond_destroy(&w->work_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
