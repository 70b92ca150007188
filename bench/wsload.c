/*
 * wsload: the subscribers of the pushsvc benchmark (see loadgen.py, which starts and drives it).
 *
 *     cc -O2 -o wsload wsload.c
 *     wsload HOST PORT PATH MODE [PER_ADDRESS]   MODE: pusher or plain
 *     wsload selftest                   check the quantiles against sorting; exit 0 if right
 *
 * One epoll loop holds the subscriber WebSockets and reads line commands from stdin; it answers
 * on stdout, one short line per answer. Commands:
 *
 *   connect N TIMEOUT_S CONCURRENCY   open N more subscribers, at most CONCURRENCY handshakes
 *                                     pending at a time; answered once each of these N is READY or
 *                                     closed, or at the timeout
 *   phase FIRST                       reset the counters (received, dup, ooo, latencies); FIRST
 *                                     is the phase's first sequence number, where `done` starts
 *   status                            answer the counts only
 *   pingreset                         count the subscribers that answered a ping afresh (Q: 0)
 *   stats                             the counters of the phase and its latencies
 *   dump PATH                         write the phase's latency samples to PATH (created or
 *                                     truncated): S native-endian int64 nanoseconds, unordered
 *   quit                              close everything and exit 0 (so does EOF on stdin)
 *
 * Answers (each ends with the counts over all subscribers of this process: READY now, closed so
 * far, the close codes seen so far, `-` for none, the server pings answered so far, and the
 * subscribers that answered at least one):
 *
 *   connected ready R closed C codes 4100=3,-1=2 pings P pinged Q
 *   phase ready R closed C codes - pings P pinged Q
 *   status ready R closed C codes - pings P pinged Q
 *   pingreset ready R closed C codes - pings P pinged 0
 *   stats received U dup D ooo O samples S p50 NS p99 NS max NS ready R closed C codes -
 *         pings P pinged Q   (on one line)
 *   dumped samples S ready R closed C codes - pings P pinged Q
 *   error TEXT
 *
 * and one asynchronous line, `done K`, whenever K grows: every READY subscriber has received
 * every sequence number from the phase's FIRST up to K (exclusive).
 *
 * Close codes: those of the server's close frames (1005 when a close frame has none), 0 for a
 * connection lost (or refused) without a close frame, -1 for a handshake answered with anything
 * but 101, -2 for codes beyond the 64 distinct ones kept.
 *
 * Source addresses: subscriber i binds to 127.0.0.(1 + i / PER_ADDRESS) before it connects
 * (PER_ADDRESS, default 25000, below the 28,232 ports of the usual ephemeral range 32768-60999),
 * so one wsload can hold more connections to one server port than one source address has ports.
 * IP_BIND_ADDRESS_NO_PORT leaves the port to connect(), which only needs the whole 4-tuple to be
 * unique. The soft RLIMIT_NOFILE is raised to the hard limit at start.
 *
 * A subscriber connects, sends the opening handshake and expects "HTTP/1.1 101". In pusher mode
 * it waits for pusher:connection_established, subscribes to the channel "bench" and is READY on
 * pusher_internal:subscription_succeeded; in plain mode it is READY on the text frame "ok". Server
 * frames must be unmasked and unfragmented; pings are answered with a pong, a close frame's code
 * is recorded and the socket closed. Each text frame a READY subscriber gets carries
 * "s:<sequence>:t:<CLOCK_MONOTONIC ns at publish>:"; U counts the unique (subscriber, sequence)
 * pairs, D the repeated ones, O those below the subscriber's highest sequence so far. S latencies
 * (one per event frame, receive time minus publish time, the clock read once per recv) are kept;
 * quantile q is sorted[min(S-1, int(q*S))], 0 when S is 0. Sequence numbers and what each
 * subscriber has seen go on across phases.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, JOINING, READY, CLOSED };

#define STDIN_TAG UINT64_MAX
#define MAX_EVENTS 4096
#define MAX_SEQ (1LL << 31)
#define MAX_CODES 64

typedef struct {
    int fd;
    uint8_t state;
    uint8_t pinged;        /* answered a ping */
    uint32_t batch;        /* the connect command that opened it */
    unsigned char *buf;    /* an incomplete frame (or handshake answer) kept between recvs */
    size_t len, cap;
    int64_t last;          /* highest sequence number seen, -1 */
    uint64_t *seen;        /* bitmap of the sequence numbers seen */
    size_t seenWords;
} Conn;

