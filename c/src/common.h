/* The launch contract's shared half (examples/README.md): JSON Lines events on stdout, logs on
   stderr, the --timeout deadline, the stop flag, flag parsing, names and multipart frames; and
   what several examples compute alike: splitmix64, network byte order, symbols; and security:
   the mechanism flags, a ZAP handler and handshake monitors. */
#ifndef BTB_COMMON_H
#define BTB_COMMON_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <zmq.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* One event as one JSON line, flushed at once. `fields` is a jansson pack format for the
   object of the event's fields, e.g. emit("joined", "{s:s}", "handle", name). A real prints
   with the fewest digits that read back as the same double, as Python prints it (978.52). */
void emit(const char *event, const char *fields, ...);
/* Where emit() sends the events of the calling thread: stdout, unless the thread installs a
   reporter (the desk's agent threads, which hand their events to the main thread instead). The
   reporter gets the event's name and its whole object ("event" included), which it may change
   but does not own. Per thread: each thread has its own, and none is shared. */
typedef void event_reporter(const char *event, json_t *line, void *state);
void report_events_to(event_reporter *reporter, void *state);
/* One event's line (`text`, `size` bytes, without the newline) on stdout, as emit() writes it:
   whole and flushed, under a lock that every thread writing stdout shares; a `socket-event`
   after `done` is dropped. */
void write_event(const char *event, const char *text, size_t size);
/* An event object as emit() writes it, without the newline; the caller frees it. */
char *event_text(const json_t *line);
/* An `error` event; the role goes on. */
void emit_error(const char *code, const char *reason, ...) PRINTF_LIKE(2, 3);
/* A fatal error: an `error` event, then exit 1. */
_Noreturn void fail(const char *code, const char *reason, ...) PRINTF_LIKE(2, 3);
void log_line(const char *message, ...) PRINTF_LIKE(1, 2);
/* What a check found wrong with a peer's message: writes the `reason` and returns the `code`,
   for an emit_error(code, "%s", reason) by the caller. */
enum { REASON_SIZE = 128 };
const char *problem(char reason[REASON_SIZE], const char *code, const char *format, ...) PRINTF_LIKE(3, 4);
/* At most MAX_QUOTE bytes of what a peer sent, for a reason: in quotes, printable ASCII as is and
   any other byte as \xNN, so that the reason is UTF-8 whatever the peer sent. */
enum { MAX_QUOTE = 32, QUOTE_SIZE = 4 * MAX_QUOTE + 3 };
const char *quote(const void *data, size_t size, char text[QUOTE_SIZE]);

/* Monotonic milliseconds, and the role's --timeout (0: no limit). */
int64_t now_ms(void);
int64_t now_us(void); /* microseconds, for intervals finer than a millisecond */
int64_t now_ns(void); /* nanoseconds, for the benchmarks' timings */
typedef struct {
    int64_t end; /* 0: no limit */
} deadline_t;
deadline_t deadline_start(int timeout_ms);
long deadline_remaining(const deadline_t *d); /* -1 (wait forever, as zmq_poll has it) if none */
bool deadline_expired(const deadline_t *d);
long deadline_cap(const deadline_t *d, long ms); /* a poll timeout that ends by the deadline */

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF, no truncated sequence.
   `bad_at` (may be NULL) gets the offset of the first invalid byte. */
bool utf8_valid(const void *bytes, size_t size, size_t *bad_at);

/* SIGTERM and SIGINT only raise a flag; the role looks at it after every poll. */
void stop_on_signals(void);
bool stop_requested(void);
/* Blocks SIGTERM and SIGINT in the calling thread, and in every thread it starts afterwards (they
   inherit the mask, libzmq's I/O threads too); returns the set, to wait for or unblock later. */
sigset_t block_stop_signals(void);

/* Long options, each followed by its value: a string, an integer no smaller than `minimum`, or
   a value of another type that a parser reads (like argparse's `type=`): `parse` stores it in
   `value` and returns NULL, or returns why the text is not one. A required flag must be given.
   On a bad command line: a message on stderr and false (the role exits 2). */
