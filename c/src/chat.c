/* chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md). */
#include "chat.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "contract.h"
#include "frames.h"
#include "monitor.h"
#include "names.h"
#include "security.h"

enum {
    MAX_HANDLE = MAX_NAME,  /* bytes of UTF-8 */
    MAX_TEXT = CHAT_MAX_TEXT, /* bytes of UTF-8 */
};
/* [max size] ZMQ_MAXMSGSIZE, 8192 bytes on all four sockets, set before bind or connect: a frame
   above it never reaches us (libzmq drops it with the sender's connection), so no peer can make a
   role allocate without bound, nor grow a PUB's subscription trie. The largest legal frame is a
   text of MAX_TEXT bytes; twice that lets a text that is too long still reach the server's own
   `text-too-long` rule, with room for CURVE's per-frame overhead. */
static const int64_t MAX_MESSAGE = CHAT_MAX_MESSAGE;

/* --- server --------------------------------------------------------------------------------- */

typedef struct {
    const char *requests, *broadcasts;
    int timeout, heartbeat, expiry;
    bool monitor;
    security_t security;
} server_args;

typedef struct {
    void *requests, *broadcasts;
    void *zap; /* the ZAP handler; NULL when the mechanism needs none */
    void *requests_monitor, *broadcasts_monitor; /* handshake failures; NULL under null */
    names_t roster; /* value: when the handle was last heard from, in ms */
    int accepted, rejected;
} server_t;

/* The first broken rule of a request as its error code, with a `reason`; NULL when well formed. */
static const char *check_request(const frames_t *request, char *reason)
{
    size_t bad_at;
    if (request->count != 1 && request->count != 2)
        return problem(reason, "frame-count", "expected 1 or 2 frames, got %zu", request->count);
    if (frame_size(request, 0) == 0)
        return problem(reason, "empty-handle", "the handle frame is empty");
    if (frame_size(request, 0) > MAX_HANDLE)
        return problem(reason, "handle-too-long", "the handle has %zu bytes, at most %d",
                       frame_size(request, 0), MAX_HANDLE);
    if (request->count == 2 && frame_size(request, 1) == 0)
        return problem(reason, "empty-text", "the text frame is empty");
    if (request->count == 2 && frame_size(request, 1) > MAX_TEXT)
        return problem(reason, "text-too-long", "the text has %zu bytes, at most %d",
                       frame_size(request, 1), MAX_TEXT);
    for (size_t i = 0; i < request->count; i++)
        if (!utf8_valid(frame_data(request, i), frame_size(request, i), &bad_at))
            return problem(reason, "invalid-utf8", "frame %zu is not UTF-8 at byte %zu", i, bad_at);
    return NULL;
}

/* A well-formed post from a handle the server does not know: join first. After a restart, this
   is how a posting client learns that the server has forgotten it. */
static const char *check_post(const frames_t *request, const names_t *roster, char *reason)
{
    size_t at;
    if (request->count == 2 && !names_find(roster, frame_data(request, 0), frame_size(request, 0), &at))
        return problem(reason, "unknown-handle", "join with [handle] before posting");
    return NULL;
}

/* The live handles as one message, each handle a frame. A broadcast starts with an empty frame:
   no handle is empty, so subscribers know the server itself is speaking. */
static void send_roster(void *socket, const names_t *roster, bool broadcast)
{
    if (broadcast)
        send_frame(socket, "", 0, roster->count > 0);
    for (size_t i = 0; i < roster->count; i++)
        send_frame(socket, roster->entry[i].bytes, roster->entry[i].size, i + 1 < roster->count);
}