static Conn *conns;
static size_t nConns, capConns;
static int ep;
static int pusherMode;
static struct sockaddr_in addr;
static char handshake[2048];
static size_t handshakeLen;
static unsigned char subscribeFrame[128];
static size_t subscribeLen;
static unsigned char maskKey[4];
static unsigned char rbuf[256 * 1024];

static size_t ready, pending;  /* pending: CONNECTING, HANDSHAKE or JOINING */
static uint64_t pings, pinged;  /* server pings answered; subscribers that answered one */
static size_t perAddress = 25000;  /* subscribers per source address */
static size_t opened;  /* sockets made so far: the next one's source address */

/* the phase */
static uint64_t received, duplicated, outOfOrder;
static int64_t *lat;
static size_t nLat, capLat;

/* per sequence number: READY subscribers that have it */
static int32_t *recvCount;
static size_t capCount;
static int64_t done, doneSent, maxSeq = -1;

/* close codes */
static int codeOf[MAX_CODES];
static uint64_t codeCount[MAX_CODES];
static int nCodes;
static uint64_t closedTotal;

/* the running connect command */
static int connecting;
static uint32_t batch;
static size_t toOpen, batchLeft, concurrency;
static int64_t deadlineNs;

static void die(const char *what) {
    fprintf(stderr, "wsload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *grow(void *p, size_t bytes) {
    void *q = realloc(p, bytes);
    if (q == NULL) die("realloc");
    return q;
}

static int64_t nowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void answer(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void answer(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (fflush(stdout) != 0) exit(1);  /* the controller is gone */
}

static const char *codesText(void) {
    static char text[MAX_CODES * 24 + 2];
    size_t n = 0;
    if (nCodes == 0) return "-";
    for (int i = 0; i < nCodes; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%s%d=%llu", i ? "," : "", codeOf[i],
                              (unsigned long long)codeCount[i]);
    return text;
}

static void recordCode(int code) {
    int i;
    closedTotal++;
    for (i = 0; i < nCodes && codeOf[i] != code; i++) continue;
    if (i == nCodes && nCodes >= MAX_CODES - 1) {  /* the last place is for all the others */
        code = -2;
        for (i = 0; i < nCodes && codeOf[i] != code; i++) continue;
    }
    if (i == nCodes) codeOf[nCodes++] = code;
    codeCount[i]++;
}

/* -- sequence bookkeeping ------------------------------------------------------------------- */

static void ensureCount(int64_t seq) {
    if ((size_t)seq < capCount) return;
    size_t cap = capCount ? capCount * 2 : 4096;
    while (cap <= (size_t)seq) cap *= 2;
    recvCount = grow(recvCount, cap * sizeof *recvCount);
    memset(recvCount + capCount, 0, (cap - capCount) * sizeof *recvCount);
    capCount = cap;
}

static void ensureSeen(Conn *c, int64_t seq) {
    size_t word = (size_t)seq >> 6;
    if (word < c->seenWords) return;
    size_t words = c->seenWords ? c->seenWords * 2 : 16;
    while (words <= word) words *= 2;
    c->seen = grow(c->seen, words * sizeof *c->seen);
    memset(c->seen + c->seenWords, 0, (words - c->seenWords) * sizeof *c->seen);
    c->seenWords = words;
}

static int hasSeen(const Conn *c, int64_t seq) {
    size_t word = (size_t)seq >> 6;
    return word < c->seenWords && (c->seen[word] >> (seq & 63) & 1);
}

/* Advance `done` past every sequence number all READY subscribers have; say so if it moved. */
static void advanceDone(void) {
    if (ready) {
        while ((size_t)done < capCount && recvCount[done] >= (int32_t)ready) done++;
    } else if (done <= maxSeq) {
        done = maxSeq + 1;
    }
    if (done > doneSent) {
        doneSent = done;
        answer("done %lld\n", (long long)done);
    }
}

/* -- subscribers ---------------------------------------------------------------------------- */

static void settled(Conn *c) {
    if (connecting && c->batch == batch) batchLeft--;
}

static void closeConn(Conn *c, int code) {
    if (c->state == CLOSED) return;
    if (c->state == READY) {
        /* what it had no longer counts towards `done` */
        for (int64_t s = done; s <= c->last && (size_t)s < capCount; s++)
            if (hasSeen(c, s)) recvCount[s]--;
        ready--;
    } else {
        pending--;
        settled(c);
    }
    c->state = CLOSED;
    recordCode(code);
    close(c->fd);  /* leaves the epoll set too */
    free(c->buf);
    free(c->seen);
    c->buf = NULL;
    c->seen = NULL;
    c->len = c->cap = c->seenWords = 0;
}

static void becomeReady(Conn *c) {
    c->state = READY;
    ready++;
    pending--;
    settled(c);
}

static void sendFrame(Conn *c, const void *data, size_t n) {
    ssize_t sent = send(c->fd, data, n, MSG_NOSIGNAL);
    if (sent != (ssize_t)n) closeConn(c, 0);  /* a few bytes on a fresh socket: never short */
}

static void openConn(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    static int warned;
    if (fd >= 0) {
        int one = 1;
        size_t host = 1 + opened++ / perAddress;  /* 127.0.0.1, then .2, .3, ... */
        struct sockaddr_in src = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(0x7F000000u | (uint32_t)host)};
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (host < 255 && bind(fd, (struct sockaddr *)&src, sizeof src) == 0 &&
            (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EINPROGRESS)) {
            if (nConns == capConns) {
                capConns = capConns ? capConns * 2 : 1024;
                conns = grow(conns, capConns * sizeof *conns);
            }
            Conn *c = &conns[nConns];
            memset(c, 0, sizeof *c);
            c->fd = fd;
            c->state = CONNECTING;
            c->batch = batch;
            c->last = -1;
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = nConns};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
            nConns++;
            pending++;
            return;
        }
        close(fd);
    }
    if (!warned++) fprintf(stderr, "wsload: cannot connect: %s\n", strerror(errno));
    recordCode(0);
    batchLeft--;
}

