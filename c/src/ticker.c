/* ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md). */
#include "ticker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

#include "contract.h"
#include "frames.h"
#include "monitor.h"
#include "names.h"

/* [max size] ZMQ_MAXMSGSIZE, 256 bytes on every socket, set before bind or connect: a frame above
   it never reaches us (libzmq drops it with the sender's connection), and no subscription can
   grow an XPUB's subscription trie past it. The largest legal frames are a subscription, 1 + `@`
   + a 32-byte name = 34 bytes, and a tick's 9-byte frames; 256 leaves room for the handshake's
   READY command, which the limit also bounds. */
static const int64_t MAX_MESSAGE = TICKER_MAX_MESSAGE;

/* --- flags ---------------------------------------------------------------------------------- */

bool is_symbol(const char *text, size_t size)
{
    if (size < 1 || size > MAX_SYMBOL)
        return false;
    for (size_t i = 0; i < size; i++)
        if (text[i] < 'A' || text[i] > 'Z')
            return false;
    return true;
}

int symbol_index(const symbols_t *symbols, const char *name)
{
    for (size_t i = 0; i < symbols->count; i++)
        if (!strcmp(symbols->name[i], name))
            return (int)i;
    return -1;
}

const char *parse_symbol(const char *text, void *value)
{
    if (!is_symbol(text, strlen(text)))
        return "a symbol is 1 to 8 letters A-Z";
    strcpy(value, text);
    return NULL;
}

const char *parse_symbols(const char *text, void *value)
{
    symbols_t *list = value;
    list->count = 0;
    for (const char *part = text;; part += strcspn(part, ",") + 1) {
        size_t size = strcspn(part, ",");
        if (!is_symbol(part, size))
            return "a symbol is 1 to 8 letters A-Z";
        if (list->count == MAX_SYMBOLS)
            return "at most 32 symbols";
        memcpy(list->name[list->count], part, size);
        list->name[list->count][size] = '\0';
        if (symbol_index(list, list->name[list->count]) >= 0)
            return "a symbol appears twice";
        list->count++;
        if (!part[size])
            return NULL;
    }
}

/* --switch OLD:NEW */
typedef struct {
    symbol_t old, new; /* old[0] is NUL when there is no switch */
} switch_t;

static const char *switch_symbols(const char *text, void *value)
{
    switch_t *change = value;
    size_t size = strcspn(text, ":");
    if (!text[size] || !is_symbol(text, size) || !is_symbol(text + size + 1, strlen(text + size + 1)))
        return "expected OLD:NEW, two symbols of 1 to 8 letters A-Z";
    memcpy(change->old, text, size);
    change->old[size] = '\0';
    strcpy(change->new, text + size + 1);
    return NULL;
}

/* --- the tick: prices anyone can recompute -------------------------------------------------- */

uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *data)
{
    uint64_t h = 0xCBF29CE484222325;
    for (const unsigned char *byte = (const unsigned char *)data; *byte; byte++)
        h = (h ^ *byte) * 0x100000001B3;
    return h;
}

static uint64_t cents(uint64_t seed, const char *name, uint64_t sequence)
{
    return 1000 + splitmix64(seed ^ fnv1a64(name) ^ (sequence * GOLDEN)) % 99001;
}

/* A tick's topic (ticker.h): the symbol, then its NUL. */
size_t topic_size(const char *name)
{
    return strlen(name) + 1;
}

bool is_topic(const char *data, size_t size)
{
    return size >= 2 && data[size - 1] == '\0' && is_symbol(data, size - 1);
}

/* Frames 1-3 of a tick; frame 0 is the topic of `name`. */
typedef struct {
    const char *name;
    unsigned char sequence[8], timestamp[8], price[8];
} tick_t;

static tick_t tick_frames(uint64_t seed, const char *name, uint64_t sequence, int64_t timestamp)
{
    tick_t tick = {.name = name};
    double price = (double)cents(seed, name, sequence) / 100.0; /* exact conversion, one division */
    uint64_t bits;
    memcpy(&bits, &price, sizeof bits); /* the double's IEEE 754 bits, sent like an integer */
    put_be64(tick.sequence, sequence);
    put_be64(tick.timestamp, (uint64_t)timestamp); /* two's complement: -1 is ff...ff */
    put_be64(tick.price, bits);
    return tick;
}