/* One request: checked, answered, and for a post broadcast (PROTOCOL.md, "Server behaviour"). */
static void serve(server_t *server)
{
    frames_t request;
    char reason[REASON_SIZE];
    /* [multipart] A multipart message arrives whole or not at all: once the poll saw it, every
       frame of it is here, and recv_if_ready takes them all. How many there are is the peer's
       choice, so check_request counts them before it reads one. */
    if (!recv_if_ready(server->requests, &request))
        return; /* REP dropped what it polled (a request without its envelope): nothing to answer */
    const char *code = check_request(&request, reason);
    if (!code)
        code = check_post(&request, &server->roster, reason);
    if (code) {
        server->rejected++;
        send_frame(server->requests, "", 0, true);
        send_frame(server->requests, code, strlen(code), false);
        emit_error(code, "%s", reason);
        frames_close(&request);
        return;
    }
    const char *handle = frame_data(&request, 0);
    size_t size = frame_size(&request, 0);
    bool joined;
    names_get(&server->roster, handle, size, &joined)->value = now_ms();
    if (request.count == 2) {
        const char *text = frame_data(&request, 1);
        size_t text_size = frame_size(&request, 1);
        send_frame(server->broadcasts, handle, size, true); /* [handle, text], exactly as posted */
        send_frame(server->broadcasts, text, text_size, false);
        emit("posted", "{s:s%, s:s%}", "handle", handle, size, "text", text, text_size);
    }
    server->accepted++;
    send_roster(server->requests, &server->roster, false);
    if (joined) {
        emit("joined", "{s:s%}", "handle", handle, size);
        send_roster(server->broadcasts, &server->roster, true);
    }
    frames_close(&request);
}

static void heartbeat(server_t *server, int64_t now, int expiry)
{
    names_t *roster = &server->roster;
    for (size_t i = 0; i < roster->count;) {
        if (now - roster->entry[i].value > expiry) {
            emit("expired", "{s:s%}", "handle", roster->entry[i].bytes, roster->entry[i].size);
            names_remove(roster, i);
        } else {
            i++;
        }
    }
    send_roster(server->broadcasts, roster, true);
}

/* A peer whose handshake failed: reported, and serving goes on. */
static void report_handshake(void *monitor, const char *socket)
{
    uint32_t value;
    const char *failure = handshake_failure(monitor, &value);
    if (failure)
        emit("handshake-failed", "{s:s, s:s, s:I}", "socket", socket, "failure", failure, "value",
             (json_int_t)value);
}

