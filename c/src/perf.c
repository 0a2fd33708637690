/* perf: throughput and latency, as libzmq's own perf tools measure them (examples/perf/PROTOCOL.md):
   thr-sink and thr-source (local_thr, remote_thr), lat-echo and lat-ping (local_lat, remote_lat),
   inproc-thr (inproc_thr).

   The hot loops are what a performance-minded libzmq user writes: one zmq_msg_t reused for every
   receive (zmq_msg_recv releases what it held before); one zeroed buffer sent again and again
   with zmq_send, a new message per send as libzmq's remote_thr makes; the echo sending back the very
   message it received (zmq_msg_send hands it over, no copy); the send and receive timeouts
   (ZMQ_SNDTIMEO, ZMQ_RCVTIMEO) set once to --timeout instead of a poll per message; no event or
   log per message. The deadline is looked at once every 1000 messages. */
#include "perf.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <zmq.h>

#include "contract.h"
#include "frames.h"

/* --- shared by the ZeroMQ and the plain-TCP roles ------------------------------------------ */

bool perf_parse(int argc, char **argv, perf_args *args, int count, bool endpoint)
{
    *args = (perf_args){.endpoint = PERF_ENDPOINT, .size = 64, .count = count, .timeout = PERF_TIMEOUT};
    const flag_t flags[] = {
        TEXT_FLAG("endpoint", args->endpoint),
        NUMBER_FLAG("size", args->size, 0),
        NUMBER_FLAG("count", args->count, 1),
        NUMBER_FLAG("timeout", args->timeout, 0),
    };
    enum { FLAGS = sizeof flags / sizeof flags[0] };
    return endpoint ? parse_flags(argc, argv, flags, FLAGS) : parse_flags(argc, argv, flags + 1, FLAGS - 1);
}

/* Seconds between two now_ns() readings. Every figure must be a JSON number, so an interval
   shorter than the clock can see (one message) counts as one tick, never zero. */
static double seconds_between(int64_t started_ns, int64_t ended_ns)
{
    return (double)(ended_ns > started_ns ? ended_ns - started_ns : 1) / 1e9;
}

void emit_throughput(int size, int count, int64_t started_ns, int64_t ended_ns)
{
    double seconds = seconds_between(started_ns, ended_ns), rate = count / seconds;
    emit("result", "{s:i, s:i, s:f, s:f, s:f}", "size", size, "count", count, "seconds", seconds, "msg_per_s",
         rate, "mbit_per_s", rate * size * 8 / 1e6);
}

void emit_latency(int size, int count, int64_t started_ns, int64_t ended_ns)
{
    double seconds = seconds_between(started_ns, ended_ns);
    emit("result", "{s:i, s:i, s:f, s:f}", "size", size, "count", count, "seconds", seconds, "latency_us",
         seconds * 1e6 / (2.0 * count)); /* one way: half a round trip */
}

/* --- the hot loops -------------------------------------------------------------------------- */

/* Why a loop stopped. The loops return false with it instead of calling fail(): inproc-thr's
   source runs on a second thread, which must not exit the process. */
typedef struct {
    const char *code;
    char reason[REASON_SIZE];
} failure_t;

/* The deadline, looked at once every 1000 messages: cheap, and bounds the loop in time. */
static inline bool in_time(const deadline_t *deadline, int done, failure_t *failure)
{
    if (done % 1000 == 0 && deadline_expired(deadline)) {
        failure->code = problem(failure->reason, "timeout", "not finished by the deadline (%d messages)", done);
        return false;
    }
    return true;
}

/* One message into `message`: a single frame of exactly `size` bytes. ZMQ_RCVTIMEO bounds the
   wait (EAGAIN once it has passed). */
static inline bool receive(void *socket, zmq_msg_t *message, int size, failure_t *failure)
{
    while (zmq_msg_recv(message, socket, 0) < 0) {
        if (errno == EINTR)
            continue;
        failure->code = errno == EAGAIN ? problem(failure->reason, "timeout", "no message within the timeout")
                                        : problem(failure->reason, "recv", "zmq_msg_recv: %s", zmq_strerror(errno));
        return false;
    }
    if (zmq_msg_size(message) != (size_t)size || zmq_msg_more(message)) {
        failure->code = problem(failure->reason, "wrong-size", "a message of %zu bytes%s, expected %d",
                                zmq_msg_size(message), zmq_msg_more(message) ? " and more frames" : "", size);
        return false;
    }
    return true;
}

/* A send failed: ZMQ_SNDTIMEO passed (EAGAIN), or something else went wrong. */
static bool send_failed(failure_t *failure)
{
    failure->code = errno == EAGAIN ? problem(failure->reason, "timeout", "no room to send within the timeout")
                                    : problem(failure->reason, "send", "zmq_send: %s", zmq_strerror(errno));
    return false;
}