static void onConnected(Conn *c, size_t index) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
        closeConn(c, 0);
        return;
    }
    c->state = HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = index};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    sendFrame(c, handshake, handshakeLen);
}

/* The sequence number and publish time in an event's payload: "s:<seq>:t:<ns>:". */
static int parseEvent(const unsigned char *p, size_t n, int64_t *seq, int64_t *ns) {
    const unsigned char *end = p + n, *q = p;
    while ((q = memmem(q, (size_t)(end - q), "s:", 2)) != NULL) {
        const unsigned char *r = q + 2;
        int64_t a = 0, b = 0;
        int digits = 0;
        q++;
        for (; r < end && *r >= '0' && *r <= '9' && digits < 18; r++, digits++)
            a = a * 10 + (*r - '0');
        if (!digits || end - r < 3 || memcmp(r, ":t:", 3) != 0) continue;
        r += 3;
        for (digits = 0; r < end && *r >= '0' && *r <= '9' && digits < 19; r++, digits++)
            b = b * 10 + (*r - '0');
        if (!digits || r == end || *r != ':') continue;
        *seq = a;
        *ns = b;
        return 1;
    }
    return 0;
}

static void onEvent(Conn *c, const unsigned char *payload, size_t n, int64_t now) {
    int64_t seq, ns;
    if (!parseEvent(payload, n, &seq, &ns) || seq >= MAX_SEQ) return;
    if (nLat == capLat) {
        capLat = capLat ? capLat * 2 : 1 << 20;
        lat = grow(lat, capLat * sizeof *lat);
    }
    lat[nLat++] = now - ns;
    ensureSeen(c, seq);
    uint64_t bit = 1ULL << (seq & 63), *word = &c->seen[seq >> 6];
    if (*word & bit) {
        duplicated++;
        return;
    }
    *word |= bit;
    received++;
    ensureCount(seq);
    recvCount[seq]++;
    if (seq > maxSeq) maxSeq = seq;
    if (seq < c->last)
        outOfOrder++;
    else
        c->last = seq;
}

static void onJoining(Conn *c, const unsigned char *payload, size_t n) {
    if (!pusherMode) {
        if (n == 2 && memcmp(payload, "ok", 2) == 0) becomeReady(c);
    } else if (memmem(payload, n, "pusher:connection_established", 29)) {
        sendFrame(c, subscribeFrame, subscribeLen);
    } else if (memmem(payload, n, "pusher_internal:subscription_succeeded", 38)) {
        becomeReady(c);
    }
}

