/* web: the desk's page, HTTP/1.1 over a ZMQ_STREAM socket (examples/desk/PROTOCOL.md).

   STREAM is the socket for a peer that does not speak ZeroMQ: raw TCP, no ZMTP, no framing. Every
   message is [identity, bytes]: the identity is the one the socket gave the TCP connection, the
   bytes whatever one read returned (a request may come in pieces, or several in one). libzmq says
   [identity, ""] when a connection opens and again when the peer closes it; NetMQ says neither,
   so a connection is learnt at its first message, whatever it holds. Sending [identity, bytes]
   writes the bytes to that connection; [identity, ""] closes it. The desk never closes right
   after a response (NetMQ drops what is still queued at a close): the client closes, and the
   desk only at a deadline, long after. */
#include "web.h"
#include "contract.h"
#include "frames.h"
#include "monitor.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

enum {
    MAX_CONNECTIONS = 256, /* known at once; one more is closed unanswered */
    MAX_IDENTITY = 256,    /* bytes of a STREAM identity */
    MAX_HEAD = 8192,       /* the request line and the headers, the blank line included */
    MAX_BODY = 4096,
    REQUEST_TIME = 5000,   /* ms for a whole request, from a connection's first message */
    CLOSE_TIME = 1000,     /* ms for the client to close after a response */
    RECEIVE_BATCH = 100,   /* messages read in one call, so that the pipes get their turn */
    SEND_HWM = 1000,       /* messages queued per connection: the bound on a slow reader */
    REPLAY_LINES = 1000,   /* the last lines of the replay */
    REPLAY_KEYS = 256,     /* the latest line per key */
    STARTUP_LINES = 1000,  /* a bound all the same, should an agent be flooded during start-up */
};

/* --- 1. the page, built in ------------------------------------------------------------------- */

/* examples/desk/page.html, byte for byte: embedded.S includes it in the program (.incbin), and the
   Makefile rebuilds it when the file changes. */
extern const char page_html[], page_html_end[];

/* --- 2. the socket and what it knows --------------------------------------------------------- */

typedef enum {
    READING,   /* the request is not whole yet */
    ANSWERED,  /* waits for the client to close, until its deadline */
    STREAMING, /* the event stream */
    CLOSING,   /* to close as soon as its queue takes the close */
} state_t;

typedef struct {
    unsigned char id[MAX_IDENTITY];
    size_t id_size;
    state_t state;
    int64_t deadline;
    char *request; /* what came so far, MAX_HEAD + MAX_BODY bytes at most; NULL before a byte came */
    size_t size;
    size_t head;   /* the head's size once it is whole, else 0 */
    size_t length; /* the body's Content-Length */
    int route;     /* its ROUTES index, once the head is whole */
} connection_t;

typedef struct {
    char *data;
    size_t size;
} line_t;

typedef struct {
    char *key;
    line_t line;
} keyed_t;

struct web {
    void *socket;
    char endpoint[ENDPOINT_SIZE];
    connection_t connection[MAX_CONNECTIONS];
    size_t connections;
    /* the replay: the start-up lines, a ring of the last other lines, the latest line per key */
    bool serving;
    line_t startup[STARTUP_LINES];
    size_t startups;
    line_t ring[REPLAY_LINES];
    size_t first, lines;
    keyed_t keyed[REPLAY_KEYS];
    size_t keys;
};