int chat_server(int argc, char **argv)
{
    server_args args = {
        .requests = "tcp://127.0.0.1:5555",
        .broadcasts = "tcp://127.0.0.1:5556",
        .timeout = 0,
        .heartbeat = 100,
        .expiry = 5000,
    };
    const flag_t flags[] = {
        TEXT_FLAG("requests", args.requests),
        TEXT_FLAG("broadcasts", args.broadcasts),
        NUMBER_FLAG("timeout", args.timeout, 0),
        MONITOR_FLAG(args.monitor),
        NUMBER_FLAG("heartbeat", args.heartbeat, 1),
        NUMBER_FLAG("expiry", args.expiry, 1),
        SECURITY_FLAGS(args.security),
        PARSED_FLAG("curve-clients", parse_curve_keys, args.security.curve_clients),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]) ||
        !security_complete(argv[0], &args.security, true))
        return 2;

    stop_on_signals();
    deadline_t deadline = deadline_start(args.timeout);
    void *context = zmq_ctx_new();
    server_t server = {0};
    bool secure = args.security.mechanism != SECURITY_NULL;
    /* The ZAP handler first: libzmq asks it about the handshakes of the sockets bound after it. */
    server.zap = zap_start(context, &args.security);
    /* [linger] 0 on both sockets: closing them drops what is still queued instead of waiting to
       send it. The server stops only when told to, and nothing queued then is worth the wait. */
    int linger = 0;
    /* [REP] answers each request exactly once, in the order they came: it receives one, then must
       send its reply before it can receive the next. The library keeps the envelope (the
       requester's routing id and the empty delimiter) and routes the reply by it. */
    server.requests = zmq_socket(context, ZMQ_REP);
    limit_socket(server.requests, linger, MAX_MESSAGE);
    /* [PUB] sends every broadcast to every subscriber whose filter matches frame 0; it never
       blocks, and it drops for a subscriber that is not connected yet (the slow joiner) or that is
       past its high-water mark. It receives the subscriptions, which MAX_MESSAGE bounds too. */
    /* [HWM] The high-water mark (libzmq's default, 1000 messages per subscriber) bounds each
       subscriber's queue; at it PUB drops that subscriber's broadcasts, where PUSH or DEALER
       would block (the mute state). K clients posting M texts stay far below it. */
    server.broadcasts = zmq_socket(context, ZMQ_PUB);
    limit_socket(server.broadcasts, linger, MAX_MESSAGE);
    /* Both are security servers with the same credentials, set before bind. Under plain or
       curve, a monitor of each reports the peers whose handshake fails. */
    secure_socket(server.requests, &args.security, true);
    secure_socket(server.broadcasts, &args.security, true);
    if (secure) {
        server.requests_monitor = monitor_handshakes(context, server.requests, "requests");
        server.broadcasts_monitor = monitor_handshakes(context, server.broadcasts, "broadcasts");
    } else { /* libzmq allows one monitor per socket: under plain or curve, the handshakes' has it */
        monitor_socket(context, server.requests, "requests", args.monitor);
        monitor_socket(context, server.broadcasts, "broadcasts", args.monitor);
    }
    char requests[ENDPOINT_SIZE], broadcasts[ENDPOINT_SIZE];
    bind_socket(server.requests, args.requests, requests);
    bind_socket(server.broadcasts, args.broadcasts, broadcasts);
    emit("ready", "{s:s, s:s, s:s}", "requests", requests, "broadcasts", broadcasts, "security",
         MECHANISMS[args.security.mechanism]);

    /* Everything the loop serves, in the order it serves it (examples/README.md, "One loop
       shape"): security first, the ZAP handler's questions (if it runs one) and the handshake
       monitors' events (under plain or curve), then the role's own socket, REP. PUB only sends. */
    zmq_pollitem_t items[4];
    int polled = 0;
    if (server.zap)
        items[polled++] = (zmq_pollitem_t){.socket = server.zap, .events = ZMQ_POLLIN};
    if (secure) {
        items[polled++] = (zmq_pollitem_t){.socket = server.requests_monitor, .events = ZMQ_POLLIN};
        items[polled++] = (zmq_pollitem_t){.socket = server.broadcasts_monitor, .events = ZMQ_POLLIN};
    }
    items[polled++] = (zmq_pollitem_t){.socket = server.requests, .events = ZMQ_POLLIN};

    int64_t next_beat = now_ms();
    while (!stop_requested()) {
        if (deadline_expired(&deadline))
            fail("timeout", "still serving after %d ms", args.timeout);
        int64_t wait = next_beat - now_ms(); /* the heartbeat is the one timer */
        /* [poll] One poll for every socket, with a timeout that ends at the next heartbeat (never
           past the deadline); then each ready socket gives one message, received without waiting:
           POLLIN is a hint (REP may drop what it cannot route), and a signal (EINTR) is a poll
           that found nothing, after which the loop checks the stop flag. */
        poll_all(items, polled, deadline_cap(&deadline, wait > 0 ? (long)wait : 0));
        if (poll_ready(items, polled, server.zap))
            zap_answer(server.zap, &args.security);
        if (poll_ready(items, polled, server.requests_monitor))
            report_handshake(server.requests_monitor, "requests");
        if (poll_ready(items, polled, server.broadcasts_monitor))
            report_handshake(server.broadcasts_monitor, "broadcasts");
        if (poll_ready(items, polled, server.requests))
            serve(&server);
        int64_t now = now_ms();
        if (now >= next_beat) {
            heartbeat(&server, now, args.expiry);
            next_beat = now + args.heartbeat;
        }
    }

    emit("done", "{s:i, s:i}", "requests", server.accepted, "rejected", server.rejected);
    names_free(&server.roster);
    for (int i = 0; i < polled; i++) /* the ZAP handler, the monitors and REP */
        zmq_close(items[i].socket);
    zmq_close(server.broadcasts);
    zmq_ctx_term(context);
    return 0;
}