static void pong(Conn *c, const unsigned char *payload, size_t n) {
    unsigned char frame[2 + 4 + 125];
    if (n > 125) return;  /* not a valid ping */
    pings++;
    if (!c->pinged) {
        c->pinged = 1;
        pinged++;
    }
    frame[0] = 0x8A;
    frame[1] = (unsigned char)(0x80 | n);
    memcpy(frame + 2, maskKey, 4);
    for (size_t i = 0; i < n; i++) frame[6 + i] = payload[i] ^ maskKey[i & 3];
    sendFrame(c, frame, 6 + n);
}

/* Handle the whole frames in p[0..n); @return: the bytes used, or -1 when c was closed. */
static ssize_t onFrames(Conn *c, const unsigned char *p, size_t n, int64_t now) {
    size_t pos = 0;
    while (n - pos >= 2) {
        unsigned op = p[pos] & 0x0F, b1 = p[pos + 1];
        uint64_t len = b1 & 0x7F;
        size_t header = 2;
        if (b1 & 0x80) {  /* servers do not mask */
            closeConn(c, 1002);
            return -1;
        }
        if (len == 126) {
            if (n - pos < 4) break;
            len = (uint64_t)p[pos + 2] << 8 | p[pos + 3];
            header = 4;
        } else if (len == 127) {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 2; i < 10; i++) len = len << 8 | p[pos + i];
            header = 10;
        }
        if (len > n - pos - header) break;
        const unsigned char *payload = p + pos + header;
        pos += header + len;
        if (op == 0x1) {
            if (c->state == READY)
                onEvent(c, payload, len, now);
            else
                onJoining(c, payload, len);
        } else if (op == 0x9) {
            pong(c, payload, len);
        } else if (op == 0x8) {
            closeConn(c, len >= 2 ? payload[0] << 8 | payload[1] : 1005);
            return -1;
        }
        if (c->state == CLOSED) return -1;
    }
    return (ssize_t)pos;
}

static void keep(Conn *c, size_t need) {
    if (c->cap >= need) return;
    size_t cap = c->cap ? c->cap * 2 : 4096;
    while (cap < need) cap *= 2;
    c->buf = grow(c->buf, cap);
    c->cap = cap;
}

static void onReadable(Conn *c) {
    unsigned char *p;
    ssize_t got;
    if (c->len == 0) {
        got = recv(c->fd, rbuf, sizeof rbuf, 0);
        p = rbuf;
    } else {  /* after an incomplete frame: read on behind it */
        keep(c, c->len + 65536);
        got = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        p = c->buf;
    }
    if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
        closeConn(c, 0);
        return;
    }
    int64_t now = nowNs();
    size_t n = c->len + (size_t)got, start = 0;
    if (c->state == HANDSHAKE) {
        unsigned char *end = memmem(p, n, "\r\n\r\n", 4);
        if (end == NULL) {
            if (p == rbuf) {
                keep(c, n);
                memcpy(c->buf, p, n);
            }
            c->len = n;
            return;
        }
        if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
            closeConn(c, -1);
            return;
        }
        c->state = JOINING;
        start = (size_t)(end - p) + 4;
    }
    ssize_t used = onFrames(c, p + start, n - start, now);
    if (used < 0) return;
    size_t rest = n - start - (size_t)used;
    if (rest && p == rbuf) {
        keep(c, rest);
        memcpy(c->buf, p + n - rest, rest);
    } else if (rest) {
        memmove(c->buf, p + n - rest, rest);
    }
    c->len = rest;
}

/* -- commands ------------------------------------------------------------------------------- */

static void swap64(int64_t *a, int64_t *b) {
    int64_t t = *a;
    *a = *b;
    *b = t;
}

/* Put the k-th smallest of a[lo..hi) at a[k], smaller ones before it, larger after. */
static void selectKth(int64_t *a, size_t lo, size_t hi, size_t k) {
    while (hi - lo > 1) {
        int64_t x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1], pivot;
        if ((x <= y) == (y <= z))
            pivot = y;
        else if ((y <= x) == (x <= z))
            pivot = x;
        else
            pivot = z;
        size_t lt = lo, i = lo, gt = hi;  /* [lo,lt) < pivot, [lt,i) == pivot, [gt,hi) > */
        while (i < gt) {
            if (a[i] < pivot)
                swap64(&a[lt++], &a[i++]);
            else if (a[i] > pivot)
                swap64(&a[i], &a[--gt]);
            else
                i++;
        }
        if (k < lt)
            hi = lt;
        else if (k >= gt)
            lo = gt;
        else
            return;
    }
}

