/* The benchmark generator's sender (sender.h says what it does and the faults it handles).
 *
 * One epoll loop on the caller's thread. A timerfd armed at the absolute CLOCK_MONOTONIC
 * instant of the next due request wakes it within the kernel's wake-up latency, with no
 * rounding to milliseconds; an eventfd wakes it when a submission arrives while its queue
 * is empty, or at the finish. The queue (a ring, in instant order) and the finished
 * requests are the only state shared with the submitting thread, under one mutex.
 *
 * Responses are framed by Content-Length, or by the end of the connection when an answer
 * has none; chunked answers are refused (DS_SEND_EPROTO): DynamoDB and its peers send a
 * length. The instant a response is done is read from the clock as soon as the read that
 * completed it returns.
 */
#define _GNU_SOURCE
#include "sender.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF_MIN 16384
#define EVENTS 64
#define TAG_TIMER UINT64_MAX
#define TAG_WAKE (UINT64_MAX - 1)

enum { FREE, CONNECTING, IDLE, BUSY };

typedef struct {
    char *data;
    size_t len;
    double instant;
    uint64_t tag;
} item;

typedef struct {
    int fd, state;
    item req;
    size_t written;
    double sent;
    int want_out;      /* EPOLLOUT is registered: the request is partly written, or a connect runs */
    char *buf;
    size_t have, cap;
    size_t head_end;   /* end of the response's headers in buf, 0 until they are in */
    long long length;  /* body length, -1: up to the end of the connection */
    int status, close_after;
} conn;

struct ds_send {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int family;
    int max;
    conn *conns;
    int ep, timer, wake;
    double armed;  /* the instant the timerfd is armed at, 0 if disarmed */
    pthread_mutex_t mu;
    /* under mu */
    item *queue;
    size_t q_head, q_len, q_cap;
    ds_send_result *results;
    size_t r_len, r_cap;
    int finished, sleeping;
    double finish_at, last_instant;
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void set_err(char *err, size_t err_len, const char *what, int e) {
    if (err && err_len)
        snprintf(err, err_len, "%s: %s", what, strerror(e));
}

ds_send *ds_send_new(const char *host, const char *port, int connections_max, char *err, size_t err_len) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *found = NULL;
    int rc = getaddrinfo(host, port, &hints, &found);
    if (rc != 0) {
        snprintf(err, err_len, "%s:%s does not resolve: %s", host, port, gai_strerror(rc));
        return NULL;
    }
    ds_send *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(found);
        set_err(err, err_len, "sender", ENOMEM);
        return NULL;
    }
    memcpy(&s->addr, found->ai_addr, found->ai_addrlen);
    s->addr_len = found->ai_addrlen;
    s->family = found->ai_family;
    freeaddrinfo(found);
    s->max = connections_max;
    s->conns = calloc((size_t)connections_max, sizeof(conn));
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    s->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&s->mu, NULL);
    if (!s->conns || s->ep < 0 || s->timer < 0 || s->wake < 0) {
        set_err(err, err_len, "sender", s->conns ? errno : ENOMEM);
        ds_send_free(s);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->timer, &ev);
    ev.data.u64 = TAG_WAKE;
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake, &ev);
    return s;
}

static void watch(ds_send *s, conn *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - s->conns)};
    epoll_ctl(s->ep, op, c->fd, &ev);
}

static void close_conn(ds_send *s, conn *c) {
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = FREE;
    c->want_out = 0;
    c->have = c->head_end = 0;
}

static conn *free_slot(ds_send *s) {
    for (int i = 0; i < s->max; i++)
        if (s->conns[i].state == FREE)
            return &s->conns[i];
    return NULL;
}