/* --- client --------------------------------------------------------------------------------- */

static const int64_t NO_LIMIT = INT64_MAX;

/* Frames `first`... of a message as a JSON array of handles, or NULL if one is not a handle. */
static json_t *roster_of(const frames_t *message, size_t first)
{
    json_t *roster = json_array();
    for (size_t i = first; i < message->count; i++) {
        size_t size = frame_size(message, i);
        if (!is_name(frame_data(message, i), size)) {
            json_decref(roster);
            return NULL;
        }
        json_array_append_new(roster, json_stringn(frame_data(message, i), size));
    }
    return roster;
}

/* Whether `roster` (a JSON array of handles) holds `handle`. */
static bool holds(const json_t *roster, const json_t *handle)
{
    size_t i;
    json_t *each;
    json_array_foreach(roster, i, each)
        if (json_equal(each, handle))
            return true;
    return false;
}

/* Whether `roster` holds every handle of `handles`. */
static bool holds_all(const json_t *roster, const json_t *handles)
{
    size_t i;
    json_t *handle;
    json_array_foreach(handles, i, handle)
        if (!holds(roster, handle))
            return false;
    return true;
}

/* Takes `roster` over and reports it when it differs from the last one seen. */
static void update_roster(client_t *client, json_t *roster)
{
    if (json_equal(roster, client->roster)) {
        json_decref(roster);
        return;
    }
    json_decref(client->roster);
    client->roster = roster;
    emit("roster", "{s:O}", "handles", roster);
}

const char *client_on_reply(client_t *client, const frames_t *reply, char reason[REASON_SIZE])
{
    client->last_request = now_ms();
    if (frame_size(reply, 0) == 0) {
        if (reply->count != 2)
            return problem(reason, "malformed-reply", "an error reply has 2 frames, got %zu", reply->count);
        const char *code = frame_data(reply, 1);
        size_t size = frame_size(reply, 1);
        if (size > 32 || !utf8_valid(code, size, NULL)) /* a reason quotes at most 32 bytes of a peer */
            return problem(reason, "rejected", "the server rejected our request with a code that is not text");
        return problem(reason, "rejected", "the server rejected our request: %.*s", (int)size, code);
    }
    json_t *roster = roster_of(reply, 0);
    if (!roster)
        return problem(reason, "malformed-reply", "a roster frame is not a handle (1 to %d bytes of UTF-8)",
                       MAX_HANDLE);
    update_roster(client, roster);
    return NULL;
}

/* A new SUB socket, subscribed to everything and connected. Its options and credentials are the
   same every time, set before connect. With `handshakes` (at startup, under plain or curve) a
   watcher of its handshakes becomes client->monitor: it tells a refused handshake from a server
   that is merely slow (step 2); else the watcher is NULL, and `--monitor on` watches the socket. */
static void *open_broadcasts(client_t *client, bool handshakes)
{
    const client_args *args = &client->args;
    void *sub = zmq_socket(client->context, ZMQ_SUB);
    /* [linger] 0: closing the SUB (a rejoin, the exit) drops what it still holds, unread. */
    limit_socket(sub, 0, MAX_MESSAGE);
    /* [SUB] A prefix filter on frame 0, which the SUB sends to the publisher: it receives nothing
       it did not subscribe to. "" is a prefix of everything, so posts and rosters both pass. It
       subscribes before it connects: the subscription goes out with the connection. */
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    secure_socket(sub, &args->security, false);
    client->monitor = handshakes ? monitor_handshakes(client->context, sub, "broadcasts") : NULL;
    if (!client->monitor) /* libzmq allows one monitor per socket: the handshakes' has it, if any */
        monitor_socket(client->context, sub, "broadcasts", args->monitor);
    connect_socket(sub, args->broadcasts);
    return sub;
}

