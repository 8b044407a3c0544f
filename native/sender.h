/* The benchmark generator's sender: HTTP/1.1 requests to one endpoint at scheduled instants.
 *
 * Python builds and signs every request ahead of its instant and submits it with the
 * CLOCK_MONOTONIC instant it is due (time.monotonic() in Python) and a tag of its own;
 * ds_send_run, called on a thread of its own (it releases nothing it needs the GIL for),
 * writes each request at its instant on an idle keep-alive connection, opening more on
 * demand up to a maximum, and timestamps the last byte of each response as it comes in.
 * Python takes the finished requests with ds_send_take while the run goes on.
 *
 * An instant of 0 means "as soon as a connection is free" (closed loop). One connection
 * carries one request at a time, no pipelining. A request due while every connection is
 * busy waits, in order, for the next one to come free or to open; the wait is part of its
 * latency, measured by the caller from the instant it was due.
 *
 * Faults handled: connections refused (the request waiting for one fails with
 * DS_SEND_EREFUSED), closed or reset with a request in flight (DS_SEND_ECONN), answers
 * this sender cannot frame (DS_SEND_EPROTO), an endpoint that stops answering (requests
 * neither answered nor failed drain_s after the last instant are reported
 * DS_SEND_EUNFINISHED), a server that closes after each answer (Connection: close, or
 * HTTP/1.0: a new connection is opened for the next request, its handshake counted).
 */
#ifndef DS_SENDER_H
#define DS_SENDER_H

#include <stddef.h>
#include <stdint.h>

/* cdef begin */
#define DS_SEND_BODY_MAX 512

#define DS_SEND_ECONN -1
#define DS_SEND_EREFUSED -2
#define DS_SEND_EPROTO -3
#define DS_SEND_EUNFINISHED -4

typedef struct ds_send ds_send;

typedef struct {
    uint64_t tag;
    double scheduled;   /* as submitted */
    double sent;        /* when it was written to a socket; 0 if it never was */
    double done;        /* when the last byte of its response came in, or it failed */
    int status;         /* the HTTP status, or a DS_SEND_E* failure */
    int has_item;       /* a 200 whose body holds an "Item" member */
    uint32_t body_len;  /* bytes in body: the start of a non-200 answer's body */
    char body[DS_SEND_BODY_MAX];
} ds_send_result;

/* NULL and a message in err on failure (the host does not resolve, no memory). */
ds_send *ds_send_new(const char *host, const char *port, int connections_max, char *err, size_t err_len);
/* Open count connections now, before the run, so that it does not measure handshakes. */
int ds_send_connect(ds_send *s, int count, char *err, size_t err_len);
/* Queue a copy of request, due at instant; instants must not decrease. 0, or -1 out of memory. */
int ds_send_submit(ds_send *s, const char *request, size_t len, double instant, uint64_t tag);
/* No more submissions. discard: drop what was not sent yet (it is not reported). */
void ds_send_finish(ds_send *s, int discard);
/* Submitted and not yet written to a socket. */
size_t ds_send_backlog(ds_send *s);
/* The event loop: returns once finished and every request is answered or failed, or
 * drain_s after the later of the finish and the last instant. 0, or -1 with err set. */
int ds_send_run(ds_send *s, double drain_s, char *err, size_t err_len);
/* Move up to max finished requests into out; returns how many. */
size_t ds_send_take(ds_send *s, ds_send_result *out, size_t max);
void ds_send_free(ds_send *s);
/* cdef end */

#endif