/* Start a connection in a free slot; blocking: wait for it. -1 with errno when it failed. */
static int open_conn(ds_send *s, conn *c, int blocking) {
    int fd = socket(s->family, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, (struct sockaddr *)&s->addr, s->addr_len);
    if (rc < 0 && (blocking || errno != EINPROGRESS)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (blocking) {
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
    }
    c->fd = fd;
    c->have = c->head_end = 0;
    if (rc == 0) {
        c->state = IDLE;
        c->want_out = 0;
        watch(s, c, EPOLL_CTL_ADD, EPOLLIN);
    } else {
        c->state = CONNECTING;
        c->want_out = 1;
        watch(s, c, EPOLL_CTL_ADD, EPOLLOUT);
    }
    return 0;
}

int ds_send_connect(ds_send *s, int count, char *err, size_t err_len) {
    for (int i = 0; i < count; i++) {
        conn *c = free_slot(s);
        if (!c)
            break;
        if (open_conn(s, c, 1) < 0) {
            set_err(err, err_len, "connect", errno);
            return -1;
        }
    }
    return 0;
}

int ds_send_submit(ds_send *s, const char *request, size_t len, double instant, uint64_t tag) {
    char *copy = malloc(len);
    if (!copy)
        return -1;
    memcpy(copy, request, len);
    pthread_mutex_lock(&s->mu);
    if (s->q_len == s->q_cap) {
        size_t cap = s->q_cap ? 2 * s->q_cap : 1024;
        item *q = malloc(cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&s->mu);
            free(copy);
            return -1;
        }
        for (size_t i = 0; i < s->q_len; i++)
            q[i] = s->queue[(s->q_head + i) % s->q_cap];
        free(s->queue);
        s->queue = q;
        s->q_cap = cap;
        s->q_head = 0;
    }
    s->queue[(s->q_head + s->q_len) % s->q_cap] = (item){copy, len, instant, tag};
    s->q_len++;
    if (instant > s->last_instant)
        s->last_instant = instant;
    int wake = s->sleeping;
    s->sleeping = 0;
    pthread_mutex_unlock(&s->mu);
    if (wake) {
        uint64_t one = 1;
        (void)!write(s->wake, &one, sizeof one);
    }
    return 0;
}

void ds_send_finish(ds_send *s, int discard) {
    pthread_mutex_lock(&s->mu);
    if (discard) {
        for (size_t i = 0; i < s->q_len; i++)
            free(s->queue[(s->q_head + i) % s->q_cap].data);
        s->q_len = 0;
    }
    s->finished = 1;
    s->finish_at = now_s();
    pthread_mutex_unlock(&s->mu);
    uint64_t one = 1;
    (void)!write(s->wake, &one, sizeof one);
}

size_t ds_send_backlog(ds_send *s) {
    pthread_mutex_lock(&s->mu);
    size_t n = s->q_len;
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t ds_send_take(ds_send *s, ds_send_result *out, size_t max) {
    pthread_mutex_lock(&s->mu);
    size_t n = s->r_len < max ? s->r_len : max;
    memcpy(out, s->results, n * sizeof *out);
    memmove(s->results, s->results + n, (s->r_len - n) * sizeof *out);
    s->r_len -= n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Report a request; its bytes are freed. -1 when out of memory. */
static int report(ds_send *s, item *req, double sent, double done, int status, const char *body, size_t body_len) {
    ds_send_result r = {.tag = req->tag, .scheduled = req->instant, .sent = sent, .done = done, .status = status};
    if (status == 200) {
        r.has_item = memmem(body, body_len, "\"Item\"", 6) != NULL;
    } else if (body_len) {
        r.body_len = body_len < DS_SEND_BODY_MAX ? (uint32_t)body_len : DS_SEND_BODY_MAX;
        memcpy(r.body, body, r.body_len);
    }
    free(req->data);
    req->data = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->r_len == s->r_cap) {
        size_t cap = s->r_cap ? 2 * s->r_cap : 256;
        ds_send_result *grown = realloc(s->results, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        s->results = grown;
        s->r_cap = cap;
    }
    s->results[s->r_len++] = r;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* The request in flight on c failed: report it and drop the connection. */
static int fail_conn(ds_send *s, conn *c, int status) {
    int rc = report(s, &c->req, c->sent, now_s(), status, NULL, 0);
    close_conn(s, c);
    return rc;
}

/* Write what is left of c's request; -1 only when out of memory. */
static int push(ds_send *s, conn *c) {
    while (c->written < c->req.len) {
        ssize_t n = send(c->fd, c->req.data + c->written, c->req.len - c->written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    c->want_out = 1;
                    watch(s, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                }
                return 0;
            }
            return fail_conn(s, c, DS_SEND_ECONN);
        }
        c->written += (size_t)n;
    }
    if (c->want_out) {
        c->want_out = 0;
        watch(s, c, EPOLL_CTL_MOD, EPOLLIN);
    }
    return 0;
}

/* Header lines after the status line: Content-Length, Connection, Transfer-Encoding. 0, or -1 unframeable. */
static int parse_head(conn *c, size_t end) {
    const char *p = c->buf, *stop = c->buf + end;
    if (end < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    int minor = p[7] - '0';
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    c->length = -1;
    c->close_after = minor == 0;
    p = memchr(p, '\n', (size_t)(stop - p));
    while (p && ++p < stop) {
        const char *eol = memchr(p, '\n', (size_t)(stop - p));
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            size_t name = (size_t)(colon - p);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t vlen = (size_t)(eol - v);
            while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == ' '))
                vlen--;
            if (name == 14 && strncasecmp(p, "content-length", 14) == 0) {
                char *endp;
                long long n = strtoll(v, &endp, 10);
                if (endp == v || n < 0)
                    return -1;
                c->length = n;
            } else if (name == 10 && strncasecmp(p, "connection", 10) == 0) {
                if (vlen == 5 && strncasecmp(v, "close", 5) == 0)
                    c->close_after = 1;
                else if (vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0)
                    c->close_after = 0;
            } else if (name == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
                return -1;
            }
        }
        p = eol;
    }
    if (c->length < 0)
        c->close_after = 1;
    return 0;
}