/*
 * The median, 99th percentile and maximum of a[0..n), which it reorders: the k-th smallest is
 * a[k] once selectKth(a, 0, n, k) returned, everything before it no larger, everything after it
 * no smaller. So p99 is read before the median is selected among the elements before it (a
 * selection over a range that includes k99 may move a[k99]).
 */
static void quantiles(int64_t *a, size_t n, int64_t *p50, int64_t *p99, int64_t *max) {
    *p50 = *p99 = *max = 0;
    if (n == 0) return;
    size_t k99 = (size_t)(0.99 * (double)n), k50 = (size_t)(0.5 * (double)n);
    if (k99 > n - 1) k99 = n - 1;
    if (k50 > k99) k50 = k99;
    selectKth(a, 0, n, k99);
    *p99 = *max = a[k99];
    for (size_t i = k99 + 1; i < n; i++)
        if (a[i] > *max) *max = a[i];
    selectKth(a, 0, k99, k50);
    *p50 = a[k50];
}

/* `wsload selftest`: quantiles() against sorting, on shuffled and repetitive samples. */
static int compare64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static int selftest(void) {
    static const size_t sizes[] = {1, 2, 3, 99, 100, 101, 1000, 4099, 400000};
    uint32_t seed = 12345;
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (int shape = 0; shape < 3; shape++) {
            size_t n = sizes[s];
            int64_t *a = malloc(n * sizeof *a), *sorted = malloc(n * sizeof *a);
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                /* distinct, few distinct values, or ascending runs as a fan-out gives */
                a[i] = shape == 0 ? (int64_t)seed : shape == 1 ? (int64_t)(seed % 7)
                                                                : (int64_t)(i % 1000) * 1000;
            }
            memcpy(sorted, a, n * sizeof *a);
            qsort(sorted, n, sizeof *a, compare64);
            int64_t p50, p99, max;
            quantiles(a, n, &p50, &p99, &max);
            size_t k99 = (size_t)(0.99 * (double)n), k50 = (size_t)(0.5 * (double)n);
            if (k99 > n - 1) k99 = n - 1;
            if (p50 != sorted[k50] || p99 != sorted[k99] || max != sorted[n - 1]) {
                printf("selftest failed: n %zu shape %d: p50 %lld/%lld p99 %lld/%lld "
                       "max %lld/%lld\n", n, shape, (long long)p50, (long long)sorted[k50],
                       (long long)p99, (long long)sorted[k99], (long long)max,
                       (long long)sorted[n - 1]);
                return 1;
            }
            free(a);
            free(sorted);
        }
    }
    printf("selftest ok\n");
    return 0;
}

static void stats(void) {
    int64_t p50, p99, max;
    size_t n = nLat;
    quantiles(lat, n, &p50, &p99, &max);
    answer("stats received %llu dup %llu ooo %llu samples %zu p50 %lld p99 %lld max %lld "
           "ready %zu closed %llu codes %s pings %llu pinged %llu\n",
           (unsigned long long)received, (unsigned long long)duplicated,
           (unsigned long long)outOfOrder, n, (long long)p50, (long long)p99, (long long)max,
           ready, (unsigned long long)closedTotal, codesText(), (unsigned long long)pings,
           (unsigned long long)pinged);
}

static void counts(const char *kind) {
    answer("%s ready %zu closed %llu codes %s pings %llu pinged %llu\n", kind, ready,
           (unsigned long long)closedTotal, codesText(), (unsigned long long)pings,
           (unsigned long long)pinged);
}

/* `dump PATH`: the phase's latency samples, raw, for the benchmark's pictures. */
static void dump(const char *path) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        answer("error dump %s: %s\n", path, strerror(errno));
        return;
    }
    size_t wrote = nLat ? fwrite(lat, sizeof *lat, nLat, f) : 0;
    if (fclose(f) != 0 || wrote != nLat) {
        answer("error dump %s: %s\n", path, strerror(errno));
        return;
    }
    answer("dumped samples %zu ready %zu closed %llu codes %s pings %llu pinged %llu\n", nLat,
           ready, (unsigned long long)closedTotal, codesText(), (unsigned long long)pings,
           (unsigned long long)pinged);
}

/* Open what the connect command still may; answer it once all of its subscribers settled. */
static void driveConnect(void) {
    while (toOpen > 0 && pending < concurrency) {
        toOpen--;
        openConn();
    }
    if (batchLeft == 0 || nowNs() >= deadlineNs) {
        connecting = 0;
        toOpen = 0;
        counts("connected");
    }
}

