#include "contract.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

/* --- events and logs ------------------------------------------------------------------------ */

/* The digits a real needs to print as Python prints it: the fewest that read back as the same
   double (jansson's default, 17, prints 978.52 as 978.51999999999998), and at least its digits
   before the point (else %g would write 10.0 as 1e+01). */
static int real_digits(double x)
{
    int digits = 1;
    for (double whole = x < 0 ? -x : x; whole >= 10 && digits < 17; whole /= 10)
        digits++;
    char text[32];
    for (; digits < 17; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, x);
        if (strtod(text, NULL) == x)
            break;
    }
    return digits;
}

/* The digits that every real in `value`, however deep in arrays and objects, needs. */
static int digits_needed(json_t *value)
{
    int digits = json_is_real(value) ? real_digits(json_real_value(value)) : 1;
    size_t index;
    const char *key;
    json_t *item;
    if (json_is_array(value)) {
        json_array_foreach(value, index, item) {
            int needed = digits_needed(item);
            digits = needed > digits ? needed : digits;
        }
    }
    if (json_is_object(value)) {
        json_object_foreach(value, key, item) {
            int needed = digits_needed(item);
            digits = needed > digits ? needed : digits;
        }
    }
    return digits;
}

/* The calling thread's reporter, if it installed one: _Thread_local gives each thread its own. */
static _Thread_local event_reporter *thread_reporter;
static _Thread_local void *thread_reporter_state;

void report_events_to(event_reporter *reporter, void *state)
{
    thread_reporter = reporter;
    thread_reporter_state = state;
}

char *event_text(const json_t *line)
{
    int digits = digits_needed((json_t *)line); /* enough for every real among the fields */
    return json_dumps(line, JSON_REAL_PRECISION(digits)); /* UTF-8 as is, no \u escapes needed */
}

/* stdout is shared by the role's thread(s) and the socket monitors' threads (monitor.c): each line
   is written and flushed whole under this lock, and once `done` is out, no `socket-event` follows
   (a monitor still sees the sockets close after it). */
static pthread_mutex_t stdout_lock = PTHREAD_MUTEX_INITIALIZER;
static bool done_written;

