/* The launch contract (examples/README.md), what every role of every example does alike: JSON Lines
   events on stdout and logs on stderr, the --timeout deadline, SIGTERM and SIGINT, the flags, the
   names a flag or a peer gives, and what every socket gets before it binds or connects. */
#ifndef BTB_CONTRACT_H
#define BTB_CONTRACT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <zmq.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* --- events and logs ("Reporting: JSON Lines on stdout, logs on stderr") -------------------- */

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

/* --- time and the deadline (--timeout) ------------------------------------------------------ */

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

/* --- stopping: SIGTERM and SIGINT ("Stopping") ---------------------------------------------- */

/* SIGTERM and SIGINT only raise a flag; the role looks at it after every poll. */
void stop_on_signals(void);
bool stop_requested(void);
/* Blocks SIGTERM and SIGINT in the calling thread, and in every thread it starts afterwards (they
   inherit the mask, libzmq's I/O threads too); returns the set, to wait for or unblock later. */
sigset_t block_stop_signals(void);

/* --- one loop shape: the poll ("One loop shape") -------------------------------------------- */

/* Waits up to timeout_ms (-1: no limit) for a message on `socket`; false if none came. */
bool poll_in(void *socket, long timeout_ms);
/* The same for several sockets at once: how many have a message, their `revents` say which
   (all 0 after a timeout or a signal: EINTR is "nothing ready", and the caller goes round its
   loop, where it checks the stop flag and the deadline). */
int poll_all(zmq_pollitem_t *items, int count, long timeout_ms);
/* Whether that poll found `socket`, one of the `count` items, with a message (ZMQ_POLLIN); false
   for NULL, a socket the role does not have. */
bool poll_ready(const zmq_pollitem_t *items, int count, const void *socket);

/* --- flags ("Starting a role") -------------------------------------------------------------- */

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

/* --- names and UTF-8: chat handles, subscriber and worker names ----------------------------- */

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF, no truncated sequence.
   `bad_at` (may be NULL) gets the offset of the first invalid byte. */
bool utf8_valid(const void *bytes, size_t size, size_t *bad_at);
enum { MAX_NAME = 32 }; /* bytes of UTF-8 */
/* A name: 1 to MAX_NAME bytes of UTF-8. */
bool is_name(const void *bytes, size_t size);
flag_parser parse_name; /* into a const char * */

/* --- sockets: what every one gets before it binds or connects ("Hostile peers", "Linger") --- */

/* Its linger (what happens at close to messages still queued), and ZMQ_MAXMSGSIZE, the largest
   frame a peer may send it. libzmq checks each frame's size as it decodes it and drops a bigger
   one together with the sender's connection, before allocating it; subscriptions are frames too.
   Send-only sockets included: the library still decodes what a peer sends them. (Inproc sockets
   need no limit: nothing decodes there.) Each example's file says which values, and why. */
void limit_socket(void *socket, int linger, int64_t max_message);
/* The endpoint a socket actually bound, with the port the library chose for a wildcard `*`: what
   a role reports in its `ready`. */
enum { ENDPOINT_SIZE = 256 };
void last_endpoint(void *socket, char endpoint[ENDPOINT_SIZE]);
/* Binds, or fails with error `bind` (the port is taken, the endpoint is malformed...); `bound` gets
   the endpoint bound (last_endpoint). */
void bind_socket(void *socket, const char *endpoint, char bound[ENDPOINT_SIZE]);
/* Connects, or fails with error `connect` (a malformed endpoint, an unknown transport). */
void connect_socket(void *socket, const char *endpoint);

#endif