typedef const char *flag_parser(const char *text, void *value);
typedef struct {
    const char *name;
    const char **text; /* set for a string flag */
    int *number;       /* set for an integer flag */
    int minimum;
    flag_parser *parse; /* set for a parsed flag */
    void *value;
    bool required;
} flag_t;
#define TEXT_FLAG(flag, variable) {.name = flag, .text = &(variable)}
#define NUMBER_FLAG(flag, variable, least) {.name = flag, .number = &(variable), .minimum = least}
#define PARSED_FLAG(flag, parser, variable) {.name = flag, .parse = parser, .value = &(variable)}
#define REQUIRED_FLAG(flag, parser, variable) \
    {.name = flag, .parse = parser, .value = &(variable), .required = true}
bool parse_flags(int argc, char **argv, const flag_t *flags, size_t count);
/* Parsers of 64-bit integers, in base 10: unsigned (into a uint64_t), signed (an int64_t). */
flag_parser parse_u64, parse_i64;

/* --- integers: a generator anyone can recompute, and network order ------------------------ */

/* Every integer of a generator is a uint64_t: C's unsigned arithmetic wraps modulo 2^64, as the
   protocols say (ticker prices, valuation orders). */
#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)
uint64_t splitmix64(uint64_t x);
/* Big-endian (network order): the most significant byte first, whatever the machine's order. */
void put_be64(unsigned char bytes[8], uint64_t value);
uint64_t get_be64(const void *data);
void put_be32(unsigned char bytes[4], uint32_t value);
uint32_t get_be32(const void *data);
/* Lowercase hex of the first `size` bytes (at most 16); `text` has room for 33 characters. */
enum { HEX_SIZE = 2 * 16 + 1 };
const char *hex(const void *data, size_t size, char text[HEX_SIZE]);
/* A ticker symbol, a valuation order's symbol: 1 to 8 letters A-Z. */
enum { MAX_SYMBOL = 8 };
bool is_symbol(const char *text, size_t size);

/* --- names: chat handles, ticker subscribers ---------------------------------------------- */

enum { MAX_NAME = 32 }; /* bytes of UTF-8 */
bool is_name(const void *bytes, size_t size);
flag_parser parse_name; /* into a const char * */

/* A set of names sorted by their UTF-8 bytes, each with a number its owner uses: for the chat
   server the time it last heard from the handle, for the chat client the posts received. */
typedef struct {
    size_t size;
    char bytes[MAX_NAME];
    int64_t value;
} name_entry_t;
typedef struct {
    name_entry_t *entry;
    size_t count, room;
} names_t;
/* The entry of `name` (1 to MAX_NAME bytes), added in order with value 0 if it is new. */
name_entry_t *names_get(names_t *names, const char *name, size_t size, bool *added);
/* Whether `name` is in the set, and if so at which index (for names_remove). */
bool names_find(const names_t *names, const char *name, size_t size, size_t *at);
void names_remove(names_t *names, size_t i);
void names_free(names_t *names);

/* One multipart message, every frame of it received. */
typedef struct {
    zmq_msg_t **frame; /* each frame allocated once: libzmq forbids moving a zmq_msg_t */
    size_t count;
} frames_t;
/* The message a poll said was waiting (ZMQ_POLLIN), or false if there is none after all. A poll's
   POLLIN is a hint, not a promise: REP silently drops a request it cannot route (no empty
   delimiter frame) inside the receive, and REQ a reply, and a blocking receive would then wait
   for the next one: no heartbeat, no deadline, no stop. So the first frame is received with
   ZMQ_DONTWAIT; EAGAIN (or a signal, EINTR) means "nothing", and the caller goes round its loop. */
bool recv_if_ready(void *socket, frames_t *message);
/* The same, keeping at most `keep` frames (1 or more): the rest of the message is received and
   dropped, so that a message of a million empty frames costs nothing. A message->count of `keep`
   may therefore stand for more. */
bool recv_at_most(void *socket, frames_t *message, size_t keep);
/* The same for one frame, whatever its ZMQ_RCVMORE says; `frame` is initialised by the caller. */
bool frame_if_ready(void *socket, zmq_msg_t *frame);
void frames_close(frames_t *message);
static inline const char *frame_data(const frames_t *m, size_t i) { return zmq_msg_data(m->frame[i]); }
static inline size_t frame_size(const frames_t *m, size_t i) { return zmq_msg_size(m->frame[i]); }
/* Whether the message has a frame i, and it is exactly `text`. */
bool frame_is(const frames_t *message, size_t i, const char *text);
/* One frame; `more` (ZMQ_SNDMORE) says another frame of the same message follows. */
void send_frame(void *socket, const void *data, size_t size, bool more);
/* What every socket of a role gets before it binds or connects: its linger (what happens at close
   to messages still queued), and ZMQ_MAXMSGSIZE, the largest frame a peer may send it. libzmq
   checks each frame's size as it decodes it and drops a bigger one together with the sender's
   connection, before allocating it; subscriptions are frames too. Send-only sockets included: the
   library still decodes what a peer sends them. (Inproc sockets need no limit: nothing decodes there.) */