void write_event(const char *event, const char *text, size_t size)
{
    pthread_mutex_lock(&stdout_lock);
    if (!done_written || strcmp(event, "socket-event")) {
        fwrite(text, 1, size, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        done_written |= !strcmp(event, "done");
    }
    pthread_mutex_unlock(&stdout_lock);
}

void emit(const char *event, const char *fields, ...)
{
    json_error_t error;
    va_list args;
    va_start(args, fields);
    json_t *values = json_vpack_ex(&error, 0, fields, args);
    va_end(args);
    if (!values) { /* a bug, not a peer: every string was checked for UTF-8 before */
        log_line("cannot report %s: %s", event, error.text);
        abort();
    }
    json_t *line = json_pack("{s:s}", "event", event);
    json_object_update(line, values);
    if (thread_reporter) {
        thread_reporter(event, line, thread_reporter_state);
    } else {
        char *text = event_text(line);
        if (!text)
            fail("memory", "out of memory");
        write_event(event, text, strlen(text));
        free(text);
    }
    json_decref(values);
    json_decref(line);
}

static void emit_verror(const char *code, const char *reason, va_list args)
{
    char text[512];
    vsnprintf(text, sizeof text, reason, args);
    emit("error", "{s:s, s:s}", "code", code, "reason", text);
}

void emit_error(const char *code, const char *reason, ...)
{
    va_list args;
    va_start(args, reason);
    emit_verror(code, reason, args);
    va_end(args);
}

void fail(const char *code, const char *reason, ...)
{
    va_list args;
    va_start(args, reason);
    emit_verror(code, reason, args);
    va_end(args);
    exit(1); /* every socket has linger 0: nothing waits for unsent messages */
}

const char *problem(char reason[REASON_SIZE], const char *code, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(reason, REASON_SIZE, format, args);
    va_end(args);
    return code;
}

const char *quote(const void *data, size_t size, char text[QUOTE_SIZE])
{
    const unsigned char *bytes = data;
    size_t used = 0;
    text[used++] = '\'';
    for (size_t i = 0; i < size && i < MAX_QUOTE; i++)
        if (bytes[i] >= 0x20 && bytes[i] <= 0x7e && bytes[i] != '\\' && bytes[i] != '\'')
            text[used++] = (char)bytes[i];
        else
            used += (size_t)snprintf(text + used, 5, "\\x%02x", bytes[i]);
    text[used++] = '\'';
    text[used] = '\0';
    return text;
}

void log_line(const char *message, ...)
{
    va_list args;
    va_start(args, message);
    vfprintf(stderr, message, args);
    va_end(args);
    fputc('\n', stderr);
}

/* --- time ----------------------------------------------------------------------------------- */

int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

deadline_t deadline_start(int timeout_ms)
{
    return (deadline_t){timeout_ms > 0 ? now_ms() + timeout_ms : 0};
}

long deadline_remaining(const deadline_t *d)
{
    if (!d->end)
        return -1;
    int64_t left = d->end - now_ms();
    return left > 0 ? (long)left : 0;
}

bool deadline_expired(const deadline_t *d)
{
    return d->end && now_ms() >= d->end;
}

long deadline_cap(const deadline_t *d, long ms)
{
    long left = deadline_remaining(d);
    return left < 0 || ms < left ? ms : left;
}

/* --- stop flag ------------------------------------------------------------------------------ */

static volatile sig_atomic_t stop_flag = 0;

static void raise_stop_flag(int signal_number)
{
    (void)signal_number;
    stop_flag = 1;
}

void stop_on_signals(void)
{
    /* No SA_RESTART: a signal interrupts zmq_poll (EINTR), so the flag is seen at once. */
    struct sigaction action = {.sa_handler = raise_stop_flag};
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
}

bool stop_requested(void)
{
    return stop_flag;
}

sigset_t block_stop_signals(void)
{
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    return signals;
}

/* --- one loop shape: the poll --------------------------------------------------------------- */

bool poll_in(void *socket, long timeout_ms)
{
    zmq_pollitem_t item = {.socket = socket, .events = ZMQ_POLLIN};
    return poll_all(&item, 1, timeout_ms) > 0;
}

int poll_all(zmq_pollitem_t *items, int count, long timeout_ms)
{
    int ready = zmq_poll(items, count, timeout_ms);
    if (ready < 0 && errno != EINTR) /* EINTR: a signal; the caller checks its flags and loops */
        fail("poll", "zmq_poll: %s", zmq_strerror(errno));
    if (ready <= 0)
        for (int i = 0; i < count; i++)
            items[i].revents = 0;
    return ready > 0 ? ready : 0;
}

bool poll_ready(const zmq_pollitem_t *items, int count, const void *socket)
{
    for (int i = 0; socket && i < count; i++)
        if (items[i].socket == socket)
            return items[i].revents & ZMQ_POLLIN;
    return false;
}

/* --- command line --------------------------------------------------------------------------- */

enum { MAX_FLAGS = 32, FIRST_FLAG = 256 };

static bool parse_number(const char *program, const flag_t *flag, const char *text)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < INT_MIN || value > INT_MAX) {
        log_line("%s: --%s: '%s' is not an integer", program, flag->name, text);
        return false;
    }
    if (value < flag->minimum) {
        log_line("%s: --%s: must be at least %d", program, flag->name, flag->minimum);
        return false;
    }
    *flag->number = (int)value;
    return true;
}

