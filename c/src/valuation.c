/* valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md). */
#include "valuation.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "contract.h"
#include "frames.h"
#include "monitor.h"
#include "names.h"
#include "ticker.h"

static const char *const SYMBOLS[] = {"AAPL", "GOOG", "GOOGL", "MSFT", "IBM"};
enum {
    RESEND_BATCH = 1000, /* ids per resend message */
    MAX_QUANTITY = 1000,
    MIN_CENTS = 100,
    MAX_CENTS = 100099,
};
/* [max size] ZMQ_MAXMSGSIZE, 256 bytes on every socket, send-only ones included, set before bind or
   connect: a frame above it never reaches us (libzmq drops it with the sender's connection), so
   no peer can make a role allocate without bound. The largest legal frames are a 32-byte worker
   name, `finished` and the 8-byte ids and values; 256 leaves room for the handshake's READY
   command, which the limit also bounds. */
static const int64_t MAX_MESSAGE = VALUATION_MAX_MESSAGE;

const char *const STATES[] = {"waiting", "go", "finished"};

/* A control message that is the one-frame state `state`. */
static bool is_state(const frames_t *message, state_t state)
{
    return message->count == 1 && frame_is(message, 0, STATES[state]);
}

/* The sizes of a message's frames, "[6, 1, 8]", for a reason; the first 8 frames at most. */
static const char *frame_sizes(const frames_t *message, char text[64])
{
    size_t used = snprintf(text, 64, "[");
    for (size_t i = 0; i < message->count && i < 8; i++)
        used += snprintf(text + used, 64 - used, "%s%zu", i ? ", " : "", frame_size(message, i));
    snprintf(text + used, 64 - used, "%s]", message->count > 8 ? ", ..." : "");
    return text;
}

/* An id as a JSON number. jansson's integers are signed 64-bit; only an id a rogue peer made up
   can be larger, and then it is shown as a real. */
static json_t *json_id(uint64_t id)
{
    return id <= INT64_MAX ? json_integer((json_int_t)id) : json_real((double)id);
}

/* --- orders: a generator anyone can recompute ----------------------------------------------- */

typedef struct {
    const char *symbol;
    char side; /* 'B' (buy) or 'S' (sell) */
    uint32_t quantity;
    int64_t cents;
} order_t;

/* Order `id` of the batch of `seed`: uint64_t arithmetic, modulo 2^64 (splitmix64: ticker.h). */
static order_t order(uint64_t seed, uint64_t id)
{
    uint64_t z1 = splitmix64(seed ^ (id * GOLDEN));
    uint64_t z2 = splitmix64(z1);
    uint64_t z3 = splitmix64(z2);
    return (order_t){
        .symbol = SYMBOLS[z1 % 5],
        .side = z2 % 2 == 0 ? 'B' : 'S',
        .quantity = 1 + (uint32_t)((z2 >> 1) % MAX_QUANTITY),
        .cents = MIN_CENTS + (int64_t)(z3 % 100000),
    };
}

/* quantity × cents, negated for a sell. Exact: at most 1000 × 100099, which every order has
   (the worker checks the ranges of an order it receives). */
static int64_t value(char side, uint32_t quantity, int64_t cents)
{
    return (side == 'B' ? 1 : -1) * (int64_t)quantity * cents;
}

order_frames_t order_frames(uint64_t seed, uint64_t id)
{
    order_t o = order(seed, id);
    order_frames_t frames = {.symbol = o.symbol, .side = o.side};
    put_be64(frames.id, id);
    put_be32(frames.quantity, o.quantity);
    put_be64(frames.cents, (uint64_t)o.cents); /* two's complement, had it a sign */
    return frames;
}

void order_parts(const order_frames_t *frames, part_t parts[5])
{
    parts[0] = (part_t){frames->id, 8};
    parts[1] = (part_t){frames->symbol, strlen(frames->symbol)};
    parts[2] = (part_t){&frames->side, 1};
    parts[3] = (part_t){frames->quantity, 4};
    parts[4] = (part_t){frames->cents, 8};
}