static void command(char *line) {
    long long n, first, most;
    double timeout;
    if (sscanf(line, "connect %lld %lf %lld", &n, &timeout, &most) == 3 && n >= 0 && most > 0) {
        if (connecting) {
            answer("error a connect is running\n");
            return;
        }
        connecting = 1;
        batch++;
        toOpen = batchLeft = (size_t)n;
        concurrency = (size_t)most;
        deadlineNs = nowNs() + (int64_t)(timeout * 1e9);
        driveConnect();
    } else if (sscanf(line, "phase %lld", &first) == 1 && first >= 0) {
        received = duplicated = outOfOrder = 0;
        nLat = 0;
        done = doneSent = first;
        counts("phase");
    } else if (strcmp(line, "status") == 0) {
        counts("status");
    } else if (strcmp(line, "pingreset") == 0) {
        for (size_t i = 0; i < nConns; i++) conns[i].pinged = 0;
        pinged = 0;
        counts("pingreset");
    } else if (strcmp(line, "stats") == 0) {
        stats();
    } else if (strncmp(line, "dump ", 5) == 0 && line[5] != '\0') {
        dump(line + 5);
    } else if (strcmp(line, "quit") == 0) {
        exit(0);  /* the kernel closes the sockets */
    } else {
        answer("error unknown command\n");
    }
}

static void onStdin(void) {
    static char in[4096];
    static size_t have;
    ssize_t got = read(0, in + have, sizeof in - 1 - have);
    if (got == 0) exit(0);
    if (got < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        die("read stdin");
    }
    have += (size_t)got;
    char *start = in, *nl;
    while ((nl = memchr(start, '\n', (size_t)(in + have - start))) != NULL) {
        *nl = '\0';
        command(start);
        start = nl + 1;
    }
    have = (size_t)(in + have - start);
    memmove(in, start, have);
    if (have == sizeof in - 1) have = 0;  /* no line is that long: drop it */
}

/* -- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "selftest") == 0) return selftest();
    if ((argc != 5 && argc != 6) ||
        (strcmp(argv[4], "pusher") != 0 && strcmp(argv[4], "plain") != 0) ||
        (argc == 6 && (perAddress = strtoul(argv[5], NULL, 10)) == 0)) {
        fprintf(stderr, "usage: wsload HOST PORT PATH pusher|plain [PER_ADDRESS]\n");
        return 2;
    }
    const char *host = argv[1], *port = argv[2], *path = argv[3];
    pusherMode = strcmp(argv[4], "pusher") == 0;
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    int err = getaddrinfo(host, port, &hints, &ai);
    if (err) {
        fprintf(stderr, "wsload: %s:%s: %s\n", host, port, gai_strerror(err));
        return 2;
    }
    memcpy(&addr, ai->ai_addr, sizeof addr);
    freeaddrinfo(ai);

    int len = snprintf(handshake, sizeof handshake,
                       "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n",
                       path, host, port);
    if (len < 0 || (size_t)len >= sizeof handshake) {
        fprintf(stderr, "wsload: path too long\n");
        return 2;
    }
    handshakeLen = (size_t)len;

    uint32_t seed = (uint32_t)nowNs() ^ (uint32_t)getpid() * 2654435761u;
    for (int i = 0; i < 4; i++) maskKey[i] = (unsigned char)(seed >> (8 * i));
    static const char subscribe[] = "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"bench\"}}";
    size_t n = sizeof subscribe - 1;
    subscribeFrame[0] = 0x81;
    subscribeFrame[1] = (unsigned char)(0x80 | n);
    memcpy(subscribeFrame + 2, maskKey, 4);
    for (size_t i = 0; i < n; i++)
        subscribeFrame[6 + i] = (unsigned char)subscribe[i] ^ maskKey[i & 3];
    subscribeLen = 6 + n;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0) die("epoll_ctl stdin");

    static struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int k = epoll_wait(ep, events, MAX_EVENTS, connecting ? 20 : -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == STDIN_TAG) {
                onStdin();
                continue;
            }
            Conn *c = &conns[tag];
            if (c->state == CONNECTING)
                onConnected(c, (size_t)tag);
            else if (c->state != CLOSED)
                onReadable(c);
        }
        if (connecting) driveConnect();
        advanceDone();
    }
}