bool parse_flags(int argc, char **argv, const flag_t *flags, size_t count)
{
    struct option options[MAX_FLAGS + 1] = {{0}};
    bool given[MAX_FLAGS] = {false};
    for (size_t i = 0; i < count && i < MAX_FLAGS; i++)
        options[i] = (struct option){flags[i].name, required_argument, NULL, FIRST_FLAG + (int)i};
    int found;
    while ((found = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (found < FIRST_FLAG)
            return false; /* getopt_long has printed why */
        const flag_t *flag = &flags[found - FIRST_FLAG];
        given[found - FIRST_FLAG] = true;
        if (flag->text) {
            *flag->text = optarg;
        } else if (flag->number) {
            if (!parse_number(argv[0], flag, optarg))
                return false;
        } else {
            const char *why = flag->parse(optarg, flag->value);
            if (why) {
                log_line("%s: --%s: '%s': %s", argv[0], flag->name, optarg, why);
                return false;
            }
        }
    }
    if (optind < argc) {
        log_line("%s: unexpected argument '%s'", argv[0], argv[optind]);
        return false;
    }
    for (size_t i = 0; i < count && i < MAX_FLAGS; i++)
        if (flags[i].required && !given[i]) {
            log_line("%s: --%s is required", argv[0], flags[i].name);
            return false;
        }
    return true;
}

/* Base 10 only, and strictly: strtoull and strtoll skip spaces and take a sign (strtoull even
   negates "-1" into 2^64-1), so the text must start with a digit, or '-' then a digit for a
   signed one, and end with the number. */
const char *parse_u64(const char *text, void *value)
{
    char *end;
    errno = 0;
    unsigned long long number = strtoull(text, &end, 10);
    if (!isdigit((unsigned char)text[0]) || *end || errno)
        return "must be an unsigned 64-bit integer";
    *(uint64_t *)value = number;
    return NULL;
}

const char *parse_i64(const char *text, void *value)
{
    char *end;
    errno = 0;
    long long number = strtoll(text, &end, 10);
    if (!isdigit((unsigned char)text[text[0] == '-']) || *end || errno)
        return "must be a signed 64-bit integer";
    *(int64_t *)value = number;
    return NULL;
}

/* --- UTF-8 ---------------------------------------------------------------------------------- */

bool utf8_valid(const void *bytes, size_t size, size_t *bad_at)
{
    const unsigned char *s = bytes;
    size_t i = 0;
    while (i < size) {
        unsigned char lead = s[i];
        size_t length;
        unsigned char low = 0x80, high = 0xBF; /* the range of the second byte */
        if (lead < 0x80) {
            i++;
            continue;
        } else if (lead >= 0xC2 && lead <= 0xDF) { /* C0, C1: overlong */
            length = 2;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            length = 3;
            if (lead == 0xE0) low = 0xA0;  /* overlong */
            if (lead == 0xED) high = 0x9F; /* surrogates D800-DFFF */
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            length = 4;
            if (lead == 0xF0) low = 0x90;  /* overlong */
            if (lead == 0xF4) high = 0x8F; /* above U+10FFFF */
        } else {
            break; /* a continuation byte, C0, C1 or F5-FF */
        }
        if (size - i < length || s[i + 1] < low || s[i + 1] > high)
            break;
        size_t k = 2;
        while (k < length && (s[i + k] & 0xC0) == 0x80)
            k++;
        if (k < length)
            break;
        i += length;
    }
    if (bad_at)
        *bad_at = i;
    return i == size;
}

/* --- names ---------------------------------------------------------------------------------- */

bool is_name(const void *bytes, size_t size)
{
    return size >= 1 && size <= MAX_NAME && utf8_valid(bytes, size, NULL);
}

const char *parse_name(const char *text, void *value)
{
    if (!is_name(text, strlen(text)))
        return "a name is 1 to 32 bytes of UTF-8";
    *(const char **)value = text;
    return NULL;
}

/* --- sockets -------------------------------------------------------------------------------- */

void limit_socket(void *socket, int linger, int64_t max_message)
{
    if (zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_message, sizeof max_message) < 0)
        fail("socket", "zmq_setsockopt: %s", zmq_strerror(errno));
}

void last_endpoint(void *socket, char endpoint[ENDPOINT_SIZE])
{
    size_t size = ENDPOINT_SIZE;
    if (zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, endpoint, &size) < 0)
        fail("endpoint", "ZMQ_LAST_ENDPOINT: %s", zmq_strerror(errno));
}

void bind_socket(void *socket, const char *endpoint, char bound[ENDPOINT_SIZE])
{
    if (zmq_bind(socket, endpoint) < 0)
        fail("bind", "cannot bind %s: %s", endpoint, zmq_strerror(errno));
    last_endpoint(socket, bound);
}

void connect_socket(void *socket, const char *endpoint)
{
    /* An absent peer is no error: libzmq connects in the background, and again after a loss. */
    if (zmq_connect(socket, endpoint) < 0)
        fail("connect", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
}