int valuation_encode(int argc, char **argv)
{
    uint64_t seed, id;
    const flag_t flags[] = {
        REQUIRED_FLAG("seed", parse_u64, seed),
        REQUIRED_FLAG("id", parse_u64, id),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    order_frames_t frames = order_frames(seed, id);
    order_t o = order(seed, id);
    char text[5][HEX_SIZE];
    emit("encoded", "{s:[s,s,s,s,s], s:I}", "frames", hex(frames.id, 8, text[0]),
         hex(frames.symbol, strlen(frames.symbol), text[1]), hex(&frames.side, 1, text[2]),
         hex(frames.quantity, 4, text[3]), hex(frames.cents, 8, text[4]), "value",
         (json_int_t)value(o.side, o.quantity, o.cents));
    emit("done", "{}");
    return 0;
}

/* --- sink ----------------------------------------------------------------------------------- */

/* A result, checked: its fields point into the message. */
typedef struct {
    const char *worker;
    size_t worker_size;
    uint64_t id;
    int64_t value;
} result_t;

/* The first broken rule of a result as its error code, with a `reason`; NULL when it is good.
   Nothing a worker says is trusted: the value must be the one we recompute from --seed. */
static const char *check_result(const frames_t *message, const sink_args *args, result_t *result,
                                char reason[REASON_SIZE])
{
    char sizes[64];
    if (message->count != 4 || !frame_is(message, 0, "result"))
        return problem(reason, "malformed-result", "not [result, name, id, value]: %s bytes",
                       frame_sizes(message, sizes));
    result->worker = frame_data(message, 1);
    result->worker_size = frame_size(message, 1);
    if (!utf8_valid(result->worker, result->worker_size, NULL))
        return problem(reason, "malformed-result", "the worker name is not UTF-8");
    if (!is_name(result->worker, result->worker_size))
        return problem(reason, "malformed-result", "a worker name of %zu bytes", result->worker_size);
    if (frame_size(message, 2) != 8 || frame_size(message, 3) != 8)
        return problem(reason, "malformed-result", "the id and the value have %zu and %zu bytes, not 8",
                       frame_size(message, 2), frame_size(message, 3));
    result->id = get_be64(frame_data(message, 2));
    if (result->id < 1 || result->id > (uint64_t)args->count)
        return problem(reason, "unknown-id", "id %llu is not in 1..%d", (unsigned long long)result->id,
                       args->count);
    result->value = (int64_t)get_be64(frame_data(message, 3));
    order_t o = order(args->seed, result->id);
    int64_t expected = value(o.side, o.quantity, o.cents);
    if (result->value != expected)
        return problem(reason, "wrong-value", "order %llu is worth %lld cents, not %lld",
                       (unsigned long long)result->id, (long long)expected, (long long)result->value);
    return NULL;
}

/* PUB never blocks: with no subscriber, or one past its high-water mark, the message is dropped;
   the heartbeat repeats the state. */
void sink_set_state(sink_t *sink, state_t state)
{
    sink->state = state;
    send_frame(sink->control, STATES[state], strlen(STATES[state]), false); /* at once */
}

/* A ready is exactly [ready, name], the name 1 to 32 bytes of UTF-8: anything else is not a
   worker. The reason gives sizes, never the peer's bytes. */
void sink_on_ready(sink_t *sink, const frames_t *message)
{
    if (message->count != 2) {
        emit_error("malformed-ready", "a ready has 2 frames, got %zu", message->count);
        return;
    }
    const char *name = frame_data(message, 1);
    size_t size = frame_size(message, 1);
    if (size < 1 || size > MAX_NAME) {
        emit_error("malformed-ready", "a ready's name has %zu bytes, not 1 to %d", size, MAX_NAME);
        return;
    }
    if (!utf8_valid(name, size, NULL)) {
        emit_error("malformed-ready", "a ready's name is not UTF-8");
        return;
    }
    bool added;
    names_get(&sink->ready, name, size, &added);
    if (added)
        emit("worker", "{s:s%}", "name", name, size);
}

bool sink_start_when_ready(sink_t *sink)
{
    if (sink->state != WAITING || sink->ready.count < (size_t)sink->args.workers)
        return false;
    /* Every worker heard a control message before it said ready, so its SUB is connected and
       cannot miss this one. */
    sink_set_state(sink, GO);
    emit("started", "{s:i}", "workers", (int)sink->ready.count);
    sink->quiet_since = now_ms();
    return true;
}

void sink_on_result(sink_t *sink, const frames_t *message)
{
    result_t result = {0};
    char reason[REASON_SIZE];
    const char *code = check_result(message, &sink->args, &result, reason);
    if (code) {
        emit_error(code, "%s", reason); /* not counted */
        return;
    }
    json_int_t id = (json_int_t)result.id; /* at most --count */
    if (sink->have[id] && sink->resent[id]) {
        /* We asked for it twice: the first worker was slow, not dead. */
        emit("late-duplicate", "{s:I, s:s%}", "id", id, "worker", result.worker, result.worker_size);
        return;
    }
    if (sink->have[id]) {
        emit_error("duplicate", "a second result for order %lld, from %.*s", (long long)id,
                   (int)result.worker_size, result.worker);
        return;
    }
    sink->have[id] = true;
    sink->counted++;
    sink->total += result.value;
    names_get(&sink->priced, result.worker, result.worker_size, NULL)->value++;
    sink->quiet_since = now_ms();
    emit("result", "{s:I, s:s%}", "id", id, "worker", result.worker, result.worker_size);
    if (sink->counted == sink->args.count) {
        sink_set_state(sink, FINISHED); /* the heartbeat repeats it */
        json_t *workers = json_object(), *resent = json_array();
        for (size_t i = 0; i < sink->priced.count; i++)
            json_object_setn_new(workers, sink->priced.entry[i].bytes, sink->priced.entry[i].size,
                                 json_integer(sink->priced.entry[i].value));
        for (int i = 1; i <= sink->args.count; i++) /* ascending */
            if (sink->resent[i])
                json_array_append_new(resent, json_integer(i));
        emit("complete", "{s:I, s:o, s:o}", "total", (json_int_t)sink->total, "workers", workers, "resent",
             resent);
    }
}

/* Nothing is acknowledged in PUSH/PULL: orders queued for a worker that died are gone without a
   trace. Only the sink can see what is missing, so it asks the source again, on the control
   channel: every missing id, ascending, RESEND_BATCH ids a message. */
int sink_missing(sink_t *sink, int *missing)
{
    int found = 0;
    for (int id = 1; id <= sink->args.count; id++)
        if (!sink->have[id]) {
            missing[found++] = id;
            sink->resent[id] = true;
        }
    return found;
}

static void resend_missing(sink_t *sink)
{
    int *missing = malloc((size_t)sink->args.count * sizeof *missing);
    if (!missing)
        fail("memory", "out of memory");
    int found = sink_missing(sink, missing);
    json_t *ids = json_array();
    for (int i = 0; i < found; i++)
        json_array_append_new(ids, json_integer(missing[i]));
    for (int start = 0; start < found; start += RESEND_BATCH) {
        int end = found - start > RESEND_BATCH ? start + RESEND_BATCH : found;
        send_frame(sink->control, "resend", strlen("resend"), true);
        for (int i = start; i < end; i++) {
            unsigned char frame[8];
            put_be64(frame, (uint64_t)missing[i]);
            send_frame(sink->control, frame, 8, i + 1 < end); /* ZMQ_SNDMORE but for the last */
        }
    }
    free(missing);
    emit("resend", "{s:o}", "ids", ids);
}

int valuation_sink(int argc, char **argv)
{
    sink_t sink = {
        .args = {
            .results = "tcp://127.0.0.1:5560",
            .control = "tcp://127.0.0.1:5561",
            .workers = 1,
            .count = 100,
            .quiet = 1000,
            .heartbeat = 100,
            .seed = 1,
        },
        .state = WAITING,
    };
    sink_args *args = &sink.args;
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("results", args->results),
        TEXT_FLAG("control", args->control),
        NUMBER_FLAG("workers", args->workers, 1),
        NUMBER_FLAG("count", args->count, 1),
        NUMBER_FLAG("quiet", args->quiet, 1),
        NUMBER_FLAG("heartbeat", args->heartbeat, 1),
        PARSED_FLAG("seed", parse_u64, args->seed),
        NUMBER_FLAG("timeout", args->timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    stop_on_signals();
    deadline_t deadline = deadline_start(args->timeout);
    sink.have = calloc((size_t)args->count + 1, sizeof *sink.have);
    sink.resent = calloc((size_t)args->count + 1, sizeof *sink.resent);
    if (!sink.have || !sink.resent)
        fail("memory", "out of memory for %d orders", args->count);
    void *context = zmq_ctx_new();
    /* [PULL] fair-queues readiness and results from every connected worker, one message from each
       in turn: no one worker can starve the rest. */
    sink.results = zmq_socket(context, ZMQ_PULL);
    /* [PUB] fans the control channel out to every subscriber connected at the time; it never
       blocks, and drops for a subscriber not yet connected or past its high-water mark (1000
       messages), which is why the state is repeated every heartbeat. */
    sink.control = zmq_socket(context, ZMQ_PUB);
    /* [linger] 0 everywhere (PROTOCOL.md): no role leaves while anything it sent is still needed,
       so closing a socket may drop what is still queued. */
    int linger = 0;
    limit_socket(sink.results, linger, MAX_MESSAGE);
    limit_socket(sink.control, linger, MAX_MESSAGE);
    monitor_socket(context, sink.results, "results", monitor);
    monitor_socket(context, sink.control, "control", monitor);
    char results_at[ENDPOINT_SIZE], control_at[ENDPOINT_SIZE];
    bind_socket(sink.results, args->results, results_at);
    bind_socket(sink.control, args->control, control_at);
    emit("ready", "{s:s, s:s}", "results", results_at, "control", control_at);

    int64_t next_beat = now_ms();
    sink.quiet_since = next_beat;
    while (!stop_requested()) {
        if (deadline_expired(&deadline))
            fail("timeout", "still running after %d ms with %d results", args->timeout, sink.counted);
        /* [poll] The poll is the only wait: for a message, or until the next heartbeat is due
           (never past the deadline). What it reports is received without waiting (POLLIN is a
           hint), one message a turn; a signal (EINTR) is a poll that found nothing. */
        int64_t wait = next_beat - now_ms();
        /* [multipart] A message arrives whole or not at all: every frame of one, or none. The
           count is the peer's choice: sink_on_ready and check_result check it first. */
        frames_t message;
        if (poll_in(sink.results, deadline_cap(&deadline, wait > 0 ? (long)wait : 0)) &&
            recv_if_ready(sink.results, &message)) {
            if (frame_is(&message, 0, "ready")) {
                sink_on_ready(&sink, &message);
                sink_start_when_ready(&sink);
            } else {
                sink_on_result(&sink, &message);
            }
            frames_close(&message);
        }
        int64_t now = now_ms();
        if (sink.state == GO && now - sink.quiet_since >= args->quiet) {
            resend_missing(&sink);
            sink.quiet_since = now;
        }
        if (now >= next_beat) {
            /* [slow joiner] A subscriber's subscription reaches this PUB some time after it
               connects, and what is published before is lost for it. So the state is
               level-triggered, repeated every heartbeat: a subscriber that joined late learns it
               within one, and a worker that heard one is live (it then says ready). */
            send_frame(sink.control, STATES[sink.state], strlen(STATES[sink.state]), false);
            next_beat = now + args->heartbeat;
        }
    }

    emit("done", "{s:i, s:I}", "orders", sink.counted, "total", (json_int_t)sink.total);
    names_free(&sink.ready);
    names_free(&sink.priced);
    free(sink.have);
    free(sink.resent);
    zmq_close(sink.results);
    zmq_close(sink.control);
    zmq_ctx_term(context);
    return 0;
}

/* --- source --------------------------------------------------------------------------------- */

typedef struct {
    const char *orders, *control;
    int count, timeout;
    uint64_t seed;
} source_args;

typedef struct {
    source_args args;
    void *orders, *control;
    deadline_t deadline;
} source_t;

/* One turn of the source's loop: the deadline first (the sink's heartbeat never lets a poll go
   idle, so it is checked after a message too), then a poll of the SUB, at most a second (the
   source has no timer). The next control message, or false if none came. */
static bool next_control(source_t *source, frames_t *message)
{
    if (deadline_expired(&source->deadline))
        fail("timeout", "not finished after %d ms", source->args.timeout);
    return poll_in(source->control, deadline_cap(&source->deadline, 1000)) &&
           recv_if_ready(source->control, message);
}

/* Order `id`, the same bytes every time: the generator recomputes them. */
static void send_order(source_t *source, uint64_t id)
{
    order_frames_t frames = order_frames(source->args.seed, id);
    part_t parts[5];
    order_parts(&frames, parts);
    char what[32];
    snprintf(what, sizeof what, "order %llu", (unsigned long long)id);
    send_when_room(source->orders, parts, 5, &source->deadline, what);
}

int valuation_source(int argc, char **argv)
{
    source_t source = {
        .args = {
            .orders = "tcp://127.0.0.1:5562",
            .control = "tcp://127.0.0.1:5561",
            .count = 100,
            .seed = 1,
            .timeout = 30000,
        },
    };
    source_args *args = &source.args;
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("orders", args->orders),
        TEXT_FLAG("control", args->control),
        NUMBER_FLAG("count", args->count, 1),
        PARSED_FLAG("seed", parse_u64, args->seed),
        NUMBER_FLAG("timeout", args->timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    source.deadline = deadline_start(args->timeout);
    void *context = zmq_ctx_new();
    /* [PUSH] deals each order to one connected worker, round-robin, and never drops one. */
    /* [HWM] With no worker connected, or every worker's queue at its high-water mark (1000
       messages), PUSH is mute: a send has to wait, which send_when_room does with a poll. */
    source.orders = zmq_socket(context, ZMQ_PUSH);
    /* [SUB] subscribed to "" (a prefix of every frame 0: every control message), before it
       connects. */
    source.control = zmq_socket(context, ZMQ_SUB);
    int linger = 0; /* we leave only on `finished`: nothing we sent is still needed */
    limit_socket(source.orders, linger, MAX_MESSAGE);
    limit_socket(source.control, linger, MAX_MESSAGE);
    zmq_setsockopt(source.control, ZMQ_SUBSCRIBE, "", 0);
    monitor_socket(context, source.orders, "orders", monitor);
    monitor_socket(context, source.control, "control", monitor);
    char endpoint[ENDPOINT_SIZE];
    bind_socket(source.orders, args->orders, endpoint);
    connect_socket(source.control, args->control);
    emit("ready", "{s:s}", "orders", endpoint);

    /* The state is repeated every heartbeat: however late our SUB connected, `go` comes. */
    for (bool go = false; !go;) {
        frames_t message;
        if (next_control(&source, &message)) {
            go = is_state(&message, GO);
            frames_close(&message);
        }
    }
    for (int id = 1; id <= args->count; id++)
        send_order(&source, (uint64_t)id);
    emit("sent", "{s:i}", "orders", args->count);

    int64_t sent = args->count;
    for (bool finished = false; !finished;) {
        frames_t message;
        if (!next_control(&source, &message))
            continue;
        finished = is_state(&message, FINISHED);
        if (frame_is(&message, 0, "resend")) {
            json_t *ids = json_array();
            for (size_t i = 1; i < message.count; i++) {
                if (frame_size(&message, i) != 8)
                    continue;
                uint64_t id = get_be64(frame_data(&message, i));
                if (id < 1 || id > (uint64_t)args->count)
                    continue; /* no order of ours */
                send_order(&source, id);
                json_array_append_new(ids, json_id(id));
                sent++;
            }
            emit("resent", "{s:o}", "ids", ids);
        }
        frames_close(&message);
    }

    emit("done", "{s:I}", "sent", (json_int_t)sent);
    zmq_close(source.orders);
    zmq_close(source.control);
    zmq_ctx_term(context);
    return 0;
}

/* --- worker --------------------------------------------------------------------------------- */

typedef struct {
    const char *orders, *results, *control, *name;
    int rate, timeout;
} worker_args;

/* The first broken rule of an order as its error code, with a `reason`; NULL when it is good,
   with its id and its value. */
static const char *check_order(const frames_t *message, uint64_t *id, int64_t *amount, char reason[REASON_SIZE])
{
    char sizes[64], symbol[HEX_SIZE], side[HEX_SIZE];
    if (message->count != 5 || frame_size(message, 0) != 8 || frame_size(message, 1) < 1 ||
        frame_size(message, 1) > MAX_SYMBOL || frame_size(message, 2) != 1 || frame_size(message, 3) != 4 ||
        frame_size(message, 4) != 8)
        return problem(reason, "malformed-order", "frame sizes %s, expected [8, 1-8, 1, 4, 8]",
                       frame_sizes(message, sizes));
    char side_letter = frame_data(message, 2)[0];
    if (!is_symbol(frame_data(message, 1), frame_size(message, 1)) || (side_letter != 'B' && side_letter != 'S'))
        return problem(reason, "malformed-order", "symbol %s or side %s (hex): not A-Z, or not B or S",
                       hex(frame_data(message, 1), frame_size(message, 1), symbol),
                       hex(frame_data(message, 2), 1, side));
    uint32_t quantity = get_be32(frame_data(message, 3));
    int64_t cents = (int64_t)get_be64(frame_data(message, 4));
    /* The ranges keep the value exact: a rogue order can never overflow it. */
    if (quantity < 1 || quantity > MAX_QUANTITY || cents < MIN_CENTS || cents > MAX_CENTS)
        return problem(reason, "malformed-order", "quantity %lu or price %lld cents out of range",
                       (unsigned long)quantity, (long long)cents);
    *id = get_be64(frame_data(message, 0));
    *amount = value(side_letter, quantity, cents);
    return NULL;
}

/* An order: checked, priced, and its result sent to the sink; false for a bad order, reported as
   `malformed-order` and dropped. */
static bool price(const frames_t *order, void *results, const char *name, const deadline_t *deadline, uint64_t *id)
{
    int64_t amount = 0;
    char reason[REASON_SIZE];
    const char *code = check_order(order, id, &amount, reason);
    if (code) {
        emit_error(code, "%s", reason);
        return false;
    }
    unsigned char id_frame[8], value_frame[8];
    put_be64(id_frame, *id);
    put_be64(value_frame, (uint64_t)amount);
    const part_t result[] = {{"result", strlen("result")}, {name, strlen(name)}, {id_frame, 8}, {value_frame, 8}};
    char what[48];
    snprintf(what, sizeof what, "the result of order %llu", (unsigned long long)*id);
    send_when_room(results, result, 4, deadline, what);
    return true;
}

int valuation_worker(int argc, char **argv)
{
    worker_args args = {
        .orders = "tcp://127.0.0.1:5562",
        .results = "tcp://127.0.0.1:5560",
        .control = "tcp://127.0.0.1:5561",
        .timeout = 30000,
    };
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("orders", args.orders),
        TEXT_FLAG("results", args.results),
        TEXT_FLAG("control", args.control),
        REQUIRED_FLAG("name", parse_name, args.name),
        NUMBER_FLAG("rate", args.rate, 0),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    /* PULL takes orders from the source; PUSH hands readiness and results to the sink (it blocks
       when the sink's queue is full: send_when_room); SUB hears the control channel. */
    void *orders = zmq_socket(context, ZMQ_PULL);
    void *results = zmq_socket(context, ZMQ_PUSH);
    void *control = zmq_socket(context, ZMQ_SUB);
    /* We leave only on `finished`, once the sink has every result. If we die instead, the orders
       queued for us are lost, whatever the linger: the sink has them re-sent. */
    int linger = 0;
    void *sockets[] = {orders, results, control};
    for (size_t i = 0; i < 3; i++)
        limit_socket(sockets[i], linger, MAX_MESSAGE);
    zmq_setsockopt(control, ZMQ_SUBSCRIBE, "", 0); /* every control message, before connecting */
    const char *const flag_names[] = {"orders", "results", "control"};
    for (size_t i = 0; i < 3; i++)
        monitor_socket(context, sockets[i], flag_names[i], monitor);
    connect_socket(orders, args.orders); /* PULL first: connected long before the source deals the batch */
    connect_socket(results, args.results);
    connect_socket(control, args.control);

    /* Slow joiner: once one control message has arrived, our subscription is live and no later
       one can be missed. */
    frames_t message;
    while (!poll_in(control, deadline_cap(&deadline, 1000)) || !recv_if_ready(control, &message))
        if (deadline_expired(&deadline))
            fail("timeout", "no control message from the sink");
    bool finished = is_state(&message, FINISHED);
    frames_close(&message);
    const part_t ready[] = {{"ready", strlen("ready")}, {args.name, strlen(args.name)}};
    send_when_room(results, ready, 2, &deadline, "ready");
    emit("ready", "{s:s}", "name", args.name);

    int priced = 0;
    int64_t next_order = now_us(); /* --rate: when the next order may be taken */
    while (!finished) {
        if (deadline_expired(&deadline))
            fail("timeout", "not finished after %d ms", args.timeout);
        long wait = (long)((next_order - now_us()) / 1000); /* ms until the next order is due */
        /* One poll for both sockets, in the order they are served: whichever has a message first
           wakes us, no busy loop. --rate: until the next order is due, listen to the control
           channel only (the second item); orders wait in our queue meanwhile (and, once it is
           full, in the source's queue for us). */
        zmq_pollitem_t items[] = {
            {.socket = orders, .events = ZMQ_POLLIN},
            {.socket = control, .events = ZMQ_POLLIN},
        };
        if (args.rate > 0 && wait > 0)
            poll_all(&items[1], 1, deadline_cap(&deadline, wait));
        else
            poll_all(items, 2, deadline_cap(&deadline, 1000));
        if ((items[0].revents & ZMQ_POLLIN) && recv_if_ready(orders, &message)) {
            uint64_t id = 0;
            if (price(&message, results, args.name, &deadline, &id)) {
                priced++;
                emit("priced", "{s:o}", "id", json_id(id));
                if (args.rate > 0)
                    next_order = now_us() + 1000000 / args.rate;
            }
            frames_close(&message);
        }
        if ((items[1].revents & ZMQ_POLLIN) && recv_if_ready(control, &message)) {
            /* States and resends; resends are the source's business. */
            finished = is_state(&message, FINISHED);
            /* A sink waiting for its workers, a restarted one too: say ready again (the state is
               level-triggered, and so is our answer). */
            bool waiting = is_state(&message, WAITING);
            frames_close(&message);
            if (waiting)
                send_when_room(results, ready, 2, &deadline, "ready");
        }
    }

    emit("done", "{s:i}", "priced", priced);
    zmq_close(orders);
    zmq_close(results);
    zmq_close(control);
    zmq_ctx_term(context);
    return 0;
}