/* `size` zero bytes, from the one buffer every send reuses. zmq_send makes a message of them (an
   allocation and a copy for all but the smallest), as libzmq's remote_thr does with
   zmq_msg_init_size, so that the C figures are the ones the ZeroMQ community quotes. (Sending the
   buffer itself with zmq_send_const would skip both, and measured up to 2× more here at 64 B.)
   ZMQ_SNDTIMEO bounds the wait for room. */
static inline bool send_zeros(void *socket, const void *zeros, int size, failure_t *failure)
{
    while (zmq_send(socket, zeros, (size_t)size, 0) < 0)
        if (errno != EINTR)
            return send_failed(failure);
    return true;
}

/* The message just received, sent back as it is: zmq_msg_send takes it over (no copy) and leaves
   `message` empty for the next receive. */
static inline bool send_back(void *socket, zmq_msg_t *message, failure_t *failure)
{
    while (zmq_msg_send(message, socket, 0) < 0)
        if (errno != EINTR)
            return send_failed(failure);
    return true;
}

static _Noreturn void fail_with(const failure_t *failure)
{
    fail(failure->code, "%s", failure->reason);
}

/* The same `size` zero bytes, `count` times. */
static bool source(void *push, const void *zeros, int size, int count, const deadline_t *deadline,
                   failure_t *failure)
{
    for (int done = 0; done < count; done++) {
        /* PUSH blocks while the sink's queue and ours are full (the high-water mark, 1000
           messages each way by default): that flow control is part of what is measured. */
        if (!in_time(deadline, done, failure) || !send_zeros(push, zeros, size, failure))
            return false;
    }
    return true;
}

/* `count` messages; timed from the first one's arrival to the last one's (libzmq's local_thr). */
static bool sink(void *pull, int size, int count, const deadline_t *deadline, int64_t timed[2], failure_t *failure)
{
    zmq_msg_t message;
    zmq_msg_init(&message);
    bool ok = receive(pull, &message, size, failure);
    timed[0] = now_ns();
    for (int done = 1; ok && done < count; done++)
        ok = in_time(deadline, done, failure) && receive(pull, &message, size, failure);
    timed[1] = now_ns();
    zmq_msg_close(&message);
    return ok;
}

/* --- sockets -------------------------------------------------------------------------------- */

/* ZMQ_MAXMSGSIZE: a message is exactly --size bytes, and a frame above the limit never reaches
   us (libzmq drops it with the sender's connection); at least 256, room for the handshake's READY
   command, which the same limit bounds. */
static int64_t max_message(int size)
{
    return size > 256 ? size : 256;
}

/* A socket bound or connected to `endpoint`, with every send and receive bounded by --timeout
   (-1: no limit), set once here instead of a poll per message, and no frame larger than `size`
   allowed in (at least 256 bytes). */
static void *open_socket(void *context, int type, const char *endpoint, bool bind, int timeout, int linger,
                         int size)
{
    void *socket = zmq_socket(context, type);
    int wait = timeout > 0 ? timeout : -1;
    limit_socket(socket, linger, max_message(size));
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &wait, sizeof wait);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &wait, sizeof wait);
    if (bind && zmq_bind(socket, endpoint) < 0)
        fail("bind", "cannot bind %s: %s", endpoint, zmq_strerror(errno));
    if (!bind && zmq_connect(socket, endpoint) < 0)
        fail("connect", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    return socket;
}

/* The linger of a source (and of the echo): what is left of --timeout (-1, infinite, without one).
   Its last messages are still queued when zmq_send returns; zmq_ctx_term waits for them, never past
   the deadline. */
static void linger_until(void *socket, const deadline_t *deadline)
{
    int linger = (int)deadline_remaining(deadline);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
}

/* A zeroed buffer of `size` bytes (at least one, so that size 0 is not a NULL). */
static void *zeros(int size)
{
    void *buffer = calloc(1, size > 0 ? (size_t)size : 1);
    if (!buffer)
        fail("memory", "out of memory for a message of %d bytes", size);
    return buffer;
}

/* --- roles ---------------------------------------------------------------------------------- */

int perf_thr_sink(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, THROUGHPUT_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    /* PULL fair-queues from every connected PUSH; here there is one. */
    void *pull = open_socket(context, ZMQ_PULL, args.endpoint, true, args.timeout, 0, args.size);
    char endpoint[ENDPOINT_SIZE];
    last_endpoint(pull, endpoint);
    emit("ready", "{s:s}", "endpoint", endpoint);

    int64_t timed[2];
    failure_t failure;
    if (!sink(pull, args.size, args.count, &deadline, timed, &failure))
        fail_with(&failure);
    emit_throughput(args.size, args.count, timed[0], timed[1]);
    emit("done", "{}");
    zmq_close(pull);
    zmq_ctx_term(context);
    return 0;
}