static void send_tick(void *socket, const tick_t *tick)
{
    send_frame(socket, tick->name, topic_size(tick->name), true);
    send_frame(socket, tick->sequence, 8, true);
    send_frame(socket, tick->timestamp, 8, true);
    send_frame(socket, tick->price, 8, false);
}

int ticker_encode(int argc, char **argv)
{
    uint64_t seed, sequence;
    symbol_t name;
    int64_t timestamp;
    const flag_t flags[] = {
        REQUIRED_FLAG("seed", parse_u64, seed),
        REQUIRED_FLAG("symbol", parse_symbol, name),
        REQUIRED_FLAG("sequence", parse_u64, sequence),
        REQUIRED_FLAG("timestamp", parse_i64, timestamp),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    tick_t tick = tick_frames(seed, name, sequence, timestamp);
    char text[4][HEX_SIZE];
    emit("encoded", "{s:[s,s,s,s], s:I}", "frames", hex(tick.name, topic_size(name), text[0]),
         hex(tick.sequence, 8, text[1]), hex(tick.timestamp, 8, text[2]), hex(tick.price, 8, text[3]),
         "cents", (json_int_t)cents(seed, name, sequence));
    emit("done", "{}");
    return 0;
}

/* --- publisher ------------------------------------------------------------------------------ */

typedef struct {
    const char *ticks;
    symbols_t symbols;
    uint64_t seed;
    int subscribers, interval, timeout;
} publisher_args;

/* Milliseconds since the Unix epoch, the publisher's clock: the timestamp of a tick. */
static int64_t epoch_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* What the publisher has reported: the symbol topics subscribed now, and every subscriber whose
   `@name` ever arrived (value 1 while its topic is subscribed). Only a change is reported. */
typedef struct {
    names_t symbols, subscribers;
} topics_t;

/* A subscription frame: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on one
   subscribe per topic, and one unsubscribe when the topic's last subscriber leaves; we still
   report a topic only when our own set changes, whatever a library lets through. */
static void on_subscription(zmq_msg_t *frame, topics_t *topics)
{
    char text[HEX_SIZE];
    const char *data = zmq_msg_data(frame);
    size_t size = zmq_msg_size(frame);
    if (size < 2 || (data[0] != 0 && data[0] != 1)) {
        emit_error("malformed-subscription", "not a subscription: %s", size ? hex(data, size, text) : "empty");
        return;
    }
    bool on = data[0] == 1;
    const char *topic = data + 1;
    size_t length = size - 1, at;
    if (topic[0] == '@' && is_name(topic + 1, length - 1)) {
        const char *name = topic + 1;
        if (on) {
            name_entry_t *subscriber = names_get(&topics->subscribers, name, length - 1, NULL);
            if (!subscriber->value)
                emit("joined", "{s:s%}", "subscriber", name, length - 1);
            subscriber->value = 1;
        } else if (names_find(&topics->subscribers, name, length - 1, &at)) {
            topics->subscribers.entry[at].value = 0; /* it left: not reported, and still counted */
        }
    } else if (topic[length - 1] == '\0' && is_symbol(topic, length - 1)) {
        bool changed = true;
        if (on)
            names_get(&topics->symbols, topic, length - 1, &changed);
        else if ((changed = names_find(&topics->symbols, topic, length - 1, &at)))
            names_remove(&topics->symbols, at);
        if (changed)
            emit(on ? "subscribed" : "unsubscribed", "{s:s%}", "symbol", topic, length - 1);
    } else {
        emit_error("malformed-subscription", "unknown topic %s", hex(topic, length, text));
    }
}

int ticker_publisher(int argc, char **argv)
{
    publisher_args args = {.ticks = "tcp://127.0.0.1:5557", .seed = 1, .subscribers = 1, .interval = 2};
    bool monitor = false;
    parse_symbols("AAPL,GOOG,GOOGL,MSFT,IBM", &args.symbols); /* the default, parsed like the flag */
    const flag_t flags[] = {
        TEXT_FLAG("ticks", args.ticks),
        PARSED_FLAG("symbols", parse_symbols, args.symbols),
        PARSED_FLAG("seed", parse_u64, args.seed),
        NUMBER_FLAG("subscribers", args.subscribers, 1),
        NUMBER_FLAG("interval", args.interval, 1),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    stop_on_signals();
    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    /* [XPUB] A PUB that also hands us, as messages, the subscriptions coming from downstream: a
       frame whose first byte is 1 (subscribe) or 0 (unsubscribe), then the topic. Like PUB it
       fans each tick out to every matching subscriber and never blocks. */
    /* [HWM] Its high-water mark (libzmq's default, 1000 messages per subscriber) bounds each
       subscriber's queue: at it, XPUB drops that subscriber's ticks (a gap it reports), where
       PUSH or DEALER would block. --interval paces the rounds far below it. */
    void *ticks = zmq_socket(context, ZMQ_XPUB);
    /* [linger] 0: ticks are a stream, so closing the socket drops what is still queued. */
    int linger = 0;
    limit_socket(ticks, linger, MAX_MESSAGE);
    monitor_socket(context, ticks, "ticks", monitor);
    char endpoint[ENDPOINT_SIZE];
    bind_socket(ticks, args.ticks, endpoint);
    emit("ready", "{s:s}", "ticks", endpoint);

    topics_t topics = {0};
    names_t *subscribers = &topics.subscribers; /* every `@name` ever joined */
    uint64_t sequence = 0; /* every symbol gets one tick per round, so they share the round number */
    bool started = false;  /* publishing starts once every subscriber is there */
    int64_t next_round = 0;
    while (!stop_requested()) {
        if (deadline_expired(&deadline))
            fail("timeout", "still publishing after %d ms", args.timeout);
        int64_t wait = started ? next_round - now_ms() : 100; /* the next round is the timer */
        /* [poll] The wait between rounds is this poll, never a sleep: subscriptions are served
           while we wait, the stop flag is seen once it returns (a signal's EINTR is a poll that
           found nothing), and what it reports ready is received without waiting. */
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        /* [multipart] A message arrives whole or not at all, but here each frame is judged alone,
           whatever its ZMQ_RCVMORE: XPUB passes each subscription on as a frame of its own, and a
           peer's other frames keep their "more" flag. One frame a turn. */
        if (poll_in(ticks, deadline_cap(&deadline, wait > 0 ? (long)wait : 0)) && frame_if_ready(ticks, &frame)) {
            on_subscription(&frame, &topics);
            /* [slow joiner] A tick sent before a subscriber's subscriptions arrive is dropped for
               it. Each subscriber sends its `@name` after its symbols, so once every `@name` is
               here, every symbol is too, and publishing starts (`started`). */
            if (!started && subscribers->count >= (size_t)args.subscribers) {
                emit("started", "{s:i}", "subscribers", (int)subscribers->count);
                started = true;
                next_round = now_ms();
            }
        }
        zmq_msg_close(&frame);
        if (started && now_ms() >= next_round) {
            sequence++;
            int64_t timestamp = epoch_ms();
            for (size_t i = 0; i < args.symbols.count; i++) {
                tick_t tick = tick_frames(args.seed, args.symbols.name[i], sequence, timestamp);
                send_tick(ticks, &tick);
            }
            next_round += args.interval;
        }
    }

    emit("done", "{s:I, s:I}", "rounds", (json_int_t)sequence, "ticks",
         (json_int_t)(sequence * args.symbols.count));
    names_free(&topics.symbols);
    names_free(subscribers);
    zmq_close(ticks);
    zmq_ctx_term(context);
    return 0;
}

/* --- proxy ---------------------------------------------------------------------------------- */

typedef struct {
    const char *upstream, *downstream;
    int timeout;
} proxy_args;

/* [inproc] The proxy's own control channel joins two threads of this process: inproc:// never
   leaves the process (the one context both sockets come from carries the messages), and its
   endpoint is bound before the other end connects to it. */
static const char PROXY_CONTROL[] = "inproc://proxy-control";

/* The sockets the proxy thread owns, and how its loop ended. */
typedef struct {
    void *upstream, *downstream, *control;
    int result, error; /* zmq_proxy_steerable's return value and errno; read after pthread_join */
} proxy_t;

static void *run_steerable_proxy(void *argument)
{
    proxy_t *proxy = argument;
    /* [proxy] The library's own loop moves ticks one way, XSUB to XPUB, and subscriptions the
       other, XPUB to XSUB, until it reads TERMINATE on its control socket: that is how it stops,
       since a signal cannot interrupt it (ticker_proxy). It gives up (EAGAIN) when it finds a message
       unfinished: a subscriber can leave one, since XPUB passes on the first frames of a multipart
       message and drops a last frame that repeats a subscription (PROTOCOL.md, "Proxy"). The
       sockets are still good: start it again. */
    while ((proxy->result = zmq_proxy_steerable(proxy->upstream, proxy->downstream, NULL, proxy->control)) < 0
           && errno == EAGAIN)
        emit_error("proxy-restarted", "the library's proxy found a message left unfinished by a peer");
    proxy->error = errno;
    return NULL;
}

/* Waits for SIGTERM or SIGINT, or until the deadline; true if a signal came first. The signals
   are blocked in every thread, so they stay pending until this takes them: none can be lost. */
static bool wait_for_signal(const sigset_t *signals, const deadline_t *deadline)
{
    for (;;) {
        long left = deadline_remaining(deadline); /* -1: no limit */
        struct timespec timeout = {left / 1000, left % 1000 * 1000000L};
        int taken = left < 0 ? sigwaitinfo(signals, NULL) : sigtimedwait(signals, NULL, &timeout);
        if (taken >= 0)
            return true;
        if (errno == EAGAIN) /* sigtimedwait: the timeout passed */
            return false;
        /* EINTR: another signal's handler ran; wait again for what is left */
    }
}

int ticker_proxy(int argc, char **argv)
{
    proxy_args args = {.upstream = "tcp://127.0.0.1:5557", .downstream = "tcp://127.0.0.1:5558"};
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("upstream", args.upstream),
        TEXT_FLAG("downstream", args.downstream),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    /* The built-in proxy is a loop that a signal handler cannot stop: a signal that lands while
       it moves a message interrupts nothing. So SIGTERM and SIGINT are blocked, before libzmq
       starts its threads (they inherit the mask), and the main thread waits for them itself. */
    sigset_t signals = block_stop_signals();
    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    /* [XSUB] faces the publisher: a SUB whose subscriptions are messages that the application,
       here the proxy, sends it (the ones XPUB hands over); it receives the ticks they let through.
       XPUB faces subscribers: it sends the ticks, and hands over their subscriptions. */
    /* [PAIR] The control channel is a PAIR of sockets: exactly one peer each, joining this thread
       to the proxy's over inproc. */
    proxy_t proxy = {
        .upstream = zmq_socket(context, ZMQ_XSUB),
        .downstream = zmq_socket(context, ZMQ_XPUB),
        .control = zmq_socket(context, ZMQ_PAIR), /* the proxy's end of its control channel */
    };
    void *steer = zmq_socket(context, ZMQ_PAIR); /* our end */
    /* [linger] 0: ticks are a stream, so closing a socket drops what is still queued. */
    int linger = 0;
    void *sockets[] = {proxy.upstream, proxy.downstream, proxy.control, steer};
    limit_socket(proxy.upstream, linger, MAX_MESSAGE);
    limit_socket(proxy.downstream, linger, MAX_MESSAGE);
    /* [HWM] Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped
       at the send high-water mark during a flood would be lost for good. No limit on XSUB's sends
       (0); the ticks' queues keep the default, 1000 messages, at which XPUB drops. */
    int no_limit = 0;
    zmq_setsockopt(proxy.upstream, ZMQ_SNDHWM, &no_limit, sizeof no_limit);
    /* The control PAIRs are inproc: nothing decodes there, so only the linger. */
    zmq_setsockopt(proxy.control, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(steer, ZMQ_LINGER, &linger, sizeof linger);
    monitor_socket(context, proxy.upstream, "upstream", monitor); /* not the control pipe: no flag */
    monitor_socket(context, proxy.downstream, "downstream", monitor);
    char endpoint[ENDPOINT_SIZE];
    bind_socket(proxy.downstream, args.downstream, endpoint);
    connect_socket(proxy.upstream, args.upstream);
    if (zmq_bind(proxy.control, PROXY_CONTROL) < 0 || zmq_connect(steer, PROXY_CONTROL) < 0)
        fail("bind", "cannot set up %s: %s", PROXY_CONTROL, zmq_strerror(errno));

    /* Sockets are not thread-safe: from pthread_create on (the full memory barrier libzmq asks
       for when a socket moves to another thread) only the proxy thread touches upstream,
       downstream and control. This thread keeps `steer`. */
    pthread_t thread;
    if (pthread_create(&thread, NULL, run_steerable_proxy, &proxy))
        fail("thread", "cannot start the proxy thread");
    emit("ready", "{s:s}", "downstream", endpoint);
    bool stopped = wait_for_signal(&signals, &deadline);
    send_frame(steer, "TERMINATE", strlen("TERMINATE"), false);
    pthread_join(thread, NULL);
    if (proxy.result < 0)
        fail("proxy", "zmq_proxy_steerable: %s", zmq_strerror(proxy.error));
    if (!stopped)
        fail("timeout", "still proxying after %d ms", args.timeout);

    emit("done", "{}");
    for (size_t i = 0; i < sizeof sockets / sizeof sockets[0]; i++)
        zmq_close(sockets[i]);
    zmq_ctx_term(context);
    return 0;
}

/* --- subscriber ----------------------------------------------------------------------------- */

typedef struct {
    const char *ticks, *name;
    symbols_t symbols;
    uint64_t seed;
    switch_t change; /* --switch */
    int count, switch_after, timeout;
} subscriber_args;

const char *check_tick(const frames_t *frames, const symbols_t *subscribed, uint64_t seed,
                              checked_t *tick, char reason[REASON_SIZE])
{
    char text[HEX_SIZE], expected_text[HEX_SIZE];
    if (frames->count != 4)
        return problem(reason, "malformed-tick", "expected 4 frames, got %zu", frames->count);
    const char *name = frame_data(frames, 0);
    size_t size = frame_size(frames, 0);
    if (!is_topic(name, size))
        return problem(reason, "malformed-tick", "frame 0 is not a symbol and a NUL: %s",
                       hex(name, size, text));
    if (frame_size(frames, 1) != 8 || frame_size(frames, 2) != 8 || frame_size(frames, 3) != 8)
        return problem(reason, "malformed-tick", "frames 1-3 have [%zu, %zu, %zu] bytes, not 8 each",
                       frame_size(frames, 1), frame_size(frames, 2), frame_size(frames, 3));
    /* 2^63 and past: beyond what every language's JSON numbers carry alike (jansson's are signed
       64-bit), and no publisher gets there. */
    tick->sequence = get_be64(frame_data(frames, 1));
    if (tick->sequence > INT64_MAX)
        return problem(reason, "malformed-tick", "sequence %llu is 2^63 or more",
                       (unsigned long long)tick->sequence);
    /* From here on, frame 0 is a C string: the symbol and its NUL. */
    tick->name = name;
    tick->index = symbol_index(subscribed, name);
    if (tick->index < 0)
        return problem(reason, "unexpected-symbol", "%s is not subscribed", name);
    tick->timestamp = (int64_t)get_be64(frame_data(frames, 2));
    tick_t expected = tick_frames(seed, name, tick->sequence, tick->timestamp);
    if (memcmp(frame_data(frames, 3), expected.price, 8))
        return problem(reason, "wrong-price", "%s #%llu: price bytes %s, expected %s", name,
                       (unsigned long long)tick->sequence, hex(frame_data(frames, 3), 8, text),
                       hex(expected.price, 8, expected_text));
    uint64_t bits = get_be64(frame_data(frames, 3));
    memcpy(&tick->price, &bits, sizeof bits);
    return NULL;
}

/* A SUB socket filters on frame 0 by prefix, against the topics it is subscribed to. */
void subscribe_symbol(void *socket, const char *name, bool on)
{
    zmq_setsockopt(socket, on ? ZMQ_SUBSCRIBE : ZMQ_UNSUBSCRIBE, name, topic_size(name));
}

static bool received_all(const int received[], size_t count, int wanted)
{
    for (size_t i = 0; i < count; i++)
        if (received[i] < wanted)
            return false;
    return true;
}

int ticker_subscriber(int argc, char **argv)
{
    subscriber_args args = {
        .ticks = "tcp://127.0.0.1:5557",
        .seed = 1,
        .count = 20,
        .switch_after = 10,
        .timeout = 30000,
    };
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("ticks", args.ticks),
        REQUIRED_FLAG("name", parse_name, args.name),
        REQUIRED_FLAG("symbols", parse_symbols, args.symbols),
        NUMBER_FLAG("count", args.count, 1),
        PARSED_FLAG("seed", parse_u64, args.seed),
        PARSED_FLAG("switch", switch_symbols, args.change),
        NUMBER_FLAG("switch-after", args.switch_after, 1),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;
    const char *old = args.change.old, *new = args.change.new;
    if (*old && (symbol_index(&args.symbols, old) < 0 || symbol_index(&args.symbols, new) >= 0)) {
        log_line("%s: --switch OLD:NEW needs OLD among --symbols and NEW not", argv[0]);
        return 2;
    }

    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    /* [SUB] A prefix filter on frame 0: it receives only ticks whose topic starts with one of its
       subscriptions, and sends nothing but those subscriptions. Here, unlike chat's, they come
       right after connect, in the order the publisher relies on: subscriptions made before
       connect would go out in libzmq's sorted order, `@name` ('@' sorts before 'A') first. */
    void *sub = zmq_socket(context, ZMQ_SUB);
    /* [linger] 0: ticks are a stream, and nothing is owed to anyone at close. */
    int linger = 0;
    limit_socket(sub, linger, MAX_MESSAGE);
    monitor_socket(context, sub, "ticks", monitor);
    connect_socket(sub, args.ticks);
    symbols_t subscribed = args.symbols;
    json_t *listed = json_array();
    for (size_t i = 0; i < subscribed.count; i++) {
        subscribe_symbol(sub, subscribed.name[i], true);
        json_array_append_new(listed, json_string(subscribed.name[i]));
    }
    /* Last, our own topic, never published: the publisher waits for it, and since subscriptions
       from one socket arrive in order, our symbols are in place by then. */
    char me[1 + MAX_NAME];
    size_t me_size = 1 + strlen(args.name);
    me[0] = '@';
    memcpy(me + 1, args.name, me_size - 1);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, me, me_size);
    emit("ready", "{s:s, s:o}", "name", args.name, "symbols", listed);

    int received[MAX_SYMBOLS] = {0}; /* ticks of each subscribed symbol */
    /* Each subscribed symbol's last sequence, once it has one: a jump is a gap, reported as such. */
    uint64_t last[MAX_SYMBOLS] = {0};
    bool has_last[MAX_SYMBOLS] = {false};
    bool switched = !*old;
    int total = 0, malformed = 0;
    while (!(switched && received_all(received, subscribed.count, args.count))) {
        /* At every turn, after a message as well as after an idle poll: a stream of ticks that
           count for nothing (bad ones, or more of a symbol already done) cannot keep us running. */
        if (deadline_expired(&deadline)) {
            char missing[256] = "";
            for (size_t i = 0, used = 0; i < subscribed.count && used < sizeof missing; i++)
                if (received[i] < args.count)
                    used += snprintf(missing + used, sizeof missing - used, "%s%s: %d",
                                     used ? ", " : "", subscribed.name[i], received[i]);
            fail("timeout", "not done after %d ms; ticks so far: %s", args.timeout, missing);
        }
        frames_t message; /* one a turn, every frame of it; check_tick counts them */
        if (!poll_in(sub, deadline_cap(&deadline, 1000)) || !recv_if_ready(sub, &message))
            continue; /* no timer: at most a second a poll, so that the deadline is seen */
        checked_t tick = {0};
        char reason[REASON_SIZE];
        const char *code = check_tick(&message, &subscribed, args.seed, &tick, reason);
        if (code) {
            malformed++;
            emit_error(code, "%s", reason);
            frames_close(&message);
            continue;
        }
        total++;
        received[tick.index]++;
        /* PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
           restarted) or while a queue was full (the HWM) are gone. Say so, never hide it. Both
           sequences are below 2^63, so last + 1 cannot wrap. */
        if (has_last[tick.index] && tick.sequence > last[tick.index] + 1)
            emit("gap", "{s:s, s:I, s:I}", "symbol", tick.name, "after", (json_int_t)last[tick.index], "next",
                 (json_int_t)tick.sequence);
        last[tick.index] = tick.sequence;
        has_last[tick.index] = true;
        emit("tick", "{s:s, s:I, s:I, s:f}", "symbol", tick.name, "sequence", (json_int_t)tick.sequence,
             "timestamp", (json_int_t)tick.timestamp, "price", tick.price);
        if (!switched && !strcmp(tick.name, old) && received[tick.index] == args.switch_after) {
            /* A SUB socket filters what it delivers against its current subscriptions: no tick
               of OLD comes after this, even one already queued. NEW's first ticks may be missed
               while the subscription travels upstream. */
            subscribe_symbol(sub, old, false);
            emit("unsubscribed", "{s:s}", "symbol", old);
            subscribe_symbol(sub, new, true);
            strcpy(subscribed.name[tick.index], new); /* NEW takes OLD's place, counted from 0 */
            received[tick.index] = 0;
            has_last[tick.index] = false; /* and has no last sequence yet: its first tick is no gap */
            emit("subscribed", "{s:s}", "symbol", new);
            switched = true;
        }
        frames_close(&message);
    }

    emit("done", "{s:i, s:i}", "ticks", total, "malformed", malformed);
    zmq_close(sub);
    zmq_ctx_term(context);
    return 0;
}