/* A new REQ socket, connected, with the same options as the first. */
static void *open_requests(client_t *client)
{
    const client_args *args = &client->args;
    /* [REQ] Strict lockstep: send, receive, send, receive... One request in flight at a time, and
       no second send before its reply. So when a reply is lost, the socket can never send again:
       Lazy Pirate throws it away and comes here for a new one. */
    void *req = zmq_socket(client->context, ZMQ_REQ);
    /* [linger] 0: closing it drops a request still queued for a dead server. */
    limit_socket(req, 0, MAX_MESSAGE);
    secure_socket(req, &args->security, false);
    monitor_socket(client->context, req, "requests", args->monitor);
    connect_socket(req, args->requests);
    return req;
}

/* [handle] or [handle, text]. */
static void send_request(client_t *client, const char *text)
{
    const char *me = client->args.name;
    send_frame(client->req, me, strlen(me), text != NULL);
    if (text)
        send_frame(client->req, text, strlen(text), false);
}

/* The reply, or false once --retry ms passed without one; `no-reply` at the deadline. */
static bool wait_for_reply(client_t *client, frames_t *reply)
{
    int64_t until = now_ms() + client->args.retry;
    for (int64_t wait; (wait = until - now_ms()) > 0;) {
        if (deadline_expired(&client->deadline))
            fail("no-reply", "no reply from the server within --timeout %d ms", client->args.timeout);
        /* REQ drops a reply it cannot match to our request inside the receive: the poll's POLLIN
           is a hint, and recv_if_ready sends us back to wait. */
        if (poll_in(client->req, deadline_cap(&client->deadline, (long)wait)) && recv_if_ready(client->req, reply))
            return true;
    }
    return false;
}

/* One round trip, Lazy Pirate style, [handle] or [handle, text]: returns the roster of the reply,
   or NULL when the server answered a post with `unknown-handle` (rejoin, then send it again). */
static json_t *request(client_t *client, const char *text)
{
    frames_t reply;
    send_request(client, text);
    while (!wait_for_reply(client, &reply)) {
        /* The reply is lost, perhaps with the server. Close the REQ (linger 0 drops what it still
           holds) and send the same request again on a new one. */
        emit("retried", "{s:s}", "text", text ? text : "");
        zmq_close(client->req);
        client->req = open_requests(client);
        send_request(client, text);
    }
    if (text && reply.count == 2 && frame_size(&reply, 0) == 0 && frame_is(&reply, 1, "unknown-handle")) {
        frames_close(&reply);
        client->last_request = now_ms();
        client->forgotten = true;
        return NULL;
    }
    char reason[REASON_SIZE];
    const char *code = client_on_reply(client, &reply, reason);
    frames_close(&reply);
    if (code)
        fail(code, "%s", reason);
    return client->roster;
}

static json_t *join(client_t *client)
{
    client->listed = false;
    return request(client, NULL);
}

/* A post's text: 1 to MAX_TEXT bytes of UTF-8. */
static bool is_text(const void *bytes, size_t size)
{
    return size >= 1 && size <= MAX_TEXT && utf8_valid(bytes, size, NULL);
}

broadcast_t client_on_broadcast(client_t *client, const frames_t *broadcast)
{
    const char *handle = frame_data(broadcast, 0);
    size_t size = frame_size(broadcast, 0);
    if (size == 0) { /* from the server itself: the roster */
        json_t *roster = roster_of(broadcast, 1);
        if (roster) {
            update_roster(client, roster);
            return ROSTER_BROADCAST;
        }
        emit_error("malformed-broadcast", "a roster frame is not a handle (1 to %d bytes of UTF-8)", MAX_HANDLE);
    } else if (broadcast->count != 2) {
        emit_error("malformed-broadcast", "a post has 2 frames, got %zu", broadcast->count);
    } else if (!is_name(handle, size)) {
        emit_error("malformed-broadcast", "a post's handle is not 1 to %d bytes of UTF-8", MAX_HANDLE);
    } else if (!is_text(frame_data(broadcast, 1), frame_size(broadcast, 1))) {
        emit_error("malformed-broadcast", "a post's text is not 1 to %d bytes of UTF-8", MAX_TEXT);
    } else {
        client->received_total++;
        emit("received", "{s:s%, s:s%}", "handle", handle, size,
             "text", frame_data(broadcast, 1), frame_size(broadcast, 1));
        return POST_BROADCAST;
    }
    return MALFORMED_BROADCAST;
}