void limit_socket(void *socket, int linger, int64_t max_message);
/* The endpoint a socket actually bound, with the port the library chose for a wildcard `*`. */
enum { ENDPOINT_SIZE = 256 };
void last_endpoint(void *socket, char endpoint[ENDPOINT_SIZE]);
/* Waits up to timeout_ms (-1: no limit) for a message on `socket`; false if none came. */
bool poll_in(void *socket, long timeout_ms);
/* The same for several sockets at once: how many have a message, their `revents` say which
   (all 0 after a timeout or a signal). */
int poll_all(zmq_pollitem_t *items, int count, long timeout_ms);
/* Sends one multipart message on a socket that can block, like PUSH while no peer is connected
   or every peer's queue is full (the high-water mark): it waits for room with a poll (ZMQ_POLLOUT),
   never past the deadline, else fails with `timeout`, naming `what`. */
typedef struct {
    const void *data;
    size_t size;
} part_t;
/* Sends the message if there is room for it now (ZMQ_DONTWAIT), else sends nothing and returns
   false: for a loop that polls for ZMQ_POLLOUT among its other sockets instead of waiting. */
bool send_if_room(void *socket, const part_t *parts, size_t count);
void send_when_room(void *socket, const part_t *parts, size_t count, const deadline_t *deadline,
                    const char *what);

/* --- security: mechanisms, keys and passwords (examples/README.md, "Security") -------------- */

typedef enum { SECURITY_NULL, SECURITY_PLAIN, SECURITY_CURVE } mechanism_t;
extern const char *const MECHANISMS[];      /* "null", "plain", "curve": the --security values */
extern const char *const ZMTP_MECHANISMS[]; /* "NULL", "PLAIN", "CURVE": as ZMTP and ZAP name them */
typedef struct {
    mechanism_t mechanism;
    const char *curve_secret, *curve_public, *curve_server; /* 40 characters of Z85 each */
    const char *curve_clients; /* the admitted client keys, "key,key,...": NULL admits any */
    const char *plain_user, *plain_password;
} security_t;
/* The flags every role of a secure example takes; the server adds --curve-clients
   (parse_curve_keys), the client --curve-public and --curve-server (parse_curve_key). */
#define SECURITY_FLAGS(security) \
    PARSED_FLAG("security", parse_mechanism, (security).mechanism), \
    PARSED_FLAG("curve-secret", parse_curve_key, (security).curve_secret), \
    PARSED_FLAG("plain-user", parse_plain_user, (security).plain_user), \
    PARSED_FLAG("plain-password", parse_plain_password, (security).plain_password)
flag_parser parse_mechanism, parse_curve_key, parse_curve_keys, parse_plain_user, parse_plain_password;
/* Whether the flags the chosen mechanism needs were all given; if not, a message on stderr (the
   role exits 2). A server needs no --curve-public nor --curve-server. */
bool security_complete(const char *program, const security_t *security, bool as_server);
/* Sets the mechanism's options on `socket`: they are read when a connection starts, so this
   comes before bind or connect. */
void secure_socket(void *socket, const security_t *security, bool as_server);

/* The ZAP handler (RFC 27) of a server, or NULL when its mechanism admits anyone without one
   (null, and curve without --curve-clients). It binds inproc://zeromq.zap.01 in `context`, so it
   must start before the secure sockets bind. */
void *zap_start(void *context, const security_t *security);
/* Answers the ZAP request waiting on `handler` (if any, after all: recv_if_ready), reported as
   `authenticated` or `denied`. */
void zap_answer(void *handler, const security_t *security);

/* A monitor of `socket`'s handshake failures: the inproc PAIR that libzmq's events arrive on,
   `name` telling the sockets apart. Started before the socket binds or connects. */
void *monitor_handshakes(void *context, void *socket, const char *name);
/* Reads one event of `monitor`: its failure ("no-detail", "protocol" or "auth") with the event's
   value (an errno, a ZMQ_PROTOCOL_ERROR_* code or the ZAP status), or NULL for another event or
   none. */
const char *handshake_failure(void *monitor, uint32_t *value);

#endif