web_t *web_open(void *context, const char *endpoint, bool monitor)
{
    web_t *web = calloc(1, sizeof *web);
    if (!web)
        fail("memory", "out of memory");
    web->socket = zmq_socket(context, ZMQ_STREAM);
    /* Linger 0: at close, an open event stream has nothing worth waiting for. The send high-water
       mark, in messages per connection, set on purpose: it bounds what one slow reader makes the
       desk hold (1000 is also libzmq's default). Every send is non-blocking (ZMQ_DONTWAIT), so at
       the mark a send fails with EAGAIN instead of freezing the desk. */
    int linger = 0, hwm = SEND_HWM;
    zmq_setsockopt(web->socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(web->socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    monitor_socket(context, web->socket, "http", monitor); /* a browser's connections, accepted and closed */
    if (zmq_bind(web->socket, endpoint) < 0) {
        int error = errno;
        zmq_close(web->socket);
        free(web);
        errno = error;
        return NULL;
    }
    last_endpoint(web->socket, web->endpoint); /* the port a wildcard `*` got */
    return web;
}

const char *web_endpoint(const web_t *web)
{
    return web->endpoint;
}

void *web_socket(const web_t *web)
{
    return web->socket;
}

static connection_t *find(web_t *web, const void *id, size_t size)
{
    for (size_t i = 0; i < web->connections; i++)
        if (web->connection[i].id_size == size && !memcmp(web->connection[i].id, id, size))
            return &web->connection[i];
    return NULL;
}

static void forget(web_t *web, connection_t *connection)
{
    free(connection->request);
    *connection = web->connection[--web->connections]; /* the last takes its place */
}

typedef enum { SENT, FULL, GONE } sent_t;

/* [identity, bytes], never waiting: a blocking send to a reader that does not read would freeze
   the whole desk. EAGAIN: the connection's queue is full (its high-water mark), it refuses the
   identity frame and nothing is sent. EHOSTUNREACH: the connection has gone. Once the identity
   frame is in, the bytes are too (the mark counts whole messages). */
static sent_t send_to(web_t *web, const void *id, size_t id_size, const void *bytes, size_t size)
{
    if (zmq_send(web->socket, id, id_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (errno == EHOSTUNREACH)
            return GONE;
        if (errno != EAGAIN && errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
        return FULL;
    }
    if (zmq_send(web->socket, bytes, size, ZMQ_DONTWAIT) < 0)
        fail("send", "zmq_send: %s", zmq_strerror(errno));
    return SENT;
}

/* [identity, ""] closes the connection, once its queue has room for it; until then it stays
   known, marked closing, and web_expire tries again. A connection already gone is forgotten. */
static void close_connection(web_t *web, connection_t *connection)
{
    if (send_to(web, connection->id, connection->id_size, "", 0) == FULL)
        connection->state = CLOSING;
    else
        forget(web, connection);
}

/* --- 3. requests and responses --------------------------------------------------------------- */

static const struct {
    const char *target, *method;
} ROUTES[] = {
    {"/", "GET"}, {"/events", "GET"}, {"/follow", "POST"}, {"/forget", "POST"}, {"/chat", "POST"}, {"/value", "POST"},
};
enum { PAGE, EVENTS, ROUTE_COUNT = sizeof ROUTES / sizeof ROUTES[0] };

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    default: return "HTTP Version Not Supported"; /* 505 */
    }
}

/* A response's head: the status line and the headers. Every response closes the connection (one
   request per connection); the event stream and 204 have no Content-Length. */
static size_t response_head(char head[256], int status, const char *type, size_t length, const char *allow)
{
    size_t used = (size_t)snprintf(head, 256, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    if (type)
        used += (size_t)snprintf(head + used, 256 - used, "Content-Type: %s\r\n", type);
    if (status != 204 && strcmp(type ? type : "", "text/event-stream"))
        used += (size_t)snprintf(head + used, 256 - used, "Content-Length: %zu\r\n", length);
    used += (size_t)snprintf(head + used, 256 - used, "Cache-Control: no-store\r\nConnection: close\r\n");
    if (allow)
        used += (size_t)snprintf(head + used, 256 - used, "Allow: %s\r\n", allow);
    return used + (size_t)snprintf(head + used, 256 - used, "\r\n");
}

/* A response, as one message: the head, then the body. The client then has CLOSE_TIME ms to
   close; the desk closes it after that. */
static void respond(web_t *web, connection_t *connection, int64_t now, int status, const char *type,
                    const char *allow, const char *body, size_t size)
{
    char head[256];
    size_t head_size = response_head(head, status, type, size, allow);
    char *message = malloc(head_size + size);
    if (!message)
        fail("memory", "out of memory");
    memcpy(message, head, head_size);
    memcpy(message + head_size, body, size);
    sent_t sent = send_to(web, connection->id, connection->id_size, message, head_size + size);
    free(message);
    free(connection->request);
    connection->request = NULL;
    /* Not forgotten here, whatever happened: the caller still holds it. One that refused the
       response, or has gone, is closed (or forgotten) by web_expire. */
    connection->state = sent == SENT ? ANSWERED : CLOSING;
    connection->deadline = now + CLOSE_TIME;
}

/* An error: one line of text saying why. */
static void refuse(web_t *web, connection_t *connection, int64_t now, int status, const char *allow, const char *why)
{
    char body[REASON_SIZE + 1];
    int size = snprintf(body, sizeof body, "%s\n", why);
    respond(web, connection, now, status, "text/plain; charset=utf-8", allow, body, (size_t)size);
}

/* Whether the bytes are exactly `text`. */
static bool is(line_t bytes, const char *text)
{
    return bytes.size == strlen(text) && !memcmp(bytes.data, text, bytes.size);
}

/* The parts of a request line, or why it is not one: METHOD SP TARGET SP VERSION, each part
   non-empty, printable ASCII. 0 when it is fine, else the status to answer. */
static int read_request_line(const char *line, size_t size, line_t part[3], char why[REASON_SIZE])
{
    size_t parts = 0, start = 0;
    for (size_t i = 0; i <= size; i++) {
        unsigned char byte = i < size ? (unsigned char)line[i] : ' ';
        if (byte != ' ' && (byte < 0x21 || byte > 0x7e)) {
            snprintf(why, REASON_SIZE, "the request line holds a byte that is not printable ASCII");
            return 400;
        }
        if (byte != ' ')
            continue;
        if (i == start || parts == 3) {
            snprintf(why, REASON_SIZE, "the request line is not METHOD TARGET VERSION, single spaces apart");
            return 400;
        }
        part[parts++] = (line_t){(char *)line + start, i - start};
        start = i + 1;
    }
    if (parts != 3) {
        snprintf(why, REASON_SIZE, "the request line is not METHOD TARGET VERSION, single spaces apart");
        return 400;
    }
    if (is(part[2], "HTTP/1.1") || is(part[2], "HTTP/1.0"))
        return 0;
    const char *version = part[2].data; /* another HTTP/d.d is a version we do not speak */
    bool http = part[2].size == 8 && !memcmp(version, "HTTP/", 5) && version[5] >= '0' && version[5] <= '9' &&
                version[6] == '.' && version[7] >= '0' && version[7] <= '9';
    snprintf(why, REASON_SIZE, http ? "only HTTP/1.1 and HTTP/1.0 are spoken here" : "no HTTP version");
    return http ? 505 : 400;
}

/* The bytes from `from` to `to`, without the spaces and tabs around them. */
static line_t trimmed(const char *from, const char *to)
{
    while (from < to && (*from == ' ' || *from == '\t'))
        from++;
    while (to > from && (to[-1] == ' ' || to[-1] == '\t'))
        to--;
    return (line_t){(char *)from, (size_t)(to - from)};
}

/* Header names are case-insensitive. */
static bool name_is(line_t name, const char *header)
{
    if (name.size != strlen(header))
        return false;
    for (size_t i = 0; i < name.size; i++)
        if (tolower((unsigned char)name.data[i]) != tolower((unsigned char)header[i]))
            return false;
    return true;
}

/* The headers (the lines after the request line, each "name: value", CRLF apart): only
   Content-Length and Transfer-Encoding are read. 0 when they are fine, else the status to answer:
   every line first (400), then Transfer-Encoding (501), then the body's size (413). `length` gets
   the body's size, or stays SIZE_MAX without a Content-Length. */
static int read_headers(const char *text, size_t size, size_t *length, char why[REASON_SIZE])
{
    line_t given = {NULL, 0}; /* the Content-Length, its leading zeros skipped */
    bool chunked = false;
    for (size_t start = 0; start < size;) {
        const char *line = text + start, *end = line;
        while (end < text + size && !(end[0] == '\r' && end + 1 < text + size && end[1] == '\n'))
            end++;
        start = (size_t)(end - text) + 2;
        const char *colon = memchr(line, ':', (size_t)(end - line));
        if (!colon) {
            snprintf(why, REASON_SIZE, "a header line without a colon");
            return 400;
        }
        line_t name = trimmed(line, colon), number = trimmed(colon + 1, end);
        if (name_is(name, "Transfer-Encoding")) {
            chunked = true;
        } else if (name_is(name, "Content-Length")) {
            size_t digits = 0;
            while (digits < number.size && number.data[digits] >= '0' && number.data[digits] <= '9')
                digits++;
            if (!number.size || digits < number.size) {
                snprintf(why, REASON_SIZE, "Content-Length is not decimal digits");
                return 400;
            }
            while (number.size > 1 && number.data[0] == '0') { /* 007 is 7 */
                number.data++;
                number.size--;
            }
            if (given.data && (given.size != number.size || memcmp(given.data, number.data, number.size))) {
                snprintf(why, REASON_SIZE, "two different Content-Length values");
                return 400;
            }
            given = number;
        }
    }
    if (chunked) {
        snprintf(why, REASON_SIZE, "Transfer-Encoding is not supported: send a Content-Length");
        return 501;
    }
    size_t number = 0; /* no leading zero left: more than 4 digits is more than 4096 */
    for (size_t i = 0; i < given.size && i < 5; i++)
        number = 10 * number + (size_t)(given.data[i] - '0');
    if (number > MAX_BODY) { /* at once, without reading the body */
        snprintf(why, REASON_SIZE, "a body is at most %d bytes", MAX_BODY);
        return 413;
    }
    *length = given.data ? number : SIZE_MAX;
    return 0;
}

/* The replay (below) and its head, as one message. */
static void start_stream(web_t *web, connection_t *connection);

/* A whole head (`size` bytes, up to and including the blank line): a response now, or for a
   POST, what its body needs. The first check that fails answers, in this order: the request line,
   the headers, the target, the method, a POST's Content-Length. */
static void on_head(web_t *web, connection_t *connection, int64_t now, size_t size)
{
    char why[REASON_SIZE];
    line_t part[3];
    const char *text = connection->request;
    size_t line_end = 0, length = SIZE_MAX;
    while (memcmp(text + line_end, "\r\n", 2)) /* the head ends in CRLF CRLF: there is one */
        line_end++;
    int status = read_request_line(text, line_end, part, why);
    if (!status && line_end + 4 < size)
        status = read_headers(text + line_end + 2, size - line_end - 6, &length, why);
    if (status) {
        refuse(web, connection, now, status, NULL, why);
        return;
    }
    int route = 0; /* the target, matched exactly */
    while (route < ROUTE_COUNT && !is(part[1], ROUTES[route].target))
        route++;
    if (route == ROUTE_COUNT) {
        snprintf(why, REASON_SIZE, "no such page: %.*s", part[1].size > 64 ? 64 : (int)part[1].size, part[1].data);
        refuse(web, connection, now, 404, NULL, why);
    } else if (!is(part[0], ROUTES[route].method)) {
        snprintf(why, REASON_SIZE, "%s takes %s only", ROUTES[route].target, ROUTES[route].method);
        refuse(web, connection, now, 405, ROUTES[route].method, why);
    } else if (!strcmp(ROUTES[route].method, "POST") && length == SIZE_MAX) {
        refuse(web, connection, now, 411, NULL, "a POST needs a Content-Length");
    } else { /* the body comes next, if any */
        connection->head = size;
        connection->length = length == SIZE_MAX ? 0 : length;
        connection->route = route;
    }
}

/* A request whose body is whole: the page, the event stream, or a command, whose answer the
   desk's handler gives. */
static void on_body(web_t *web, connection_t *connection, int64_t now, web_command_handler *on_command, void *desk)
{
    char why[REASON_SIZE] = "";
    const char *body = connection->request + connection->head;
    int status = 400;
    if (connection->route == PAGE) {
        size_t page_size = (size_t)(page_html_end - page_html);
        respond(web, connection, now, 200, "text/html; charset=utf-8", NULL, page_html, page_size);
        return;
    }
    if (connection->route == EVENTS) {
        start_stream(web, connection);
        return;
    }
    if (!utf8_valid(body, connection->length, NULL))
        snprintf(why, REASON_SIZE, "the body is not UTF-8 text");
    else
        status = on_command(desk, ROUTES[connection->route].target, body, connection->length, why);
    if (status == 204)
        respond(web, connection, now, 204, NULL, NULL, "", 0);
    else
        refuse(web, connection, now, status, NULL, why);
}

/* Bytes of a request: kept up to the limits (whatever comes after the request is ignored), then
   answered as soon as the head, and the body its Content-Length says, are whole. */
static void on_bytes(web_t *web, connection_t *connection, int64_t now, const char *data, size_t size,
                     web_command_handler *on_command, void *desk)
{
    if (!connection->request && !(connection->request = malloc(MAX_HEAD + MAX_BODY)))
        fail("memory", "out of memory");
    size_t room = MAX_HEAD + MAX_BODY - connection->size, searched = connection->size;
    size = size < room ? size : room;
    memcpy(connection->request + connection->size, data, size);
    connection->size += size;
    if (!connection->head) { /* look for CRLF CRLF among the new bytes, and the 3 before them */
        size_t end = connection->size < MAX_HEAD ? connection->size : MAX_HEAD, at = searched > 3 ? searched - 3 : 0;
        while (at + 4 <= end && memcmp(connection->request + at, "\r\n\r\n", 4))
            at++;
        if (at + 4 <= end)
            on_head(web, connection, now, at + 4);
        else if (connection->size >= MAX_HEAD)
            refuse(web, connection, now, 431, NULL, "the request line and headers are over 8192 bytes");
    }
    if (connection->state == READING && connection->head && connection->size >= connection->head + connection->length)
        on_body(web, connection, now, on_command, desk);
}

/* At the limit of connections known, a new one first closes the one answered longest ago: it
   only waits for its client to close (and NetMQ never says when one has). */
static void make_room(web_t *web)
{
    connection_t *oldest = NULL;
    for (size_t i = 0; i < web->connections; i++) {
        connection_t *connection = &web->connection[i];
        if (connection->state == ANSWERED && (!oldest || connection->deadline < oldest->deadline))
            oldest = connection;
    }
    if (oldest)
        close_connection(web, oldest);
}

/* One message: [identity, bytes]. */
static void on_message(web_t *web, int64_t now, const frames_t *message, web_command_handler *on_command, void *desk)
{
    const char *id = frame_data(message, 0), *data = frame_data(message, 1);
    size_t id_size = frame_size(message, 0), size = frame_size(message, 1);
    connection_t *connection = find(web, id, id_size);
    if (!connection && web->connections == MAX_CONNECTIONS)
        make_room(web);
    if (!connection && web->connections == MAX_CONNECTIONS) { /* one too many: closed, unanswered */
        send_to(web, id, id_size, "", 0);
        return;
    }
    if (!connection) { /* a new one: libzmq's [identity, ""], or NetMQ's first bytes */
        connection = &web->connection[web->connections++];
        *connection = (connection_t){.id_size = id_size, .state = READING, .deadline = now + REQUEST_TIME};
        memcpy(connection->id, id, id_size);
        if (!size)
            return;
    } else if (!size) { /* libzmq: the peer has closed */
        forget(web, connection);
        return;
    }
    if (connection->state == READING)
        on_bytes(web, connection, now, data, size, on_command, desk);
}

void web_receive(web_t *web, int64_t now, web_command_handler *on_command, void *desk)
{
    frames_t message;
    /* The one socket of the desk's loop that is drained on purpose, rather than read one message
       a turn: a browser's request comes as chunks of a TCP stream, a message each, and a page
       waits for its whole request. A poll's POLLIN is a hint: each receive is non-blocking, and
       at most RECEIVE_BATCH of them, so that a flood of bytes does not starve the pipes. */
    for (int i = 0; i < RECEIVE_BATCH && recv_at_most(web->socket, &message, 2); i++) {
        if (message.count == 2 && frame_size(&message, 0) >= 1 && frame_size(&message, 0) <= MAX_IDENTITY)
            on_message(web, now, &message, on_command, desk);
        frames_close(&message);
    }
}

/* --- 4. the event stream --------------------------------------------------------------------- */

static const char DATA[] = "data: ", END[] = "\n\n"; /* a server-sent event: data: LINE, blank line */
enum { FRAMING = sizeof DATA - 1 + sizeof END - 1 };

static char *put_event(char *at, const line_t *line)
{
    memcpy(at, DATA, sizeof DATA - 1);
    memcpy(at + sizeof DATA - 1, line->data, line->size);
    memcpy(at + sizeof DATA - 1 + line->size, END, sizeof END - 1);
    return at + FRAMING + line->size;
}

/* Every line of the replay, in order, to `visit`: the start-up lines, the last others, the latest
   per key. */
static void replay(const web_t *web, void (*visit)(const line_t *line, void *state), void *state)
{
    for (size_t i = 0; i < web->startups; i++)
        visit(&web->startup[i], state);
    for (size_t i = 0; i < web->lines; i++)
        visit(&web->ring[(web->first + i) % REPLAY_LINES], state);
    for (size_t i = 0; i < web->keys; i++)
        visit(&web->keyed[i].line, state);
}

static void count_bytes(const line_t *line, void *total)
{
    *(size_t *)total += FRAMING + line->size;
}

static void put_line(const line_t *line, void *at)
{
    *(char **)at = put_event(*(char **)at, line);
}

static void start_stream(web_t *web, connection_t *connection)
{
    char head[256];
    size_t head_size = response_head(head, 200, "text/event-stream", 0, NULL), size = head_size;
    replay(web, count_bytes, &size);
    char *message = malloc(size), *at = message + head_size;
    if (!message)
        fail("memory", "out of memory");
    memcpy(message, head, head_size);
    replay(web, put_line, &at);
    sent_t sent = send_to(web, connection->id, connection->id_size, message, size);
    free(message);
    free(connection->request);
    connection->request = NULL;
    /* No deadline: a stream lasts until the client or the desk ends it. */
    connection->state = sent == SENT ? STREAMING : CLOSING;
}

static line_t copy_line(const char *data, size_t size)
{
    line_t line = {malloc(size ? size : 1), size};
    if (!line.data)
        fail("memory", "out of memory");
    memcpy(line.data, data, size);
    return line;
}

/* The replay's copy of a line. */
static void keep(web_t *web, const char *data, size_t size, const char *key)
{
    if (!web->serving && web->startups < STARTUP_LINES) {
        web->startup[web->startups++] = copy_line(data, size);
        return;
    }
    if (key) {
        size_t i = 0;
        while (i < web->keys && strcmp(web->keyed[i].key, key))
            i++;
        if (i == REPLAY_KEYS) /* sent live, not replayed */
            return;
        if (i == web->keys) {
            if (!(web->keyed[i].key = strdup(key)))
                fail("memory", "out of memory");
            web->keys++;
        } else {
            free(web->keyed[i].line.data);
        }
        web->keyed[i].line = copy_line(data, size);
        return;
    }
    if (web->lines == REPLAY_LINES) { /* the oldest makes room */
        free(web->ring[web->first].data);
        web->first = (web->first + 1) % REPLAY_LINES;
        web->lines--;
    }
    web->ring[(web->first + web->lines++) % REPLAY_LINES] = copy_line(data, size);
}

void web_serving(web_t *web)
{
    web->serving = true;
}

void web_publish(web_t *web, const char *data, size_t size, const char *key)
{
    keep(web, data, size, key);
    line_t line = {(char *)data, size};
    char *event = malloc(FRAMING + size);
    if (!event)
        fail("memory", "out of memory");
    put_event(event, &line);
    /* To every stream, never waiting. A stream whose queue is full (a slow reader) loses this
       event and every later one, and is closed once its queue takes the close: no queue grows
       without bound, and nobody else waits for it. Backwards: forget() moves the last one. */
    for (size_t i = web->connections; i-- > 0;) {
        connection_t *connection = &web->connection[i];
        if (connection->state != STREAMING)
            continue;
        sent_t sent = send_to(web, connection->id, connection->id_size, event, FRAMING + size);
        if (sent == FULL)
            connection->state = CLOSING;
        else if (sent == GONE)
            forget(web, connection);
    }
    free(event);
}

/* --- 5. deadlines ------------------------------------------------------------------------------ */

void web_expire(web_t *web, int64_t now)
{
    for (size_t i = web->connections; i-- > 0;) { /* backwards: forget() moves the last one */
        connection_t *connection = &web->connection[i];
        bool late = (connection->state == READING || connection->state == ANSWERED) && now >= connection->deadline;
        if (late && connection->state == READING && connection->size)
            refuse(web, connection, now, 408, NULL, "the request took over 5000 ms");
        else if (late || connection->state == CLOSING)
            close_connection(web, connection);
    }
}

/* --- 6. the end ------------------------------------------------------------------------------ */

void web_close(web_t *web)
{
    zmq_close(web->socket); /* linger 0: what is still queued is dropped */
    for (size_t i = 0; i < web->connections; i++)
        free(web->connection[i].request);
    for (size_t i = 0; i < web->startups; i++)
        free(web->startup[i].data);
    for (size_t i = 0; i < web->lines; i++)
        free(web->ring[(web->first + i) % REPLAY_LINES].data);
    for (size_t i = 0; i < web->keys; i++) {
        free(web->keyed[i].key);
        free(web->keyed[i].line.data);
    }
    free(web);
}