/* The number i of a text `<handle> #<i>: ...` (1 to 9 ASCII digits), or -1. */
static long post_number(const char *handle, size_t size, const char *text, size_t text_size)
{
    if (text_size < size + 2 || memcmp(text, handle, size) || memcmp(text + size, " #", 2))
        return -1;
    size_t first = size + 2, end = first;
    while (end < text_size && text[end] >= '0' && text[end] <= '9')
        end++;
    if (end == first || end - first > 9 || end == text_size || text[end] != ':')
        return -1;
    long number = 0;
    for (size_t i = first; i < end; i++)
        number = 10 * number + (text[i] - '0');
    return number;
}

/* The different texts received from `handle` (a JSON object, text -> null), or NULL if none. */
static json_t *texts_of(const client_t *client, const char *handle, size_t size)
{
    return json_object_getn(client->texts, handle, size);
}

/* Adds a post's text to its sender's different texts; a duplicate adds nothing. Only --count of
   them matter (done needs no more), so a sender cannot make us keep more. */
static void add_text(client_t *client, const char *handle, size_t size, const char *text, size_t text_size)
{
    json_t *texts = texts_of(client, handle, size);
    if (!texts) {
        texts = json_object();
        json_object_setn_new_nocheck(client->texts, handle, size, texts); /* checked: a handle */
    }
    if (json_object_size(texts) < (size_t)client->args.count)
        json_object_setn_new_nocheck(texts, text, text_size, json_null()); /* checked: UTF-8 */
}

/* A post received: its text is one of its sender's different texts; a jump in its sender's
   numbers is posts lost with a server that died. */
static void on_post(client_t *client, const frames_t *post)
{
    const char *handle = frame_data(post, 0);
    size_t size = frame_size(post, 0);
    add_text(client, handle, size, frame_data(post, 1), frame_size(post, 1));
    long number = post_number(handle, size, frame_data(post, 1), frame_size(post, 1));
    if (number < 0)
        return; /* not in the format: received, but without a number */
    name_entry_t *last = names_get(&client->received, handle, size, NULL);
    int64_t end = number < client->args.count + INT64_C(1) ? number : client->args.count + INT64_C(1);
    for (int64_t missing = last->value + 1; missing < end; missing++) /* bounded by --count */
        emit("missed", "{s:s%, s:I}", "handle", handle, size, "number", (json_int_t)missing);
    if (number > last->value)
        last->value = number;
}

/* A roster broadcast: after one with us, one without us means the server has forgotten us. */
static void on_roster(client_t *client)
{
    json_t *me = json_string(client->args.name);
    if (holds(client->roster, me)) {
        client->listed = true;
    } else if (client->listed) {
        client->forgotten = true;
        client->listed = false;
    }
    json_decref(me);
}

/* Handles the broadcast a poll saw; false if there was none after all. */
static bool receive_broadcast(client_t *client)
{
    frames_t broadcast;
    if (!recv_if_ready(client->sub, &broadcast))
        return false;
    broadcast_t kind = client_on_broadcast(client, &broadcast);
    if (kind == ROSTER_BROADCAST)
        on_roster(client);
    else if (kind == POST_BROADCAST)
        on_post(client, &broadcast);
    frames_close(&broadcast);
    return true;
}

