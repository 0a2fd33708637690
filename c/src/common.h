/* The launch contract's shared half (examples/README.md): JSON Lines events on stdout, logs on
   stderr, the --timeout deadline, the stop flag, flag parsing and multipart frames. */
#ifndef BTB_COMMON_H
#define BTB_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* One event as one JSON line, flushed at once. `fields` is a jansson pack format for the
   object of the event's fields, e.g. emit("joined", "{s:s}", "handle", name). */
void emit(const char *event, const char *fields, ...);
/* An `error` event; the role goes on. */
void emit_error(const char *code, const char *reason, ...) PRINTF_LIKE(2, 3);
/* A fatal error: an `error` event, then exit 1. */
_Noreturn void fail(const char *code, const char *reason, ...) PRINTF_LIKE(2, 3);
void log_line(const char *message, ...) PRINTF_LIKE(1, 2);

/* Monotonic milliseconds, and the role's --timeout (0: no limit). */
int64_t now_ms(void);
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

/* Long options, each followed by its value: a string, or an integer no smaller than `minimum`.
   On a bad command line: a message on stderr and false (the role exits 2). */
typedef struct {
    const char *name;
    const char **text; /* set for a string flag */
    int *number;       /* set for an integer flag */
    int minimum;
} flag_t;
#define TEXT_FLAG(name, variable) {name, &(variable), NULL, 0}
#define NUMBER_FLAG(name, variable, minimum) {name, NULL, &(variable), minimum}
bool parse_flags(int argc, char **argv, const flag_t *flags, size_t count);

/* One multipart message, every frame of it received. */
typedef struct {
    zmq_msg_t **frame; /* each frame allocated once: libzmq forbids moving a zmq_msg_t */
    size_t count;
} frames_t;
void frames_recv(void *socket, frames_t *message);
void frames_close(frames_t *message);
static inline const char *frame_data(const frames_t *m, size_t i) { return zmq_msg_data(m->frame[i]); }
static inline size_t frame_size(const frames_t *m, size_t i) { return zmq_msg_size(m->frame[i]); }
/* One frame; `more` (ZMQ_SNDMORE) says another frame of the same message follows. */
void send_frame(void *socket, const void *data, size_t size, bool more);
/* The endpoint a socket actually bound, with the port the library chose for a wildcard `*`. */
enum { ENDPOINT_SIZE = 256 };
void last_endpoint(void *socket, char endpoint[ENDPOINT_SIZE]);
/* Waits up to timeout_ms (-1: no limit) for a message on `socket`; false if none came. */
bool poll_in(void *socket, long timeout_ms);

#endif
