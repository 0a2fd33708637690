/* desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).

   Four agent threads each own the sockets of one earlier example's client role: chat (REQ, SUB),
   ticker (SUB), valuation (PUSH, PULL, PUB: the source and the sink in one) and query (DEALER,
   SUB, XPUB: a CHP facade). The main thread runs the scenario and writes the events to stdout
   (with --monitor on, the socket monitors' threads write their socket-event lines there too,
   under emit()'s lock). Threads share nothing but the ZeroMQ context: each agent talks to the main thread over
   its pipe, a PAIR of sockets on inproc://desk-AGENT. The examples' own code checks what peers
   send and reports with emit(); in an agent's thread emit() hands the event to report(), which
   sends it up the pipe (contract.h, report_events_to). */
#include "desk.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "chat.h"
#include "contract.h"
#include "frames.h"
#include "monitor.h"
#include "names.h"
#include "query.h"
#include "ticker.h"
#include "valuation.h"
#include "web.h"

/* --- flags ---------------------------------------------------------------------------------- */

enum {
    MAX_TRADE = 1000000, /* orders in a trade */
    MAX_WAITING = 100,   /* chat posts not yet posted; query writes not yet read back */
    KEEPALIVE = 1000,    /* ms without a chat request before a keep-alive */
    STOP_WAIT = 5000,    /* ms for every agent to acknowledge STOP */
    SEND_BATCH = 1000,   /* orders sent in one turn at most, so that the pipe and results get theirs */
    POLL_MAX = 100,      /* ms: the main thread's longest poll */
    PROGRESS_EVERY = 100, /* ms at least between two of the page's `progress` */
};

typedef struct {
    const char *name, *chat_requests, *chat_broadcasts, *ticks, *forget, *orders, *results, *control,
        *snapshot, *updates, *collector, *http;
    int chat_clients, posts, forget_after, tick_count, trade, workers, quiet, heartbeat, timeout;
    bool monitor; /* --monitor on */
    symbols_t follow;
    subtrees_t subtrees;
    uint64_t seed;
} desk_args;

static const char NAME_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/* The desk's name is a chat handle, a ticker `@name`, a facade name and a key segment at once. */
static const char *parse_desk_name(const char *text, void *value)
{
    size_t size = strlen(text);
    if (size < 1 || size > MAX_NAME || strspn(text, NAME_CHARS) != size)
        return "a desk name is 1 to 32 of A-Z a-z 0-9 _ -";
    *(const char **)value = text;
    return NULL;
}

/* --http: empty (no page), or a tcp:// endpoint, whose port may be the wildcard `*`. */
static const char *parse_http(const char *text, void *value)
{
    if (*text && (strncmp(text, "tcp://", 6) || !text[6]))
        return "the page's endpoint is tcp://HOST:PORT (PORT may be *), or empty for no page";
    *(const char **)value = text;
    return NULL;
}

/* The rules that tie flags together; false, with a message on stderr, if one is broken. */
static bool flags_agree(const char *program, const desk_args *args)
{
    if (args->trade > MAX_TRADE) {
        log_line("%s: --trade: at most %d orders", program, MAX_TRADE);
        return false;
    }
    if (*args->forget && symbol_index(&args->follow, args->forget) < 0) {
        log_line("%s: --forget: '%s' is not one of --follow", program, args->forget);
        return false;
    }
    char own[64]; /* the desk's own keys, which it must read back */
    snprintf(own, sizeof own, "/desks/%s/", args->name);
    for (size_t i = 0; i < args->subtrees.count; i++)
        if (in_subtree(own, strlen(own), args->subtrees.tree[i].bytes, args->subtrees.tree[i].size))
            return true;
    log_line("%s: --subtrees: none holds %s", program, own);
    return false;
}

/* --- the pipes: events up, commands down ---------------------------------------------------- */

enum { CHAT, TICKER, VALUATION, QUERY, AGENTS };
static const char *const AGENT_NAMES[AGENTS] = {"chat", "ticker", "valuation", "query"};

/* What an agent's thread starts with. The main thread fills it in before pthread_create (which
   is a memory barrier) and never touches it again: from then on it belongs to the agent. */
typedef struct {
    int which;
    void *context;  /* the process's one context: inproc endpoints exist only inside it */
    desk_args args; /* the flags, copied */
    void *pipe;     /* the agent's end of its pipe, made in its own thread */
} agent_t;

static void pipe_endpoint(int which, char endpoint[32])
{
    snprintf(endpoint, 32, "inproc://desk-%s", AGENT_NAMES[which]);
}

/* A string field of an event, as a frame. */
static part_t field(json_t *line, const char *key)
{
    json_t *value = json_object_get(line, key);
    return (part_t){json_string_value(value), json_string_length(value)};
}

/* Lowercase hex (as events show values) back into bytes; returns how many. */
static size_t unhex(const char *text, size_t size, char *bytes)
{
    size_t count = 0;
    for (size_t i = 0; i + 1 < size; i += 2) {
        char digits[3] = {text[i], text[i + 1], '\0'};
        bytes[count++] = (char)strtoul(digits, NULL, 16);
    }
    return count;
}

/* An event, sent up the pipe: emit() lands here in an agent's thread, so the examples' own code
   reports through the pipe unchanged. Frame 0 is the event's name, frame 1 the event as JSON with
   "agent", frames 2... what the main thread acts on (PROTOCOL.md's table), taken from the
   fields: the main thread never parses the JSON. PAIR never drops: at its high-water mark (1000
   messages) this send would block until the main thread reads, which it always does. */
static void report(const char *event, json_t *line, void *state)
{
    agent_t *agent = state;
    json_object_set_new(line, "agent", json_string(AGENT_NAMES[agent->which]));
    char *text = event_text(line);
    if (!text)
        fail("memory", "out of memory");
    part_t parts[5] = {{event, strlen(event)}, {text, strlen(text)}};
    size_t count = 2;
    unsigned char total[8];
    char value[QUERY_MAX_VALUE];
    if (!strcmp(event, "tick")) {
        parts[count++] = field(line, "symbol");
    } else if (!strcmp(event, "received")) {
        parts[count++] = field(line, "handle");
    } else if (!strcmp(event, "complete")) {
        put_be64(total, (uint64_t)json_integer_value(json_object_get(line, "total")));
        parts[count++] = (part_t){total, 8};
    } else if (!strcmp(event, "applied")) { /* the page's replay keeps each key's latest */
        parts[count++] = field(line, "key");
    } else if (!strcmp(event, "read-back")) {
        part_t hex_value = field(line, "value");
        parts[count++] = field(line, "key");
        parts[count++] = (part_t){value, unhex(hex_value.data, hex_value.size, value)};
    } else if (!strcmp(event, "ready") && agent->which == VALUATION) { /* the desk's ready shows them */
        parts[count++] = field(line, "orders");
        parts[count++] = field(line, "results");
        parts[count++] = field(line, "control");
    }
    send_parts(agent->pipe, parts, count);
    free(text);
}

/* An agent's first step in its own thread: its end of the pipe. */
/* [PAIR] The socket for exactly one peer, known in advance: it never drops and never routes, and
   refuses a second connection; here it joins the agent's thread to the main thread. */
/* [inproc] The pipe joins two threads of this one process through its one context (inproc
   endpoints exist only inside it); the main thread bound the endpoint before it started this
   thread: bind before connect. Linger 0: an inproc send hands the message to the peer's queue at
   once, so nothing is left to flush at close. No maximum message size: nothing decodes bytes on
   inproc. */