/* [slow joiner] A subscription reaches the server some time after connect returns, and PUB
   drops what it publishes before then: until a first broadcast arrives on client->sub, posts
   could be lost for us. The server broadcasts a roster at least every heartbeat, so the first
   broadcast of any kind proves the subscription live; this handles it, and returns. Meanwhile,
   with a handshake watcher (client->monitor), the first handshake failure is fatal: libzmq would
   reconnect and try again, but wrong keys or a wrong password will not get better, and a refused
   SUB means a refused REQ. */
static void wait_for_first_broadcast(client_t *client)
{
    /* Security first (the handshake watcher), then the SUB. No timer: at most --keepalive ms a
       poll, no request goes out meanwhile. */
    zmq_pollitem_t items[2];
    int polled = 0;
    if (client->monitor)
        items[polled++] = (zmq_pollitem_t){.socket = client->monitor, .events = ZMQ_POLLIN};
    items[polled++] = (zmq_pollitem_t){.socket = client->sub, .events = ZMQ_POLLIN};
    for (;;) {
        if (deadline_expired(&client->deadline))
            fail("timeout", "no broadcast from the server");
        poll_all(items, polled, deadline_cap(&client->deadline, client->args.keepalive));
        uint32_t value;
        const char *failure =
            poll_ready(items, polled, client->monitor) ? handshake_failure(client->monitor, &value) : NULL;
        if (failure)
            fail("refused", "the server refused the %s handshake (handshake failure %s, value %" PRIu32 ")",
                 ZMTP_MECHANISMS[client->args.security.mechanism], failure, value);
        if (poll_ready(items, polled, client->sub) && receive_broadcast(client))
            return; /* the handshake succeeded: the monitor is not polled any more */
    }
}

static void rejoin(client_t *client);

/* Handles one broadcast, or sends a keep-alive when one is due, whichever comes first; or
   rejoins, if the server has forgotten us. Returns by `until` (now_ms's clock), or NO_LIMIT. */
static void serve_client(client_t *client, int64_t until)
{
    if (client->forgotten) {
        rejoin(client);
        return;
    }
    if (deadline_expired(&client->deadline))
        fail("timeout", "not done after %d ms", client->args.timeout);
    int64_t due = client->last_request + client->args.keepalive;
    int64_t wait = (until < due ? until : due) - now_ms();
    if (poll_in(client->sub, deadline_cap(&client->deadline, wait > 0 ? (long)wait : 0)))
        receive_broadcast(client);
    /* The timer, even after a broadcast (a stream of them must not starve it), unless that
       broadcast told us the server forgot us: then the next turn rejoins, and a keep-alive now
       would join us without the slow joiner's wait. */
    if (!client->forgotten && now_ms() >= due)
        request(client, NULL); /* keep-alive: silent handles expire from the roster */
}

/* The server forgot us: join again as a newcomer (PROTOCOL.md, "Restarts"). */
static void rejoin(client_t *client)
{
    /* What the old SUB already holds came from the old server, or the new one: take it, then
       throw the socket away. Which of its rosters are older than our join, nothing tells; a new
       SUB holds none. Closing it ends its `--monitor on` thread (MONITOR_STOPPED); the handshake
       watcher of the first SUB, if any, has nothing left to watch. The client's one drain, on
       purpose (PROTOCOL.md, "Restarts", step 1): non-blocking receives until one finds nothing. */
    while (receive_broadcast(client))
        continue;
    zmq_close(client->sub);
    if (client->monitor)
        zmq_close(client->monitor);
    client->sub = open_broadcasts(client, false);
    /* Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us, once
       our subscription has reached it. Until then, no request at all, not even a keep-alive. */
    wait_for_first_broadcast(client);
    client->forgotten = false;
    emit("rejoined", "{s:O}", "handles", join(client));
    /* Everyone listens before anyone talks, again: every peer rejoins the same way. */
    while (!holds_all(client->roster, client->peers))
        serve_client(client, NO_LIMIT);
}

/* Done with a peer: --count different texts from it (a person's post, through the desk's page,
   has no number), or its post numbered --count (posts before it may have been lost with a server
   that died). Done when that holds for every peer of step 4. */