int perf_thr_source(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, THROUGHPUT_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    void *message = zeros(args.size);
    void *context = zmq_ctx_new();
    /* PUSH: until it is connected to the sink, a send waits (up to ZMQ_SNDTIMEO). */
    void *push = open_socket(context, ZMQ_PUSH, args.endpoint, false, args.timeout, 0, args.size);
    emit("ready", "{}");

    failure_t failure;
    if (!source(push, message, args.size, args.count, &deadline, &failure))
        fail_with(&failure);
    emit("done", "{}");
    linger_until(push, &deadline);
    zmq_close(push);
    zmq_ctx_term(context); /* returns once the queue is delivered, or the linger has run out */
    free(message);
    return 0;
}

int perf_lat_echo(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, LATENCY_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    void *rep = open_socket(context, ZMQ_REP, args.endpoint, true, args.timeout, 0, args.size);
    char endpoint[ENDPOINT_SIZE];
    last_endpoint(rep, endpoint);
    emit("ready", "{s:s}", "endpoint", endpoint);

    zmq_msg_t message;
    zmq_msg_init(&message);
    failure_t failure;
    for (int done = 0; done < args.count; done++) {
        /* REP: the reply goes back to whoever asked, and REP takes no other request meanwhile. */
        if (!in_time(&deadline, done, &failure) || !receive(rep, &message, args.size, &failure) ||
            !send_back(rep, &message, &failure))
            fail_with(&failure);
    }
    zmq_msg_close(&message);
    emit("done", "{}");
    linger_until(rep, &deadline); /* like a source: the last reply is still queued */
    zmq_close(rep);
    zmq_ctx_term(context);
    return 0;
}

int perf_lat_ping(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, LATENCY_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    void *request = zeros(args.size);
    void *context = zmq_ctx_new();
    void *req = open_socket(context, ZMQ_REQ, args.endpoint, false, args.timeout, 0, args.size);
    emit("ready", "{}");

    zmq_msg_t reply;
    zmq_msg_init(&reply);
    failure_t failure;
    int64_t started = now_ns();
    for (int done = 0; done < args.count; done++) {
        /* REQ: strictly one request, then its reply (lockstep; a second send first would fail
           with EFSM), so the loop times whole round trips. */
        if (!in_time(&deadline, done, &failure) || !send_zeros(req, request, args.size, &failure) ||
            !receive(req, &reply, args.size, &failure))
            fail_with(&failure);
    }
    int64_t ended = now_ns();
    zmq_msg_close(&reply);
    emit_latency(args.size, args.count, started, ended);
    emit("done", "{}");
    zmq_close(req);
    zmq_ctx_term(context);
    free(request);
    return 0;
}

/* --- inproc-thr: both halves in one process -------------------------------------------------- */

/* The source's half, on its own thread. */
typedef struct {
    void *push, *message;
    int size, count;
    const deadline_t *deadline;
    bool ok;
    failure_t failure;
} sender_t;

static void *send_all(void *argument)
{
    sender_t *sender = argument;
    sender->ok = source(sender->push, sender->message, sender->size, sender->count, sender->deadline,
                        &sender->failure);
    return NULL;
}

int perf_inproc_thr(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, THROUGHPUT_COUNT, false))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    /* inproc:// is a queue between threads that the context carries, with no network stack and
       no I/O thread in the way: both sockets must come from this one context. The PULL binds
       first, so the endpoint exists when the PUSH connects. */
    void *context = zmq_ctx_new();
    void *pull = open_socket(context, ZMQ_PULL, "inproc://perf", true, args.timeout, 0, args.size);
    void *push = open_socket(context, ZMQ_PUSH, "inproc://perf", false, args.timeout, 0, args.size);
    emit("ready", "{}");

    /* A ZeroMQ socket is not thread-safe: from here on `push` belongs to the sender's thread
       alone (pthread_create is the full memory barrier that moving a socket requires), and
       `pull` to this one. */
    sender_t sender = {push, zeros(args.size), args.size, args.count, &deadline, false, {0}};
    pthread_t thread;
    if (pthread_create(&thread, NULL, send_all, &sender))
        fail("thread", "cannot start the source's thread");
    int64_t timed[2];
    failure_t failure;
    /* A failed sink exits at once: the sender, blocked on a full queue, goes with the process. */
    if (!sink(pull, args.size, args.count, &deadline, timed, &failure))
        fail_with(&failure);
    pthread_join(thread, NULL);
    if (!sender.ok)
        fail(sender.failure.code, "%s", sender.failure.reason);
    emit_throughput(args.size, args.count, timed[0], timed[1]);
    emit("done", "{}");
    linger_until(push, &deadline); /* everything is received already: nothing is left to wait for */
    zmq_close(push);
    zmq_close(pull);
    zmq_ctx_term(context);
    free(sender.message);
    return 0;
}