static agent_t *agent_begin(void *argument)
{
    agent_t *agent = argument;
    char endpoint[32];
    pipe_endpoint(agent->which, endpoint);
    agent->pipe = zmq_socket(agent->context, ZMQ_PAIR);
    int linger = 0;
    zmq_setsockopt(agent->pipe, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(agent->pipe, endpoint) < 0)
        fail("connect", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    report_events_to(report, agent); /* from now on, this thread's emit() goes up the pipe */
    return agent;
}

/* Its last: `stopped` with its counters, once its sockets are closed, then the pipe closes. The
   agent sends nothing after `stopped`. */
static void *agent_end(agent_t *agent, json_t *counters)
{
    emit("stopped", "o", counters);
    report_events_to(NULL, NULL);
    zmq_close(agent->pipe);
    return NULL;
}

/* An agent's socket, with the example's maximum message size and linger, set before it binds or
   connects, and with --monitor on its monitor, `flag` naming the socket. */
/* [max size] Each example's ZMQ_MAXMSGSIZE, sized from its largest legal frame (chat 8192, ticker
   and valuation 256, query 1024): libzmq drops a larger frame with the sender's connection before
   allocating it, so no service can make the desk allocate without bound. */
static void *agent_socket(agent_t *agent, int type, int linger, int64_t max_message, const char *flag)
{
    void *socket = zmq_socket(agent->context, type);
    limit_socket(socket, linger, max_message);
    monitor_socket(agent->context, socket, flag, agent->args.monitor);
    return socket;
}

/* A connect that fails (a malformed endpoint) is an `error`; the agent cannot go on. */
static bool connect_to(void *socket, const char *endpoint)
{
    if (zmq_connect(socket, endpoint) == 0)
        return true;
    emit_error("connect", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    return false;
}

/* The next command down the pipe, if one is there after all. */
/* [multipart] A message arrives whole or not at all: once the first frame is here, so is every
   other. No command has more than 3 frames: a fourth, kept, says "too many" (each handler checks
   the count), and the rest of a longer message is dropped as it is received. */
static bool receive_command(agent_t *agent, frames_t *command)
{
    return recv_at_most(agent->pipe, command, 4);
}

static bool is_stop(const frames_t *command)
{
    return command->count == 1 && frame_is(command, 0, "STOP");
}

/* A command of another shape: reported, and ignored. */
static void bad_command(const frames_t *command, const char *why)
{
    char name[QUOTE_SIZE];
    emit_error("bad-command", "%s (%zu frames): %s", quote(frame_data(command, 0), frame_size(command, 0), name),
               command->count, why);
}

/* --- chat agent: a chat client (examples/chat/PROTOCOL.md) ------------------------------------ */

typedef struct {
    char *text;
    size_t size;
} post_t;

typedef enum { NO_REQUEST, JOIN, POST, KEEP_ALIVE } request_t;

typedef struct {
    client_t client;            /* the chat client's own state: its sockets, rosters, posts received */
    post_t queue[MAX_WAITING];  /* the posts not yet posted, a ring */
    size_t first, waiting;
    bool heard, joined, quorum; /* a first broadcast; a reply to our join; a roster of --chat-clients */
    request_t in_flight;        /* REQ is strict lockstep: one request, then its reply */
    int sent;
} chat_t;

static void on_post(chat_t *chat, const frames_t *command)
{
    if (!frame_is(command, 0, "POST")) {
        bad_command(command, "not a command of the chat agent");
    } else if (command->count != 2 || frame_size(command, 1) < 1 || frame_size(command, 1) > CHAT_MAX_TEXT ||
               !utf8_valid(frame_data(command, 1), frame_size(command, 1), NULL)) {
        bad_command(command, "POST takes a text of 1 to 4096 bytes of UTF-8");
    } else if (chat->waiting == MAX_WAITING) {
        bad_command(command, "busy: 100 posts wait already");
    } else {
        post_t *post = &chat->queue[(chat->first + chat->waiting) % MAX_WAITING];
        post->size = frame_size(command, 1);
        if (!(post->text = malloc(post->size)))
            fail("memory", "out of memory");
        memcpy(post->text, frame_data(command, 1), post->size);
        chat->waiting++;
    }
}

/* The request the chat protocol allows now, if any: the join once a broadcast proved our SUB
   live (the slow joiner), then a post once everyone listens (a roster of --chat-clients), else a
   keep-alive when KEEPALIVE ms passed without a request. */
static request_t next_request(const chat_t *chat)
{
    if (chat->in_flight != NO_REQUEST || !chat->heard)
        return NO_REQUEST;
    if (!chat->joined)
        return JOIN;
    if (chat->quorum && chat->waiting)
        return POST;
    return now_ms() - chat->client.last_request >= KEEPALIVE ? KEEP_ALIVE : NO_REQUEST;
}

/* [handle] or [handle, text]. REQ said it has room (POLLOUT); the send does not wait all the same. */
static void send_request(chat_t *chat, request_t request)
{
    const char *me = chat->client.args.name;
    const post_t *post = &chat->queue[chat->first];
    part_t parts[2] = {{me, strlen(me)}, {post->text, post->size}};
    if (send_if_room(chat->client.req, parts, request == POST ? 2 : 1))
        chat->in_flight = request;
}

/* The reply to our request; false when it is fatal (the chat client's `rejected` and
   `malformed-reply`). */
static bool on_reply(chat_t *chat, const frames_t *reply)
{
    client_t *client = &chat->client;
    char reason[REASON_SIZE];
    const char *code = client_on_reply(client, reply, reason); /* reports a new roster */
    if (code) {
        emit_error(code, "%s", reason);
        return false;
    }
    chat->joined = true;
    if (chat->in_flight == POST) {
        post_t *post = &chat->queue[chat->first];
        emit("sent", "{s:s%, s:O}", "text", post->text, post->size, "roster", client->roster);
        chat->sent++;
        free(post->text);
        chat->first = (chat->first + 1) % MAX_WAITING;
        chat->waiting--;
    }
    chat->in_flight = NO_REQUEST;
    return true;
}

static void *chat_agent(void *argument)
{
    agent_t *agent = agent_begin(argument);
    const desk_args *args = &agent->args;
    chat_t chat = {.client = {.args = {.name = args->name, .clients = args->chat_clients, .keepalive = KEEPALIVE}}};
    client_t *client = &chat.client;
    client->roster = json_array();
    client->last_request = now_ms();
    /* As the chat client: linger 0, the chat's maximum message size. */
    /* [SUB] first, subscribed to everything ("" is a prefix of every frame 0) before it connects,
       so that its subscription starts travelling as early as possible; it receives nothing else. */
    /* [REQ] then: strict lockstep, one request in flight and no second send before its reply
       (next_request keeps to it). A reply that never comes would leave it unable to send: the
       chat client's Lazy Pirate would throw the socket away for a new one; the agent has no
       retry (desk/PROTOCOL.md), it waits, and its pipe is still served. */
    client->sub = agent_socket(agent, ZMQ_SUB, 0, CHAT_MAX_MESSAGE, "chat-broadcasts");
    zmq_setsockopt(client->sub, ZMQ_SUBSCRIBE, "", 0);
    client->req = agent_socket(agent, ZMQ_REQ, 0, CHAT_MAX_MESSAGE, "chat-requests");
    bool running = connect_to(client->sub, args->chat_broadcasts) && connect_to(client->req, args->chat_requests);
    if (running)
        emit("ready", "{s:s}", "handle", args->name);

    while (running) {
        request_t due = next_request(&chat);
        /* [poll] Every agent polls its pipe with its sockets, in the order it serves them (the
           pipe, then REQ, then SUB), so that a STOP is seen however busy or stuck its protocol is;
           signals are blocked in agent threads, so no EINTR. REQ is writable (POLLOUT) only when
           it may send: the lockstep's own signal. Each ready socket gives one message a turn,
           received without waiting. */
        zmq_pollitem_t items[] = {
            {.socket = agent->pipe, .events = ZMQ_POLLIN},
            {.socket = client->req, .events = ZMQ_POLLIN | (due ? ZMQ_POLLOUT : 0)},
            {.socket = client->sub, .events = ZMQ_POLLIN},
        };
        long wait = -1; /* no request due: until a message, or until the next keep-alive */
        if (chat.joined && chat.in_flight == NO_REQUEST && !due) {
            int64_t left = client->last_request + KEEPALIVE - now_ms();
            wait = left > 0 ? (long)left : 0;
        }
        poll_all(items, 3, wait);
        frames_t message;
        if ((items[0].revents & ZMQ_POLLIN) && receive_command(agent, &message)) {
            if (is_stop(&message))
                running = false;
            else
                on_post(&chat, &message);
            frames_close(&message);
        }
        if ((items[1].revents & ZMQ_POLLIN) && recv_if_ready(client->req, &message)) {
            running = on_reply(&chat, &message) && running; /* a fatal reply: stop without being asked */
            frames_close(&message);
        }
        if ((items[2].revents & ZMQ_POLLIN) && recv_if_ready(client->sub, &message)) {
            client_on_broadcast(client, &message); /* rosters, posts, malformed-broadcast */
            chat.heard = true;
            frames_close(&message);
        }
        /* Then what is due: the join, a post, or a keep-alive, if REQ may send. */
        chat.quorum |= json_array_size(client->roster) >= (size_t)args->chat_clients;
        if ((items[1].revents & ZMQ_POLLOUT) && running && (due = next_request(&chat)))
            send_request(&chat, due);
    }

    zmq_close(client->sub);
    zmq_close(client->req);
    for (; chat.waiting; chat.waiting--, chat.first = (chat.first + 1) % MAX_WAITING)
        free(chat.queue[chat.first].text);
    json_decref(client->roster);
    names_free(&client->received);
    return agent_end(agent, json_pack("{s:i, s:i}", "sent", chat.sent, "received", client->received_total));
}

/* --- ticker agent: a ticker subscriber (examples/ticker/PROTOCOL.md) -------------------------- */

/* FOLLOW and FORGET: SUB's subscriptions change while it runs. */
static void on_follow(void *sub, symbols_t *followed, const frames_t *command)
{
    bool follow = frame_is(command, 0, "FOLLOW");
    if (!follow && !frame_is(command, 0, "FORGET")) {
        bad_command(command, "not a command of the ticker agent");
        return;
    }
    if (command->count != 2 || !is_symbol(frame_data(command, 1), frame_size(command, 1))) {
        bad_command(command, "FOLLOW and FORGET take a symbol of 1 to 8 letters A-Z");
        return;
    }
    symbol_t symbol = "";
    memcpy(symbol, frame_data(command, 1), frame_size(command, 1));
    int at = symbol_index(followed, symbol);
    if (follow && at < 0 && followed->count == MAX_SYMBOLS) {
        bad_command(command, "busy"); /* --follow's bound holds for FOLLOW too */
    } else if (follow && at < 0) {
        strcpy(followed->name[followed->count++], symbol);
        subscribe_symbol(sub, symbol, true);
        emit("subscribed", "{s:s}", "symbol", symbol);
    } else if (!follow && at >= 0) {
        /* SUB filters what it delivers against its current subscriptions: no tick of the
           symbol comes after this, even one already queued. */
        subscribe_symbol(sub, symbol, false);
        memmove(&followed->name[at], &followed->name[at + 1], (followed->count - at - 1) * sizeof(symbol_t));
        followed->count--;
        emit("unsubscribed", "{s:s}", "symbol", symbol);
    }
}

static void *ticker_agent(void *argument)
{
    agent_t *agent = agent_begin(argument);
    const desk_args *args = &agent->args;
    symbols_t followed = {0};
    int ticks = 0, malformed = 0;
    /* Ticks are a stream: linger 0; the ticker's maximum message size. */
    void *sub = agent_socket(agent, ZMQ_SUB, 0, TICKER_MAX_MESSAGE, "ticks");
    /* Our own topic, never published, before it connects: the publisher counts the desk as a
       subscriber by it. The symbols come later, one FOLLOW at a time. */
    char me[1 + MAX_NAME];
    me[0] = '@';
    memcpy(me + 1, args->name, strlen(args->name));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, me, 1 + strlen(args->name));
    bool running = connect_to(sub, args->ticks);
    if (running)
        emit("ready", "{s:s}", "name", args->name);

    while (running) {
        zmq_pollitem_t items[] = {
            {.socket = agent->pipe, .events = ZMQ_POLLIN},
            {.socket = sub, .events = ZMQ_POLLIN},
        };
        poll_all(items, 2, -1); /* no timer: a tick or a command wakes us */
        frames_t message;
        /* The ticks first: the poll has already fetched the tick SUB delivers next, filtered by
           the subscriptions of that moment; a FORGET served before it would meet it after the
           unsubscribe. Served first, it is checked against the set it was filtered by. A tick has
           4 frames: a fifth, kept, makes it malformed, and the rest are dropped. */
        if ((items[1].revents & ZMQ_POLLIN) && recv_at_most(sub, &message, 5)) {
            checked_t tick = {0};
            char reason[REASON_SIZE];
            const char *code = check_tick(&message, &followed, args->seed, &tick, reason);
            if (code) {
                malformed++;
                emit_error(code, "%s", reason);
            } else {
                ticks++;
                emit("tick", "{s:s, s:I, s:I, s:f}", "symbol", tick.name, "sequence", (json_int_t)tick.sequence,
                     "timestamp", (json_int_t)tick.timestamp, "price", tick.price);
            }
            frames_close(&message);
        }
        if ((items[0].revents & ZMQ_POLLIN) && receive_command(agent, &message)) {
            if (is_stop(&message))
                running = false;
            else
                on_follow(sub, &followed, &message);
            frames_close(&message);
        }
    }

    zmq_close(sub);
    return agent_end(agent, json_pack("{s:i, s:i}", "ticks", ticks, "malformed", malformed));
}

/* --- valuation agent: the source and the sink in one thread (examples/valuation/PROTOCOL.md) --- */

typedef struct {
    sink_t sink;   /* the sink's own state, its PULL (results) and its PUB (control) */
    void *orders;  /* the source's PUSH */
    bool trading;  /* a VALUE runs: waiting for workers, or go */
    int next;      /* the next order of the trade to send; --trade + 1 once all have gone */
    int *resend;   /* ids to send again, and how many of them have gone */
    int resends, resent;
    int64_t total; /* of the last complete trade */
} valuation_t;

static void on_value(valuation_t *valuation, const frames_t *command)
{
    sink_t *sink = &valuation->sink;
    uint64_t count = command->count == 2 && frame_size(command, 1) == 8 ? get_be64(frame_data(command, 1)) : 0;
    if (!frame_is(command, 0, "VALUE")) {
        bad_command(command, "not a command of the valuation agent");
        return;
    }
    if (count < 1 || count > MAX_TRADE) {
        bad_command(command, "VALUE takes N, 8 bytes big-endian, 1 to 1000000");
        return;
    }
    if (valuation->trading || valuation->resent < valuation->resends) {
        bad_command(command, "busy: a trade runs");
        return;
    }
    if (sink->state == FINISHED) { /* its workers have left: the new trade waits for new ones */
        names_free(&sink->ready);
        sink_set_state(sink, WAITING);
    }
    names_free(&sink->priced);
    free(sink->have);
    free(sink->resent);
    free(valuation->resend);
    sink->args.count = (int)count;
    sink->have = calloc(count + 1, sizeof *sink->have);
    sink->resent = calloc(count + 1, sizeof *sink->resent);
    valuation->resend = malloc(count * sizeof *valuation->resend);
    if (!sink->have || !sink->resent || !valuation->resend)
        fail("memory", "out of memory for %llu orders", (unsigned long long)count);
    sink->counted = 0;
    sink->total = 0;
    valuation->trading = true;
    valuation->next = 1;
    valuation->resends = valuation->resent = 0;
    sink_start_when_ready(sink); /* workers that said ready before the VALUE count */
}

static json_t *json_ids(const int *ids, int count)
{
    json_t *list = json_array();
    for (int i = 0; i < count; i++)
        json_array_append_new(list, json_integer(ids[i]));
    return list;
}

/* Whether an order waits to go out: the trade's, once it is `go`, or one to send again. */
static bool order_waiting(const valuation_t *valuation)
{
    const sink_t *sink = &valuation->sink;
    return (sink->state == GO && valuation->next <= sink->args.count) || valuation->resent < valuation->resends;
}

/* Orders go out while the PUSH has room (the poll said POLLOUT), SEND_BATCH at most; the rest
   wait for the next POLLOUT. Never a blocking send: results and the pipe are served meanwhile. */
static void send_orders(valuation_t *valuation)
{
    sink_t *sink = &valuation->sink;
    for (int sent = 0; sent < SEND_BATCH && order_waiting(valuation); sent++) {
        bool first_time = sink->state == GO && valuation->next <= sink->args.count;
        int id = first_time ? valuation->next : valuation->resend[valuation->resent];
        order_frames_t frames = order_frames(sink->args.seed, (uint64_t)id); /* the same bytes every time */
        part_t parts[5];
        order_parts(&frames, parts);
        if (!send_if_room(valuation->orders, parts, 5))
            return;
        if (first_time && valuation->next++ == sink->args.count)
            emit("sent", "{s:i}", "orders", sink->args.count);
        if (!first_time && ++valuation->resent == valuation->resends)
            emit("resent", "{s:o}", "ids", json_ids(valuation->resend, valuation->resends));
    }
}

/* Nothing is acknowledged in PUSH/PULL: orders queued for a worker that died are gone without a
   trace. After --quiet ms without a new result, every missing id goes out again. */
static void resend_missing(valuation_t *valuation)
{
    valuation->resends = sink_missing(&valuation->sink, valuation->resend);
    valuation->resent = 0;
    valuation->sink.quiet_since = now_ms();
    emit("resend", "{s:o}", "ids", json_ids(valuation->resend, valuation->resends));
}

/* The three sockets, all bound; false if a bind failed. */
static bool bind_all(valuation_t *valuation, const desk_args *args)
{
    const char *endpoints[] = {args->orders, args->results, args->control};
    void *sockets[] = {valuation->orders, valuation->sink.results, valuation->sink.control};
    char bound[3][ENDPOINT_SIZE];
    for (int i = 0; i < 3; i++) {
        if (zmq_bind(sockets[i], endpoints[i]) < 0) {
            emit_error("bind", "cannot bind %s: %s", endpoints[i], zmq_strerror(errno));
            return false;
        }
        last_endpoint(sockets[i], bound[i]); /* the port a wildcard `*` got */
    }
    emit("ready", "{s:s, s:s, s:s}", "orders", bound[0], "results", bound[1], "control", bound[2]);
    return true;
}

static void *valuation_agent(void *argument)
{
    agent_t *agent = agent_begin(argument);
    const desk_args *args = &agent->args;
    valuation_t valuation = {.sink = {.args = {.workers = args->workers, .seed = args->seed}, .state = WAITING}};
    sink_t *sink = &valuation.sink;
    /* [PUSH] deals orders round-robin to the connected workers, and never drops one: at the
       high-water mark it blocks instead. */
    /* [PULL] fair-queues readies and results from every connected worker. */
    /* [PUB] fans the state out to every worker, never blocking, dropping for one not yet connected
       or past its high-water mark. */
    /* [linger] 0, but the control PUB's 1000 ms: the `finished` sent when the trade completes must
       still reach the workers if the desk stops right after (they leave when they hear it). Closing
       the socket returns at once; the context's end waits up to that long for it to go out. */
    valuation.orders = agent_socket(agent, ZMQ_PUSH, 0, VALUATION_MAX_MESSAGE, "orders");
    sink->results = agent_socket(agent, ZMQ_PULL, 0, VALUATION_MAX_MESSAGE, "results");
    sink->control = agent_socket(agent, ZMQ_PUB, 1000, VALUATION_MAX_MESSAGE, "control");
    bool running = bind_all(&valuation, args);
    int64_t next_beat = now_ms();

    while (running) {
        /* The wait: until the next heartbeat, or until the quiet period ends once every order is out. */
        int64_t now = now_ms();
        long wait = (long)(next_beat - now);
        int64_t quiet_end = sink->quiet_since + args->quiet;
        if (sink->state == GO && !order_waiting(&valuation) && quiet_end - now < wait)
            wait = (long)(quiet_end - now);
        /* [HWM] With no worker connected, or every worker's queue at its high-water mark (1000
           orders), PUSH is mute: a send would block. So the agent polls the PUSH for room
           (POLLOUT) only while an order waits (events 0: not polled), with the pipe and results. */
        zmq_pollitem_t items[] = {
            {.socket = agent->pipe, .events = ZMQ_POLLIN},
            {.socket = valuation.orders, .events = order_waiting(&valuation) ? ZMQ_POLLOUT : 0},
            {.socket = sink->results, .events = ZMQ_POLLIN},
        };
        poll_all(items, 3, wait > 0 ? wait : 0);
        frames_t message;
        if ((items[0].revents & ZMQ_POLLIN) && receive_command(agent, &message)) {
            if (is_stop(&message))
                running = false;
            else
                on_value(&valuation, &message);
            frames_close(&message);
        }
        if (items[1].revents & ZMQ_POLLOUT)
            send_orders(&valuation);
        /* A result has 4 frames, a ready 2: a fifth, kept, makes either malformed. */
        if ((items[2].revents & ZMQ_POLLIN) && recv_at_most(sink->results, &message, 5)) {
            if (frame_is(&message, 0, "ready")) {
                sink_on_ready(sink, &message); /* worker, malformed-ready */
                if (valuation.trading)
                    sink_start_when_ready(sink); /* go (started) once --workers are ready */
            } else {
                sink_on_result(sink, &message); /* result, late-duplicate, errors; complete */
            }
            frames_close(&message);
            if (valuation.trading && sink->state == FINISHED) {
                valuation.trading = false;
                valuation.total = sink->total;
            }
        }
        if (!running)
            break;
        /* The timers: the heartbeat, then the quiet period's resend. */
        now = now_ms();
        if (now >= next_beat) {
            /* [slow joiner] A worker's subscription reaches the PUB some time after it connects,
               and what is published before is lost for it: so the state is level-triggered,
               repeated every heartbeat, and a worker that joins late learns it. */
            send_frame(sink->control, STATES[sink->state], strlen(STATES[sink->state]), false);
            next_beat = now + args->heartbeat;
        }
        if (sink->state == GO && !order_waiting(&valuation) && now - sink->quiet_since >= args->quiet)
            resend_missing(&valuation);
    }

    zmq_close(valuation.orders);
    zmq_close(sink->results);
    zmq_close(sink->control); /* its linger runs in the background; the context's end waits for it */
    names_free(&sink->ready);
    names_free(&sink->priced);
    free(sink->have);
    free(sink->resent);
    free(valuation.resend);
    return agent_end(agent, json_pack("{s:i, s:I}", "orders", sink->counted, "total", (json_int_t)valuation.total));
}

/* --- query agent: a CHP facade (examples/query/PROTOCOL.md) ----------------------------------- */

typedef struct {
    char key[QUERY_MAX_KEY], value[QUERY_MAX_VALUE];
    size_t key_size, value_size;
    bool written; /* sent as a KVSET, and not read back yet */
} pending_t;

typedef enum { WAIT_HUGZ, SYNCING, LIVE } phase_t;

typedef struct {
    facade_t facade; /* the facade's own state: subtrees, watermarks, map */
    void *snapshot, *updates, *collector;
    phase_t phase;
    bool collector_live; /* the collector's subscription has arrived on the XPUB */
    pending_t writes[MAX_WAITING];
    size_t count;
} query_t;

static void on_write(query_t *query, const frames_t *command)
{
    const subtrees_t *trees = &query->facade.args.subtrees;
    const char *key = frame_data(command, command->count > 1 ? 1 : 0);
    size_t size = command->count == 3 ? frame_size(command, 1) : 0, in = 0;
    for (size_t i = 0; size && is_key(key, size) && i < trees->count; i++)
        in += in_subtree(key, size, trees->tree[i].bytes, trees->tree[i].size);
    if (!frame_is(command, 0, "WRITE")) {
        bad_command(command, "not a command of the query agent");
    } else if (command->count != 3 || !is_key(key, size) || frame_size(command, 2) < 1 ||
               frame_size(command, 2) > QUERY_MAX_VALUE) {
        bad_command(command, "WRITE takes a key and a value of 1 to 256 bytes");
    } else if (!in) {
        bad_command(command, "the key is in none of the agent's subtrees: it could never be read back");
    } else if (query->count == MAX_WAITING) {
        bad_command(command, "busy: 100 writes wait to be read back");
    } else {
        pending_t *write = &query->writes[query->count++];
        *write = (pending_t){.key_size = size, .value_size = frame_size(command, 2)};
        memcpy(write->key, key, size);
        memcpy(write->value, frame_data(command, 2), write->value_size);
    }
}

/* Writes go out once every KTHXBAI is in and the collector listens: XPUB never blocks, and a
   KVSET sent before the collector's subscription arrived would be dropped. */
static void send_writes(query_t *query)
{
    if (query->phase != LIVE || !query->collector_live)
        return;
    for (size_t i = 0; i < query->count; i++) {
        pending_t *write = &query->writes[i];
        if (!write->written) /* sequence 8 zero bytes, no UUID, no properties: `wrote` */
            facade_write(query->collector, write->key, write->key_size, write->value, write->value_size, 0);
        write->written = true;
    }
}

/* A KVPUB just applied: is it one of our writes coming back? */
static void read_back(query_t *query, const frames_t *kvpub)
{
    const char *key = frame_data(kvpub, 0), *value = frame_data(kvpub, 4);
    size_t size = frame_size(kvpub, 0), value_size = frame_size(kvpub, 4);
    for (size_t i = 0; i < query->count; i++) {
        pending_t *write = &query->writes[i];
        if (write->written && write->key_size == size && !memcmp(write->key, key, size) &&
            write->value_size == value_size && !memcmp(write->value, value, value_size)) {
            emit("read-back", "{s:s%, s:o, s:o}", "key", key, size, "value", json_hex(value, value_size),
                 "sequence", json_u64(get_be64(frame_data(kvpub, 1))));
            query->writes[i] = query->writes[--query->count];
            return;
        }
    }
}

/* A message on the SUB: the HUGZ that proves our subscriptions live, then KVPUBs. */
static void on_updates(query_t *query, const frames_t *message)
{
    if (query->phase == WAIT_HUGZ) { /* whatever comes before it is in the snapshots */
        if (frame_is(message, 0, "HUGZ")) {
            facade_request_snapshots(&query->facade, query->snapshot); /* every subtree at once */
            query->phase = SYNCING;
        }
        return;
    }
    int applied = query->facade.applied;
    facade_on_update(&query->facade, message); /* above the watermarks; malformed-kvpub, unexpected-key */
    if (query->facade.applied > applied) { /* checked and applied: its frames are a KVPUB's */
        emit("applied", "{s:s%, s:o, s:o}", "key", frame_data(message, 0), frame_size(message, 0), "value",
             json_hex(frame_data(message, 4), frame_size(message, 4)), "sequence",
             json_u64(get_be64(frame_data(message, 1))));
        read_back(query, message);
    }
}

/* A message on the DEALER: KVSYNCs and KTHXBAIs (synced), then nothing more. */
static void on_snapshot(query_t *query, const frames_t *message)
{
    char text[QUOTE_SIZE];
    if (query->phase != SYNCING) {
        emit_error("unexpected-snapshot", "%s after every KTHXBAI",
                   quote(frame_data(message, 0), frame_size(message, 0), text));
        return;
    }
    facade_on_snapshot(&query->facade, message);
    if (!query->facade.waiting)
        query->phase = LIVE; /* the SUB's updates, which waited in order, are read from now on */
}

static void *query_agent(void *argument)
{
    agent_t *agent = agent_begin(argument);
    const desk_args *args = &agent->args;
    query_t query = {.facade = {.args = {.name = args->name, .subtrees = args->subtrees}}};
    /* As the facade: linger 0, but the XPUB's 1000 ms (the last write may still be queued when the
       desk stops). The SUB connects, then subscribes to every subtree and last to HUGZ
       (facade_subscribe). */
    /* [DEALER] sends and receives freely: every ICANHAZ? in flight at once, without REQ's lockstep
       and without an envelope of its own. */
    /* [XPUB] to the collector: a PUB that hands us the collector's subscription as a message
       (first byte 1), so we know when writes arrive. */
    query.snapshot = agent_socket(agent, ZMQ_DEALER, 0, QUERY_MAX_MESSAGE, "snapshot");
    query.updates = agent_socket(agent, ZMQ_SUB, 0, QUERY_MAX_MESSAGE, "updates");
    query.collector = agent_socket(agent, ZMQ_XPUB, 1000, QUERY_MAX_MESSAGE, "collector");
    bool running = connect_to(query.updates, args->updates) && connect_to(query.snapshot, args->snapshot) &&
                   connect_to(query.collector, args->collector);
    json_t *listed = facade_subscribe(query.updates, &query.facade.args.subtrees);
    if (running)
        emit("ready", "{s:s, s:O}", "name", args->name, "subtrees", listed);
    json_decref(listed);

    while (running) {
        /* The pipe, DEALER, SUB and XPUB, in the order served. The SUB is not read while the
           snapshots come in (events 0): its updates wait, in order. */
        zmq_pollitem_t items[4] = {
            {.socket = agent->pipe, .events = ZMQ_POLLIN},
            {.socket = query.snapshot, .events = ZMQ_POLLIN},
            {.socket = query.updates, .events = query.phase == SYNCING ? 0 : ZMQ_POLLIN},
            {.socket = query.collector, .events = ZMQ_POLLIN},
        };
        poll_all(items, 4, -1); /* no timer: a message or a command wakes us */
        frames_t message;
        if ((items[0].revents & ZMQ_POLLIN) && receive_command(agent, &message)) {
            if (is_stop(&message))
                running = false;
            else
                on_write(&query, &message);
            frames_close(&message);
        }
        if ((items[1].revents & ZMQ_POLLIN) && recv_at_most(query.snapshot, &message, QUERY_MAX_FRAMES)) {
            on_snapshot(&query, &message);
            frames_close(&message);
        }
        if ((items[2].revents & ZMQ_POLLIN) && recv_at_most(query.updates, &message, QUERY_MAX_FRAMES)) {
            on_updates(&query, &message);
            frames_close(&message);
        }
        zmq_msg_t frame; /* XPUB passes each subscription on as a frame of its own */
        zmq_msg_init(&frame);
        if ((items[3].revents & ZMQ_POLLIN) && frame_if_ready(query.collector, &frame) &&
            zmq_msg_size(&frame) == 1 && *(const char *)zmq_msg_data(&frame) == 1)
            query.collector_live = true; /* the collector's subscription to everything */
        zmq_msg_close(&frame);
        send_writes(&query); /* then what is due: the writes, once every KTHXBAI is in */
    }

    zmq_close(query.snapshot);
    zmq_close(query.updates);
    zmq_close(query.collector);
    json_t *summary = facade_summary(&query.facade); /* as the facade's done */
    facade_free(&query.facade);
    return agent_end(agent, summary);
}

/* --- the main thread ------------------------------------------------------------------------ */

static void *(*const RUN[AGENTS])(void *) = {chat_agent, ticker_agent, valuation_agent, query_agent};

typedef enum { RUNNING, DONE, SIGNALED, TIMED_OUT, FAILED } outcome_t;

typedef struct {
    desk_args args;
    void *pipe[AGENTS]; /* the main thread's ends */
    pthread_t thread[AGENTS];
    bool started[AGENTS], ready[AGENTS], running[AGENTS], acknowledged[AGENTS];
    bool stopping;
    int failed; /* the agent that stopped without being asked, or -1 */
    char endpoints[3][ENDPOINT_SIZE]; /* the valuation agent's orders, results, control */
    /* the scenario */
    symbols_t watched;      /* the symbols it waits for: --follow, less those forgotten, plus the page's */
    int ticks[MAX_SYMBOLS]; /* of each watched symbol */
    int tick_events, sent;
    names_t received; /* value: the posts received from the handle */
    size_t synced;
    bool forgotten, complete, read_back;
    char total[24]; /* the valuation written to the engine, in decimal */
    bool finished;  /* the scenario has been done (with --http, the desk serves on) */
    /* the page (--http) */
    web_t *web;
    bool serving;                  /* the loop runs: the page's socket is polled */
    bool trading;                  /* a VALUE went (the scenario's or the page's), its complete not yet */
    int orders, results, reported; /* the trade's size, its results so far, and in the last progress */
    int64_t reported_at;
} desk_t;

/* Every line the desk writes goes out here: to stdout, and to the page's event streams (`key`:
   the line a later one replaces in the page's replay, NULL for none). `result` lines are not
   published: one per order, a million in a big trade; the page gets `progress` instead. */
static void write_line(desk_t *desk, const char *event, const char *line, size_t size, const char *key,
                       bool publish)
{
    write_event(event, line, size);
    if (desk->web && publish)
        web_publish(desk->web, line, size, key);
}

/* The main thread's own events (its emit()), through write_line as well. */
static void report_line(const char *event, json_t *line, void *state)
{
    char *text = event_text(line);
    if (!text) {
        report_events_to(NULL, NULL);
        fail("memory", "out of memory");
    }
    write_line(state, event, text, strlen(text), NULL, true);
    free(text);
}

/* The trade's progress, to the page only: the results counted, at most every PROGRESS_EVERY ms
   while the count changes, and (`now`) right before the trade's `complete`. */
static void publish_progress(desk_t *desk, bool now)
{
    int64_t time = now_ms();
    bool due = now || time - desk->reported_at >= PROGRESS_EVERY;
    if (!desk->web || !desk->trading || desk->results == desk->reported || !due)
        return;
    json_t *line = json_pack("{s:s, s:s, s:i, s:i}", "event", "progress", "agent", "valuation", "results",
                             desk->results, "orders", desk->orders);
    char *text = event_text(line);
    if (!text)
        fail("memory", "out of memory");
    web_publish(desk->web, text, strlen(text), "progress");
    free(text);
    json_decref(line);
    desk->reported = desk->results;
    desk->reported_at = time;
}

/* A command down a pipe. ZMQ_DONTWAIT: a live agent always has room (it reads its pipe every
   turn); one that has gone has no peer left, and a blocking send to it would wait forever. */
static void command(desk_t *desk, int which, const part_t *parts, size_t count)
{
    if (!desk->running[which] || !send_if_room(desk->pipe[which], parts, count))
        log_line("desk: the %s agent is gone, a command is dropped", AGENT_NAMES[which]);
}

/* VALUE N to the valuation agent: a trade runs until its `complete`. */
static void start_trade(desk_t *desk, int orders)
{
    unsigned char count[8];
    put_be64(count, (uint64_t)orders);
    command(desk, VALUATION, (part_t[]){{"VALUE", 5}, {count, 8}}, 2);
    desk->trading = true;
    desk->orders = orders;
    desk->results = desk->reported = 0;
}

/* The symbols the scenario waits for: a FOLLOW adds one (its ticks count from 0), a FORGET (the
   desk's own, or the page's) removes it. */
static void watch(desk_t *desk, const char *symbol, bool follow)
{
    symbols_t *watched = &desk->watched;
    int at = symbol_index(watched, symbol);
    if (follow && at < 0 && watched->count < MAX_SYMBOLS) {
        strcpy(watched->name[watched->count], symbol);
        desk->ticks[watched->count++] = 0;
    } else if (!follow && at >= 0) {
        size_t after = --watched->count - (size_t)at;
        memmove(&watched->name[at], &watched->name[at + 1], after * sizeof *watched->name);
        memmove(&desk->ticks[at], &desk->ticks[at + 1], after * sizeof *desk->ticks);
    }
}

static void valuation_key(const desk_t *desk, char key[64])
{
    snprintf(key, 64, "/desks/%s/valuation", desk->args.name);
}

/* What the main thread does with an event it has written (PROTOCOL.md, "The loop"). Frame 0
   names the event, and the agent tells events of the same name apart (the chat's `sent` is a
   post's, the valuation's its orders'). */
static void act(desk_t *desk, int which, const frames_t *event)
{
    const desk_args *args = &desk->args;
    if (which == TICKER && frame_is(event, 0, "tick") && event->count == 3 && frame_size(event, 2) <= MAX_SYMBOL) {
        symbol_t symbol = "";
        memcpy(symbol, frame_data(event, 2), frame_size(event, 2));
        int at = symbol_index(&desk->watched, symbol);
        if (at >= 0)
            desk->ticks[at]++;
        if (desk->tick_events < args->posts) { /* prices drive the chat */
            char text[128];
            snprintf(text, sizeof text, CHAT_POST_FORMAT, args->name, ++desk->tick_events);
            command(desk, CHAT, (part_t[]){{"POST", 4}, {text, strlen(text)}}, 2);
        }
        if (*args->forget && !desk->forgotten && at >= 0 && !strcmp(symbol, args->forget) &&
            desk->ticks[at] >= args->forget_after) {
            command(desk, TICKER, (part_t[]){{"FORGET", 6}, {symbol, strlen(symbol)}}, 2);
            desk->forgotten = true;
            watch(desk, symbol, false);
        }
    } else if (which == CHAT && frame_is(event, 0, "sent")) {
        desk->sent++;
    } else if (which == CHAT && frame_is(event, 0, "received") && event->count == 3 &&
               is_name(frame_data(event, 2), frame_size(event, 2))) {
        names_get(&desk->received, frame_data(event, 2), frame_size(event, 2), NULL)->value++;
    } else if (which == VALUATION && frame_is(event, 0, "complete") && event->count == 3 && frame_size(event, 2) == 8) {
        /* The valuation goes to the engine: the total in decimal ASCII. */
        char key[64];
        valuation_key(desk, key);
        snprintf(desk->total, sizeof desk->total, "%lld", (long long)(int64_t)get_be64(frame_data(event, 2)));
        desk->complete = true;
        desk->trading = false;
        command(desk, QUERY, (part_t[]){{"WRITE", 5}, {key, strlen(key)}, {desk->total, strlen(desk->total)}}, 3);
    } else if (which == VALUATION && frame_is(event, 0, "result")) {
        desk->results++;
    } else if (which == QUERY && frame_is(event, 0, "synced")) {
        desk->synced++;
    } else if (which == QUERY && frame_is(event, 0, "read-back") && event->count == 4 && desk->complete) {
        char key[64];
        valuation_key(desk, key);
        desk->read_back |= frame_is(event, 2, key) && frame_is(event, 3, desk->total);
    }
}

/* One event from an agent: frame 1 written to stdout as one line, unchanged, then acted on. */
static void on_event(desk_t *desk, int which, const frames_t *event)
{
    /* The page's replay keeps the latest tick of each symbol, and applied of each key. */
    char key[16 + QUERY_MAX_KEY] = "";
    if (event->count == 3 && frame_size(event, 2) <= QUERY_MAX_KEY &&
        ((which == TICKER && frame_is(event, 0, "tick")) || (which == QUERY && frame_is(event, 0, "applied"))))
        snprintf(key, sizeof key, "%.*s %.*s", (int)frame_size(event, 0), frame_data(event, 0),
                 (int)frame_size(event, 2), frame_data(event, 2));
    bool result = which == VALUATION && frame_is(event, 0, "result");
    if (which == VALUATION && frame_is(event, 0, "complete"))
        publish_progress(desk, true); /* the last count, right before the complete */
    char name[32]; /* frame 0, as a string */
    snprintf(name, sizeof name, "%.*s", (int)frame_size(event, 0), frame_data(event, 0));
    write_line(desk, name, frame_data(event, 1), frame_size(event, 1), *key ? key : NULL, !result);
    if (frame_is(event, 0, "ready")) {
        desk->ready[which] = true;
        for (size_t i = 0; which == VALUATION && i < 3 && i + 2 < event->count; i++)
            snprintf(desk->endpoints[i], ENDPOINT_SIZE, "%.*s", (int)frame_size(event, i + 2), frame_data(event, i + 2));
    } else if (frame_is(event, 0, "stopped")) { /* the agent has closed its sockets */
        desk->running[which] = false;
        desk->acknowledged[which] = desk->stopping;
        if (!desk->stopping && desk->failed < 0)
            desk->failed = which;
    } else if (!desk->stopping) {
        act(desk, which, event);
    }
}

/* Reads one event from each pipe that has one, waiting up to timeout_ms; while the desk serves its
   page, the page's socket is polled too, and the result says whether it has a message. */
static bool read_pipes(desk_t *desk, long timeout_ms)
{
    zmq_pollitem_t items[AGENTS + 1];
    int count = 0;
    for (; count < AGENTS && desk->started[count]; count++)
        items[count] = (zmq_pollitem_t){.socket = desk->pipe[count], .events = ZMQ_POLLIN};
    int pipes = count;
    if (desk->serving)
        items[count++] = (zmq_pollitem_t){.socket = web_socket(desk->web), .events = ZMQ_POLLIN};
    poll_all(items, count, timeout_ms); /* a signal (EINTR): nothing, and the caller looks at its flag */
    for (int i = 0; i < pipes; i++) {
        frames_t event; /* from our own agents: frames 0 and 1 at least */
        if ((items[i].revents & ZMQ_POLLIN) && recv_if_ready(desk->pipe[i], &event)) {
            if (event.count >= 2)
                on_event(desk, i, &event);
            frames_close(&event);
        }
    }
    return count > pipes && (items[pipes].revents & ZMQ_POLLIN);
}

/* Start-up, step 2: for each agent in turn, bind its pipe, start its thread, wait for its
   `ready`. Each `ready` line is then the agent's own proof that its sockets exist. */
static outcome_t start_agents(desk_t *desk, agent_t agents[AGENTS], void *context, const deadline_t *deadline)
{
    for (int which = 0; which < AGENTS; which++) {
        char endpoint[32];
        pipe_endpoint(which, endpoint);
        /* Bind before the agent connects: the inproc order that works in every library. */
        desk->pipe[which] = zmq_socket(context, ZMQ_PAIR);
        int linger = 0;
        zmq_setsockopt(desk->pipe[which], ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_bind(desk->pipe[which], endpoint) < 0)
            fail("bind", "cannot bind %s: %s", endpoint, zmq_strerror(errno));
        agents[which] = (agent_t){.which = which, .context = context, .args = desk->args};
        if (which == QUERY) { /* its own copy of the subtrees, whose watermarks it keeps */
            subtrees_t *trees = &agents[which].args.subtrees;
            size_t size = trees->count * sizeof *trees->tree;
            subtree_t *copy = malloc(size);
            if (!copy)
                fail("memory", "out of memory");
            trees->tree = memcpy(copy, trees->tree, size);
        }
        if (pthread_create(&desk->thread[which], NULL, RUN[which], &agents[which]))
            fail("thread", "cannot start the %s agent's thread", AGENT_NAMES[which]);
        desk->started[which] = desk->running[which] = true;
        while (!desk->ready[which] && desk->running[which] && desk->failed < 0) {
            if (deadline_expired(deadline))
                return TIMED_OUT;
            read_pipes(desk, deadline_cap(deadline, POLL_MAX));
        }
        if (desk->failed >= 0) /* its first event was not `ready`: a bind or connect failed */
            return FAILED;
    }
    return RUNNING;
}

static bool scenario_done(const desk_t *desk)
{
    const desk_args *args = &desk->args;
    for (size_t i = 0; i < desk->watched.count; i++) /* every symbol still followed */
        if (desk->ticks[i] < args->tick_count)
            return false;
    if (*args->forget && !desk->forgotten)
        return false;
    size_t heard = 0; /* handles, ours included, with --posts posts received */
    for (size_t i = 0; i < desk->received.count; i++)
        heard += desk->received.entry[i].value >= args->posts;
    if (args->posts && (desk->sent < args->posts || heard < (size_t)args->chat_clients))
        return false;
    if (args->trade && !(desk->complete && desk->read_back))
        return false;
    return desk->synced >= args->subtrees.count;
}

/* A command from the page (web.h): its body checked as the agent checks it, reported as `command`,
   then handed to the agent, which reports what it does with it (subscribed, sent, started... or
   its bad-command). The page's FOLLOW and FORGET change what the scenario waits for. */
static int on_page_command(void *state, const char *target, const char *body, size_t size, char why[REASON_SIZE])
{
    desk_t *desk = state;
    if (!strcmp(target, "/chat")) { /* the body is UTF-8 (web.c checked it) */
        if (size < 1 || size > CHAT_MAX_TEXT)
            return snprintf(why, REASON_SIZE, "a chat text is 1 to %d bytes of UTF-8", CHAT_MAX_TEXT), 400;
        emit("command", "{s:s, s:s%}", "command", "POST", "text", body, size);
        command(desk, CHAT, (part_t[]){{"POST", 4}, {body, size}}, 2);
        return 204;
    }
    if (!strcmp(target, "/value")) {
        int orders = 0;
        size_t digits = 0;
        for (; digits < size && digits < 8 && body[digits] >= '0' && body[digits] <= '9'; digits++)
            orders = 10 * orders + (body[digits] - '0');
        if (!size || digits < size || orders < 1 || orders > MAX_TRADE)
            return snprintf(why, REASON_SIZE, "a trade is 1 to %d orders, in decimal digits", MAX_TRADE), 400;
        if (desk->trading)
            return snprintf(why, REASON_SIZE, "a trade runs: wait for its complete"), 409;
        emit("command", "{s:s, s:i}", "command", "VALUE", "orders", orders);
        start_trade(desk, orders);
        return 204;
    }
    bool follow = !strcmp(target, "/follow"); /* else /forget */
    if (!is_symbol(body, size))
        return snprintf(why, REASON_SIZE, "a symbol is 1 to 8 letters A-Z"), 400;
    const char *name = follow ? "FOLLOW" : "FORGET";
    symbol_t symbol = "";
    memcpy(symbol, body, size);
    emit("command", "{s:s, s:s}", "command", name, "symbol", symbol);
    command(desk, TICKER, (part_t[]){{name, 6}, {symbol, size}}, 2);
    watch(desk, symbol, follow);
    desk->forgotten |= !follow && !strcmp(symbol, desk->args.forget); /* the FORGET of --forget is sent */
    return 204;
}

/* The loop: poll the four pipes (and the page's socket), write and act on each event, until the
   scenario is done (with --http: never), a signal, the deadline, or an agent that stopped by
   itself. */
static outcome_t run(desk_t *desk, const deadline_t *deadline)
{
    desk->serving = desk->web != NULL;
    for (;;) {
        if (desk->failed >= 0)
            return FAILED;
        desk->finished |= scenario_done(desk);
        if (desk->finished && !desk->web) /* with --http, a page for a person serves on */
            return DONE;
        if (stop_requested())
            return SIGNALED;
        if (deadline_expired(deadline))
            return TIMED_OUT;
        bool browsers = read_pipes(desk, deadline_cap(deadline, POLL_MAX));
        if (desk->serving) {
            int64_t now = now_ms();
            if (browsers)
                web_receive(desk->web, now, on_page_command, desk);
            publish_progress(desk, false);
            web_expire(desk->web, now);
        }
    }
}

/* Shut-down, steps 1 to 3; returns an agent that never acknowledged STOP, or -1. */
static int shut_down(desk_t *desk)
{
    desk->stopping = true;
    for (int i = 0; i < AGENTS; i++) /* all four at once: the agents are independent */
        if (desk->running[i])
            command(desk, i, (part_t[]){{"STOP", 4}}, 1);
    /* Each agent closes its sockets, then says `stopped`; what it sent before is still written. */
    deadline_t wait = deadline_start(STOP_WAIT);
    for (;;) {
        int stuck = -1;
        for (int i = AGENTS - 1; i >= 0; i--)
            stuck = desk->running[i] ? i : stuck;
        if (stuck < 0)
            break;
        if (deadline_expired(&wait))
            return stuck;
        read_pipes(desk, deadline_cap(&wait, POLL_MAX));
    }
    for (int i = 0; i < AGENTS && desk->started[i]; i++) {
        pthread_join(desk->thread[i], NULL);
        zmq_close(desk->pipe[i]);
    }
    return -1;
}

/* What the scenario still lacks, for the reason of a timeout. */
static void progress(const desk_t *desk, char text[256])
{
    size_t used = (size_t)snprintf(text, 256, "agents ready %d%d%d%d; ticks", desk->ready[0], desk->ready[1],
                                   desk->ready[2], desk->ready[3]);
    for (size_t i = 0; i < desk->watched.count && used < 200; i++)
        used += (size_t)snprintf(text + used, 256 - used, " %s %d", desk->watched.name[i], desk->ticks[i]);
    snprintf(text + used, 256 - used, "; posts sent %d, handles heard %zu; complete %d; synced %zu; read back %d",
             desk->sent, desk->received.count, desk->complete, desk->synced, desk->read_back);
}

int desk_trader(int argc, char **argv)
{
    desk_args args = {
        .chat_requests = "tcp://127.0.0.1:5555",
        .chat_broadcasts = "tcp://127.0.0.1:5556",
        .chat_clients = 1,
        .posts = 5,
        .ticks = "tcp://127.0.0.1:5557",
        .forget = "",
        .forget_after = 10,
        .tick_count = 20,
        .seed = 1,
        .orders = "tcp://127.0.0.1:5562",
        .results = "tcp://127.0.0.1:5560",
        .control = "tcp://127.0.0.1:5561",
        .trade = 100,
        .workers = 1,
        .quiet = 1000,
        .heartbeat = 100,
        .snapshot = "tcp://127.0.0.1:5566",
        .updates = "tcp://127.0.0.1:5567",
        .collector = "tcp://127.0.0.1:5568",
        .http = "",
        .timeout = 60000,
    };
    parse_symbols("AAPL,GOOG,MSFT", &args.follow); /* the defaults, parsed like the flags */
    parse_subtrees("/prices/,/desks/", &args.subtrees);
    subtree_t *default_trees = args.subtrees.tree; /* replaced if --subtrees is given */
    const flag_t flags[] = {
        REQUIRED_FLAG("name", parse_desk_name, args.name),
        TEXT_FLAG("chat-requests", args.chat_requests),
        TEXT_FLAG("chat-broadcasts", args.chat_broadcasts),
        NUMBER_FLAG("chat-clients", args.chat_clients, 1),
        NUMBER_FLAG("posts", args.posts, 0),
        TEXT_FLAG("ticks", args.ticks),
        PARSED_FLAG("follow", parse_symbols, args.follow),
        TEXT_FLAG("forget", args.forget),
        NUMBER_FLAG("forget-after", args.forget_after, 1),
        NUMBER_FLAG("tick-count", args.tick_count, 1),
        PARSED_FLAG("seed", parse_u64, args.seed),
        TEXT_FLAG("orders", args.orders),
        TEXT_FLAG("results", args.results),
        TEXT_FLAG("control", args.control),
        NUMBER_FLAG("trade", args.trade, 0),
        NUMBER_FLAG("workers", args.workers, 1),
        NUMBER_FLAG("quiet", args.quiet, 1),
        NUMBER_FLAG("heartbeat", args.heartbeat, 1),
        TEXT_FLAG("snapshot", args.snapshot),
        TEXT_FLAG("updates", args.updates),
        TEXT_FLAG("collector", args.collector),
        PARSED_FLAG("subtrees", parse_subtrees, args.subtrees),
        PARSED_FLAG("http", parse_http, args.http),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(args.monitor),
    };
    /* 1. Every flag checked before any thread starts. */
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]) || !flags_agree(argv[0], &args))
        return 2;
    if (args.subtrees.tree != default_trees)
        free(default_trees);

    json_object_seed(0); /* jansson's hash seed, set once before any thread makes a JSON object */
    /* SIGTERM and SIGINT are for the main thread only. The OS delivers a process's signal to any
       thread that does not block it, so they are blocked before the agents start (and before
       libzmq starts its I/O thread, with the first socket): every thread inherits the mask. The
       handler only raises a flag; the main thread unblocks them for itself once the agents run. */
    stop_on_signals();
    sigset_t signals = block_stop_signals();
    deadline_t deadline = deadline_start(args.timeout);
    /* The process's one context: every agent makes its sockets from it, and the inproc pipes
       exist only inside it. */
    void *context = zmq_ctx_new();
    desk_t desk = {.args = args, .failed = -1, .watched = args.follow};
    agent_t agents[AGENTS];
    /* The page's STREAM socket, before any thread starts: a bind that fails fails the desk now. */
    if (*args.http && !(desk.web = web_open(context, args.http, args.monitor)))
        fail("bind", "cannot bind %s: %s", args.http, zmq_strerror(errno));
    report_events_to(report_line, &desk); /* the main thread's own lines go to the page too */

    /* 2. The agents, one at a time. */
    outcome_t outcome = start_agents(&desk, agents, context, &deadline);
    /* 3. The signals, now the main thread's alone (one that came meanwhile is delivered now). */
    pthread_sigmask(SIG_UNBLOCK, &signals, NULL);
    if (outcome == RUNNING) {
        emit("ready", "{s:s, s:s, s:s, s:s, s:s}", "name", args.name, "orders", desk.endpoints[0], "results",
             desk.endpoints[1], "control", desk.endpoints[2], "http", desk.web ? web_endpoint(desk.web) : "");
        if (desk.web) /* the replay's start-up lines end with this ready */
            web_serving(desk.web);
        /* 4. The scenario's first commands. */
        for (size_t i = 0; i < args.follow.count; i++)
            command(&desk, TICKER, (part_t[]){{"FOLLOW", 6}, {args.follow.name[i], strlen(args.follow.name[i])}}, 2);
        if (args.trade)
            start_trade(&desk, args.trade);
        outcome = run(&desk, &deadline);
    }

    char reason[256];
    progress(&desk, reason);
    /* A signal that came before the scenario was done: false. A desk with a page stops only on a
       signal: true once its scenario has been done, whatever the page did since. */
    bool complete = outcome == DONE || (outcome == SIGNALED && desk.web && desk.finished);
    int stuck = shut_down(&desk);
    if (desk.web) { /* linger 0: an open event stream has nothing worth waiting for */
        web_close(desk.web);
        desk.web = NULL; /* the last lines (an error, done) go to stdout only */
    }
    if (outcome == TIMED_OUT)
        emit_error("timeout", "not done after %d ms: %s", args.timeout, reason);
    if (outcome == FAILED)
        emit_error("agent-failed", "the %s agent stopped without being asked", AGENT_NAMES[desk.failed]);
    if (stuck >= 0) {
        /* 4. is skipped: terminating the context would wait for the stuck agent's sockets forever.
           _exit: no exit handler runs while that thread may still use them. */
        emit_error("agent-stuck", "the %s agent did not stop within %d ms of STOP", AGENT_NAMES[stuck], STOP_WAIT);
        _exit(1);
    }
    /* 4. Returns once every socket of every thread is closed and their lingers have run out (the
       control PUB's `finished`, the collector XPUB's last write). */
    zmq_ctx_term(context);
    names_free(&desk.received);
    free(args.subtrees.tree);
    if (outcome == TIMED_OUT || outcome == FAILED)
        return 1;
    /* 5. */
    json_t *acknowledged = json_array();
    for (int i = 0; i < AGENTS; i++)
        if (desk.acknowledged[i])
            json_array_append_new(acknowledged, json_string(AGENT_NAMES[i]));
    emit("done", "{s:b, s:o}", "complete", complete, "agents", acknowledged);
    return 0;
}