static bool heard_from_all(client_t *client)
{
    size_t i;
    json_t *peer;
    json_array_foreach(client->peers, i, peer) {
        const char *handle = json_string_value(peer);
        size_t size = json_string_length(peer);
        json_t *texts = texts_of(client, handle, size);
        if (json_object_size(texts) < (size_t)client->args.count &&
            names_get(&client->received, handle, size, NULL)->value < client->args.count)
            return false;
    }
    return true;
}

int chat_client(int argc, char **argv)
{
    client_t client = {.args = {
        .requests = "tcp://127.0.0.1:5555",
        .broadcasts = "tcp://127.0.0.1:5556",
        .timeout = 30000,
        .name = NULL,
        .count = 5,
        .clients = 1,
        .keepalive = 1000,
        .retry = 2000,
        .pace = 0,
    }};
    client_args *args = &client.args;
    const flag_t flags[] = {
        TEXT_FLAG("requests", args->requests),
        TEXT_FLAG("broadcasts", args->broadcasts),
        NUMBER_FLAG("timeout", args->timeout, 0),
        MONITOR_FLAG(args->monitor),
        REQUIRED_FLAG("name", parse_name, args->name),
        NUMBER_FLAG("count", args->count, 0),
        NUMBER_FLAG("clients", args->clients, 1),
        NUMBER_FLAG("keepalive", args->keepalive, 1),
        NUMBER_FLAG("retry", args->retry, 1),
        NUMBER_FLAG("pace", args->pace, 0),
        SECURITY_FLAGS(args->security),
        PARSED_FLAG("curve-public", parse_curve_key, args->security.curve_public),
        PARSED_FLAG("curve-server", parse_curve_key, args->security.curve_server),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]) ||
        !security_complete(argv[0], &args->security, false))
        return 2;

    client.deadline = deadline_start(args->timeout);
    void *context = client.context = zmq_ctx_new();
    /* SUB first, so that its subscription starts travelling as early as possible. Both sockets
       carry the client's credentials; under plain or curve, SUB's handshakes are watched. */
    client.sub = open_broadcasts(&client, args->security.mechanism != SECURITY_NULL);
    client.req = open_requests(&client);
    client.roster = json_array();
    client.peers = json_array();
    client.texts = json_object();
    client.last_request = now_ms();

    wait_for_first_broadcast(&client); /* the slow joiner */
    join(&client);
    emit("ready", "{s:s, s:s}", "handle", args->name, "security", MECHANISMS[args->security.mechanism]);

    /* Everyone listens before anyone talks: wait for --clients handles, all subscribed. */
    while (json_array_size(client.roster) < (size_t)args->clients)
        serve_client(&client, NO_LIMIT);
    json_decref(client.peers);
    client.peers = json_incref(client.roster); /* a roster is replaced, never changed */
    log_line("%s: %zu peers, posting %d texts", args->name, json_array_size(client.peers), args->count);

    for (int number = 1; number <= args->count;) {
        char text[128];
        snprintf(text, sizeof text, CHAT_POST_FORMAT, args->name, number);
        json_t *roster = request(&client, text);
        if (!roster) { /* unknown-handle: rejoin, then the same post again */
            rejoin(&client);
            continue;
        }
        emit("sent", "{s:s, s:O}", "text", text, "roster", roster);
        number++;
        int64_t until = now_ms() + args->pace; /* --pace: broadcasts are served meanwhile, never a sleep */
        while (now_ms() < until)
            serve_client(&client, until);
    }

    while (!heard_from_all(&client))
        serve_client(&client, NO_LIMIT);
    emit("done", "{s:i, s:i}", "sent", args->count, "received", client.received_total);
    json_decref(client.peers);
    json_decref(client.roster);
    json_decref(client.texts);
    names_free(&client.received);
    zmq_close(client.sub);
    zmq_close(client.req);
    if (client.monitor)
        zmq_close(client.monitor);
    zmq_ctx_term(context);
    return 0;
}
