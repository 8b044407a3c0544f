/*
 * wal.h — the write-ahead log's C interface, used through cffi (native/cffi_build.py).
 *
 * The boundary is narrow: bytes in, bytes out, an error struct filled on failure. Every
 * function returns DS_WAL_OK (0) or one of the error codes below, which the Python face
 * (dynstore/storage/wal.py) turns into typed errors. The text between the cdef markers is
 * fed to cffi as is, so it holds plain declarations only.
 */
#ifndef DYNSTORE_WAL_H
#define DYNSTORE_WAL_H

#include <stddef.h>
#include <stdint.h>

/* cdef begin */
enum {
    DS_WAL_OK = 0,
    DS_WAL_EIO = 1,       /* an I/O error; the log fails stop (reopen to recover) */
    DS_WAL_ECORRUPT = 2,  /* a checksum or structure check failed; path and offset say where */
    DS_WAL_ENOSPC = 3,    /* the file system is full; the log fails stop (reopen to recover) */
    DS_WAL_ECLOSED = 4,   /* used after ds_wal_close */
    DS_WAL_EINVAL = 5,    /* a bad argument (the caller's mistake) */
    DS_WAL_ETIMEDOUT = 6, /* ds_wal_wait gave up */
    DS_WAL_ETOOSMALL = 7  /* ds_wal_read: the first record needs *used bytes of buffer */
};

enum {
    DS_WAL_SYNC_AUTO = 0,     /* the faster path on Linux today: pwrite + fdatasync (wal.c) */
    DS_WAL_SYNC_URING = 1,    /* io_uring or fail to open */
    DS_WAL_SYNC_FDATASYNC = 2 /* pwrite + fdatasync only */
};

typedef struct ds_wal_error {
    int code;          /* one of DS_WAL_E* */
    int sys_errno;     /* errno behind it, 0 if none */
    uint64_t offset;   /* file offset of a corrupt record or header */
    char path[4096];   /* file concerned, "" if none */
    char message[512]; /* what happened and what to do about it */
} ds_wal_error;

typedef struct ds_wal_config {
    uint64_t segment_bytes;            /* size of a new segment file */
    uint64_t record_payload_bytes_max; /* larger payloads are refused */
    uint64_t queue_bytes_max;          /* bytes queued for the flusher before appenders wait */
    int sync_mode;                     /* DS_WAL_SYNC_* */
} ds_wal_config;

typedef struct ds_wal ds_wal;

int ds_wal_open(const char *dir, const ds_wal_config *cfg, ds_wal **out, ds_wal_error *err);
int ds_wal_append(ds_wal *w, uint64_t term, uint32_t type, const uint8_t *payload, size_t len, uint64_t *lsn,
                  ds_wal_error *err);
int ds_wal_append_many(ds_wal *w, size_t n, const uint64_t *terms, const uint32_t *types, const uint32_t *lens,
                       const uint8_t *payloads, uint64_t *last_lsn, ds_wal_error *err);
int ds_wal_wait(ds_wal *w, uint64_t lsn, int64_t timeout_ms, ds_wal_error *err);
int ds_wal_failure(ds_wal *w, ds_wal_error *err);
uint64_t ds_wal_first_lsn(ds_wal *w);
uint64_t ds_wal_last_lsn(ds_wal *w);
uint64_t ds_wal_durable_lsn(ds_wal *w);
int ds_wal_event_fd(ds_wal *w);
void ds_wal_ack_event(ds_wal *w);
const char *ds_wal_io_path(ds_wal *w);
int ds_wal_read(ds_wal *w, uint64_t from_lsn, uint64_t to_lsn, uint8_t *out, size_t cap, size_t *used,
                ds_wal_error *err);
int ds_wal_truncate_after(ds_wal *w, uint64_t lsn, ds_wal_error *err);
int ds_wal_drop_before(ds_wal *w, uint64_t lsn, ds_wal_error *err);
int ds_wal_reset(ds_wal *w, uint64_t next_lsn, ds_wal_error *err);
int ds_wal_close(ds_wal *w, ds_wal_error *err);
void ds_wal_free(ds_wal *w);
/* cdef end */

#endif /* DYNSTORE_WAL_H */