/* Bytes came in (or the connection ended: eof) on c at instant at. -1 only when out of memory. */
static int take_in(ds_send *s, conn *c, int eof, double at) {
    if (c->state != BUSY) {
        /* An idle connection that ends was closed by the server; one that talks is broken. */
        close_conn(s, c);
        return 0;
    }
    if (!c->head_end) {
        char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
        if (!end)
            return eof ? fail_conn(s, c, c->have ? DS_SEND_EPROTO : DS_SEND_ECONN) : 0;
        c->head_end = (size_t)(end - c->buf) + 4;
        if (parse_head(c, c->head_end) < 0)
            return fail_conn(s, c, DS_SEND_EPROTO);
    }
    size_t body_len = c->have - c->head_end;
    if (c->length >= 0) {
        if (body_len < (size_t)c->length)
            return eof ? fail_conn(s, c, DS_SEND_ECONN) : 0;
        if (body_len > (size_t)c->length)
            return fail_conn(s, c, DS_SEND_EPROTO);  /* more than one answer to one request */
    } else if (!eof) {
        return 0;
    }
    if (report(s, &c->req, c->sent, at, c->status, c->buf + c->head_end, body_len) < 0)
        return -1;
    if (c->close_after || eof) {
        close_conn(s, c);
    } else {
        c->state = IDLE;
        c->have = c->head_end = 0;
    }
    return 0;
}

static int readable(ds_send *s, conn *c) {
    if (c->cap - c->have < BUF_MIN / 2) {
        size_t cap = c->cap ? 2 * c->cap : BUF_MIN;
        char *grown = realloc(c->buf, cap);
        if (!grown)
            return -1;
        c->buf = grown;
        c->cap = cap;
    }
    ssize_t n = read(c->fd, c->buf + c->have, c->cap - c->have);
    double at = now_s();
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        return c->state == BUSY ? fail_conn(s, c, DS_SEND_ECONN) : (close_conn(s, c), 0);
    }
    c->have += (size_t)n;
    return take_in(s, c, n == 0, at);
}

static int connected(ds_send *s, conn *c) {
    int e = 0;
    socklen_t len = sizeof e;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len);
    if (e) {
        close_conn(s, c);
        /* The request waiting longest for a connection fails with the refusal. */
        pthread_mutex_lock(&s->mu);
        int due = s->q_len && s->queue[s->q_head].instant <= now_s();
        item req = {0};
        if (due) {
            req = s->queue[s->q_head];
            s->q_head = (s->q_head + 1) % s->q_cap;
            s->q_len--;
        }
        pthread_mutex_unlock(&s->mu);
        return due ? report(s, &req, 0, now_s(), DS_SEND_EREFUSED, NULL, 0) : 0;
    }
    c->state = IDLE;
    c->want_out = 0;
    watch(s, c, EPOLL_CTL_MOD, EPOLLIN);
    return 0;
}

/* Send every due request there is an idle connection for; open connections for the rest. */
static int dispatch(ds_send *s) {
    int c_i = 0;
    for (;;) {
        double now = now_s();
        pthread_mutex_lock(&s->mu);
        if (!s->q_len || s->queue[s->q_head].instant > now) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        while (c_i < s->max && s->conns[c_i].state != IDLE)
            c_i++;
        if (c_i == s->max) {
            /* Every connection is busy or opening: open one more per due request waiting. */
            size_t waiting = 0;
            for (size_t i = 0; i < s->q_len && s->queue[(s->q_head + i) % s->q_cap].instant <= now; i++)
                waiting++;
            pthread_mutex_unlock(&s->mu);
            size_t opening = 0;
            for (int i = 0; i < s->max; i++)
                opening += s->conns[i].state == CONNECTING;
            while (opening < waiting) {
                conn *c = free_slot(s);
                if (!c)
                    break;
                if (open_conn(s, c, 0) < 0) {
                    pthread_mutex_lock(&s->mu);
                    item req = s->queue[s->q_head];
                    s->q_head = (s->q_head + 1) % s->q_cap;
                    s->q_len--;
                    pthread_mutex_unlock(&s->mu);
                    if (report(s, &req, 0, now_s(), DS_SEND_EREFUSED, NULL, 0) < 0)
                        return -1;
                    waiting--;
                    continue;
                }
                opening++;
            }
            return 0;
        }
        conn *c = &s->conns[c_i];
        c->req = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        pthread_mutex_unlock(&s->mu);
        c->state = BUSY;
        c->written = 0;
        c->sent = now_s();
        if (push(s, c) < 0)
            return -1;
    }
}

static void arm(ds_send *s, double instant) {
    if (instant == s->armed)
        return;
    struct itimerspec t = {0};
    if (instant > 0) {
        t.it_value.tv_sec = (time_t)instant;
        t.it_value.tv_nsec = (long)ceil((instant - (double)t.it_value.tv_sec) * 1e9);
        if (t.it_value.tv_nsec >= 1000000000L) {
            t.it_value.tv_sec++;
            t.it_value.tv_nsec -= 1000000000L;
        }
        if (t.it_value.tv_sec == 0 && t.it_value.tv_nsec == 0)
            t.it_value.tv_nsec = 1;
    }
    timerfd_settime(s->timer, TFD_TIMER_ABSTIME, &t, NULL);
    s->armed = instant;
}

/* Everything still queued or in flight at the drain deadline. */
static int abandon(ds_send *s) {
    double at = now_s();
    for (int i = 0; i < s->max; i++) {
        conn *c = &s->conns[i];
        if (c->state == BUSY && fail_conn(s, c, DS_SEND_EUNFINISHED) < 0)
            return -1;
    }
    pthread_mutex_lock(&s->mu);
    while (s->q_len) {
        item req = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        pthread_mutex_unlock(&s->mu);
        if (report(s, &req, 0, at, DS_SEND_EUNFINISHED, NULL, 0) < 0)
            return -1;
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int ds_send_run(ds_send *s, double drain_s, char *err, size_t err_len) {
    struct epoll_event events[EVENTS];
    for (;;) {
        if (dispatch(s) < 0) {
            set_err(err, err_len, "sender", ENOMEM);
            return -1;
        }
        double now = now_s(), deadline = INFINITY, next = 0;
        int busy = 0;
        for (int i = 0; i < s->max; i++)
            busy += s->conns[i].state == BUSY;
        pthread_mutex_lock(&s->mu);
        if (s->q_len && s->queue[s->q_head].instant > now)
            next = s->queue[s->q_head].instant;
        if (s->finished) {
            if (!s->q_len && !busy) {
                pthread_mutex_unlock(&s->mu);
                return 0;
            }
            deadline = (s->finish_at > s->last_instant ? s->finish_at : s->last_instant) + drain_s;
        }
        s->sleeping = !s->q_len && !s->finished;
        pthread_mutex_unlock(&s->mu);
        if (now >= deadline) {
            if (abandon(s) < 0) {
                set_err(err, err_len, "sender", ENOMEM);
                return -1;
            }
            return 0;
        }
        arm(s, next);
        int timeout = isinf(deadline) ? -1 : (int)ceil((deadline - now) * 1000);
        int n = epoll_wait(s->ep, events, EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            set_err(err, err_len, "epoll_wait", errno);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64, count;
            if (tag == TAG_TIMER) {
                (void)!read(s->timer, &count, sizeof count);
                s->armed = 0;
                continue;
            }
            if (tag == TAG_WAKE) {
                (void)!read(s->wake, &count, sizeof count);
                continue;
            }
            conn *c = &s->conns[tag];
            int rc = 0;
            if (c->state == CONNECTING)
                rc = connected(s, c);
            else if (c->state != FREE && (events[i].events & EPOLLOUT) && c->want_out)
                rc = push(s, c);
            if (rc == 0 && c->state != FREE && c->state != CONNECTING &&
                (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                rc = readable(s, c);
            if (rc < 0) {
                set_err(err, err_len, "sender", ENOMEM);
                return -1;
            }
        }
    }
}

void ds_send_free(ds_send *s) {
    if (!s)
        return;
    for (int i = 0; s->conns && i < s->max; i++) {
        conn *c = &s->conns[i];
        if (c->state != FREE)
            close(c->fd);
        if (c->state == BUSY)
            free(c->req.data);
        free(c->buf);
    }
    for (size_t i = 0; i < s->q_len; i++)
        free(s->queue[(s->q_head + i) % s->q_cap].data);
    free(s->queue);
    free(s->results);
    free(s->conns);
    if (s->ep >= 0)
        close(s->ep);
    if (s->timer >= 0)
        close(s->timer);
    if (s->wake >= 0)
        close(s->wake);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
