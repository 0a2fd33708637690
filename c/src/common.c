#include "common.h"

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

/* --- integers ------------------------------------------------------------------------------ */

uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
    return z ^ (z >> 31);
}

void put_be64(unsigned char bytes[8], uint64_t value)
{
    for (int i = 7; i >= 0; i--, value >>= 8)
        bytes[i] = (unsigned char)value;
}

uint64_t get_be64(const void *data)
{
    const unsigned char *bytes = data;
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | bytes[i];
    return value;
}

void put_be32(unsigned char bytes[4], uint32_t value)
{
    for (int i = 3; i >= 0; i--, value >>= 8)
        bytes[i] = (unsigned char)value;
}

uint32_t get_be32(const void *data)
{
    const unsigned char *bytes = data;
    uint32_t value = 0;
    for (int i = 0; i < 4; i++)
        value = value << 8 | bytes[i];
    return value;
}

const char *hex(const void *data, size_t size, char text[HEX_SIZE])
{
    const unsigned char *bytes = data;
    size = size < 16 ? size : 16;
    for (size_t i = 0; i < size; i++)
        snprintf(text + 2 * i, 3, "%02x", bytes[i]);
    text[2 * size] = '\0';
    return text;
}

bool is_symbol(const char *text, size_t size)
{
    if (size < 1 || size > MAX_SYMBOL)
        return false;
    for (size_t i = 0; i < size; i++)
        if (text[i] < 'A' || text[i] > 'Z')
            return false;
    return true;
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

/* Unsigned bytes (memcmp compares them as unsigned char), a shorter prefix first. */
static int compare(const char *a, size_t a_size, const char *b, size_t b_size)
{
    int order = memcmp(a, b, a_size < b_size ? a_size : b_size);
    return order ? order : (a_size > b_size) - (a_size < b_size);
}

bool names_find(const names_t *names, const char *name, size_t size, size_t *at)
{
    size_t i = 0;
    int order = 1;
    while (i < names->count && (order = compare(names->entry[i].bytes, names->entry[i].size, name, size)) < 0)
        i++;
    *at = i; /* where it is, or where it belongs */
    return i < names->count && order == 0;
}

name_entry_t *names_get(names_t *names, const char *name, size_t size, bool *added)
{
    size_t i;
    bool found = names_find(names, name, size, &i);
    if (added)
        *added = !found;
    if (found)
        return &names->entry[i];
    if (names->count == names->room) {
        names->room = names->room ? 2 * names->room : 8;
        names->entry = realloc(names->entry, names->room * sizeof *names->entry);
        if (!names->entry)
            fail("memory", "out of memory");
    }
    name_entry_t *entry = &names->entry[i];
    memmove(entry + 1, entry, (names->count - i) * sizeof *entry);
    names->count++;
    *entry = (name_entry_t){.size = size};
    memcpy(entry->bytes, name, size);
    return entry;
}

void names_remove(names_t *names, size_t i)
{
    names->count--;
    memmove(&names->entry[i], &names->entry[i + 1], (names->count - i) * sizeof *names->entry);
}

void names_free(names_t *names)
{
    free(names->entry);
    *names = (names_t){0};
}

/* --- frames --------------------------------------------------------------------------------- */

bool frame_if_ready(void *socket, zmq_msg_t *frame)
{
    if (zmq_msg_recv(frame, socket, ZMQ_DONTWAIT) >= 0)
        return true;
    if (errno != EAGAIN && errno != EINTR) /* EINTR: a signal; the caller checks its flags */
        fail("recv", "zmq_msg_recv: %s", zmq_strerror(errno));
    return false;
}

bool recv_if_ready(void *socket, frames_t *message)
{
    return recv_at_most(socket, message, SIZE_MAX);
}

bool recv_at_most(void *socket, frames_t *message, size_t keep)
{
    size_t room = 4;
    message->frame = malloc(room * sizeof *message->frame);
    message->count = 0;
    zmq_msg_t dropped; /* each frame past the first `keep`, in turn */
    zmq_msg_init(&dropped);
    /* A multipart message arrives whole or not at all: once its first frame is here, so are the
       others, and receiving them cannot block. ZMQ_RCVMORE (zmq_msg_more) says that another
       frame of it follows. */
    for (bool first = true, more = true; more; first = false) {
        zmq_msg_t *frame = &dropped;
        if (message->count < keep) {
            if (message->count == room) /* only the pointers move: a zmq_msg_t must stay put */
                message->frame = realloc(message->frame, (room *= 2) * sizeof *message->frame);
            frame = message->frame ? malloc(sizeof *frame) : NULL;
            if (!frame)
                fail("memory", "out of memory");
            zmq_msg_init(frame);
            message->frame[message->count++] = frame;
        }
        if (first) { /* the first frame: only if it is there */
            if (!frame_if_ready(socket, frame)) {
                frames_close(message);
                zmq_msg_close(&dropped);
                return false;
            }
        } else { /* the rest: already here (a receive releases what `frame` held before) */
            while (zmq_msg_recv(frame, socket, 0) < 0)
                if (errno != EINTR)
                    fail("recv", "zmq_msg_recv: %s", zmq_strerror(errno));
        }
        more = zmq_msg_more(frame);
    }
    zmq_msg_close(&dropped);
    return true;
}

void frames_close(frames_t *message)
{
    for (size_t i = 0; i < message->count; i++) {
        zmq_msg_close(message->frame[i]);
        free(message->frame[i]);
    }
    free(message->frame);
    message->frame = NULL;
    message->count = 0;
}

void send_frame(void *socket, const void *data, size_t size, bool more)
{
    while (zmq_send(socket, data, size, more ? ZMQ_SNDMORE : 0) < 0)
        if (errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
}

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

bool send_if_room(void *socket, const part_t *parts, size_t count)
{
    /* ZMQ_DONTWAIT: the room a poll saw may be gone by now (the peer left); then nothing is sent
       and the caller waits again instead of blocking. The high-water mark counts whole messages,
       so once the first frame is accepted, the rest of the message is too. */
    int flags = ZMQ_DONTWAIT | (count > 1 ? ZMQ_SNDMORE : 0);
    if (zmq_send(socket, parts[0].data, parts[0].size, flags) < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
        return false;
    }
    for (size_t i = 1; i < count; i++)
        send_frame(socket, parts[i].data, parts[i].size, i + 1 < count);
    return true;
}

void send_when_room(void *socket, const part_t *parts, size_t count, const deadline_t *deadline,
                    const char *what)
{
    for (;;) {
        zmq_pollitem_t item = {.socket = socket, .events = ZMQ_POLLOUT};
        int ready = zmq_poll(&item, 1, deadline_cap(deadline, 1000));
        if (ready < 0 && errno != EINTR)
            fail("poll", "zmq_poll: %s", zmq_strerror(errno));
        if (ready > 0 && send_if_room(socket, parts, count))
            return;
        if (deadline_expired(deadline))
            fail("timeout", "no room to send %s", what);
    }
}

/* --- security ------------------------------------------------------------------------------- */

const char *const MECHANISMS[] = {"null", "plain", "curve"};
const char *const ZMTP_MECHANISMS[] = {"NULL", "PLAIN", "CURVE"};

const char *parse_mechanism(const char *text, void *value)
{
    for (mechanism_t m = SECURITY_NULL; m <= SECURITY_CURVE; m++)
        if (!strcmp(text, MECHANISMS[m])) {
            *(mechanism_t *)value = m;
            return NULL;
        }
    return "must be null, plain or curve";
}

/* A CURVE key in Z85 (RFC 32): 40 characters of this alphabet encode its 32 bytes. */
enum { Z85_KEY = 40, KEY_BYTES = 32 };
static const char Z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

static bool is_z85_key(const char *text, size_t size)
{
    for (size_t i = 0; i < size; i++)
        if (!memchr(Z85, text[i], sizeof Z85 - 1))
            return false;
    if (size != Z85_KEY)
        return false;
    /* Every group of 5 characters must fit in 4 bytes: libzmq's decoder says so. */
    char copy[Z85_KEY + 1];
    uint8_t bytes[KEY_BYTES];
    memcpy(copy, text, Z85_KEY);
    copy[Z85_KEY] = '\0';
    return zmq_z85_decode(bytes, copy) != NULL;
}

const char *parse_curve_key(const char *text, void *value)
{
    if (!is_z85_key(text, strlen(text)))
        return "a CURVE key is 40 characters of Z85 that encode 32 bytes";
    *(const char **)value = text;
    return NULL;
}

/* Keys separated by commas, which Z85 never uses. */
const char *parse_curve_keys(const char *text, void *value)
{
    for (const char *key = text;; key += Z85_KEY + 1) {
        size_t size = strcspn(key, ",");
        if (!is_z85_key(key, size))
            return "each key is 40 characters of Z85, separated by commas";
        if (!key[size])
            break;
    }
    *(const char **)value = text;
    return NULL;
}

/* ZMTP's PLAIN carries each of them in at most 255 bytes; libzmq refuses an empty one. */
enum { MAX_PLAIN = 255 };

const char *parse_plain_user(const char *text, void *value)
{
    size_t size = strlen(text);
    if (size < 1 || size > MAX_PLAIN || !utf8_valid(text, size, NULL))
        return "a username is 1 to 255 bytes of UTF-8";
    *(const char **)value = text;
    return NULL;
}

const char *parse_plain_password(const char *text, void *value)
{
    size_t size = strlen(text);
    if (size < 1 || size > MAX_PLAIN)
        return "a password is 1 to 255 bytes";
    *(const char **)value = text;
    return NULL;
}

bool security_complete(const char *program, const security_t *security, bool as_server)
{
    bool curve = security->mechanism == SECURITY_CURVE, plain = security->mechanism == SECURITY_PLAIN;
    const char *missing = curve && !security->curve_secret                ? "--curve-secret"
                        : curve && !as_server && !security->curve_public  ? "--curve-public"
                        : curve && !as_server && !security->curve_server  ? "--curve-server"
                        : plain && !security->plain_user                  ? "--plain-user"
                        : plain && !security->plain_password              ? "--plain-password"
                                                                          : NULL;
    if (missing) {
        log_line("%s: %s is required under --security %s", program, missing, MECHANISMS[security->mechanism]);
        return false;
    }
    if (curve && !zmq_has("curve")) { /* what the library cannot do is a bad command line */
        log_line("%s: --security curve: this libzmq was built without CURVE", program);
        return false;
    }
    return true;
}

static void set_option(void *socket, int option, const void *value, size_t size, const char *name)
{
    if (zmq_setsockopt(socket, option, value, size) < 0)
        fail("security", "%s: %s", name, zmq_strerror(errno));
}

void secure_socket(void *socket, const security_t *security, bool as_server)
{
    int yes = 1;
    if (security->mechanism == SECURITY_CURVE) {
        if (as_server) { /* proves it holds the secret of the public key its clients know */
            set_option(socket, ZMQ_CURVE_SERVER, &yes, sizeof yes, "ZMQ_CURVE_SERVER");
        } else { /* a key pair of its own, and the server's public key */
            set_option(socket, ZMQ_CURVE_SERVERKEY, security->curve_server, Z85_KEY, "ZMQ_CURVE_SERVERKEY");
            set_option(socket, ZMQ_CURVE_PUBLICKEY, security->curve_public, Z85_KEY, "ZMQ_CURVE_PUBLICKEY");
        }
        /* 40 bytes long: libzmq reads the key as Z85 text, 32 would be raw bytes. */
        set_option(socket, ZMQ_CURVE_SECRETKEY, security->curve_secret, Z85_KEY, "ZMQ_CURVE_SECRETKEY");
    } else if (security->mechanism == SECURITY_PLAIN) {
        if (as_server) { /* admits whomever the ZAP handler admits: anyone, without one */
            set_option(socket, ZMQ_PLAIN_SERVER, &yes, sizeof yes, "ZMQ_PLAIN_SERVER");
        } else { /* sent in clear text: PLAIN authenticates, it does not encrypt */
            set_option(socket, ZMQ_PLAIN_USERNAME, security->plain_user, strlen(security->plain_user),
                       "ZMQ_PLAIN_USERNAME");
            set_option(socket, ZMQ_PLAIN_PASSWORD, security->plain_password,
                       strlen(security->plain_password), "ZMQ_PLAIN_PASSWORD");
        }
    }
}

void *zap_start(void *context, const security_t *security)
{
    if (security->mechanism == SECURITY_NULL || (security->mechanism == SECURITY_CURVE && !security->curve_clients))
        return NULL;
    /* For every PLAIN or CURVE handshake, libzmq sends a request to the REP socket bound to this
       address in the same context, and waits for its answer; with none bound, it admits everyone. */
    void *handler = zmq_socket(context, ZMQ_REP);
    int linger = 0;
    zmq_setsockopt(handler, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(handler, "inproc://zeromq.zap.01") < 0)
        fail("bind", "cannot bind the ZAP handler: %s", zmq_strerror(errno));
    return handler;
}

bool frame_is(const frames_t *m, size_t i, const char *text)
{
    return i < m->count && frame_size(m, i) == strlen(text) && !memcmp(frame_data(m, i), text, frame_size(m, i));
}

/* Whether `key` (Z85) is one of --curve-clients: keys of 40 characters, each but the last followed
   by a comma. */
static bool key_listed(const char *keys, const char *key)
{
    for (;; keys += Z85_KEY + 1) {
        if (!strncmp(keys, key, Z85_KEY))
            return true;
        if (!keys[Z85_KEY])
            return false;
    }
}

void zap_answer(void *handler, const security_t *security)
{
    frames_t request; /* version, request id, domain, address, routing id, mechanism, credentials */
    if (!recv_if_ready(handler, &request))
        return;
    const char *mechanism = "", *reason = "not a ZAP 1.0 request";
    size_t mechanism_size = 0, identity_size = 0;
    char identity[MAX_PLAIN + 1] = ""; /* the Z85 key or the username */
    bool admitted = false;
    if (request.count >= 6 && frame_is(&request, 0, "1.0") && utf8_valid(frame_data(&request, 5), frame_size(&request, 5), NULL)) {
        mechanism = frame_data(&request, 5);
        mechanism_size = frame_size(&request, 5);
        reason = "unknown mechanism or unreadable credentials";
        if (frame_is(&request, 5, "CURVE") && request.count == 7 && frame_size(&request, 6) == KEY_BYTES) {
            zmq_z85_encode(identity, (const uint8_t *)frame_data(&request, 6), KEY_BYTES);
            identity_size = Z85_KEY;
            admitted = security->mechanism == SECURITY_CURVE &&
                       (!security->curve_clients || key_listed(security->curve_clients, identity));
            reason = "the key is not one of --curve-clients";
        } else if (frame_is(&request, 5, "PLAIN") && request.count == 8 && frame_size(&request, 6) <= MAX_PLAIN &&
                   utf8_valid(frame_data(&request, 6), frame_size(&request, 6), NULL)) {
            identity_size = frame_size(&request, 6);
            memcpy(identity, frame_data(&request, 6), identity_size);
            admitted = security->mechanism == SECURITY_PLAIN && frame_is(&request, 6, security->plain_user) &&
                       frame_is(&request, 7, security->plain_password);
            reason = "wrong username or password";
        }
    }
    /* Every request gets its answer, even an unreadable one, so that no handshake waits forever. */
    const char *status = admitted ? "OK" : reason;
    send_frame(handler, "1.0", 3, true);
    if (request.count > 1) /* the request id, copied */
        send_frame(handler, frame_data(&request, 1), frame_size(&request, 1), true);
    else
        send_frame(handler, "", 0, true);
    send_frame(handler, admitted ? "200" : "400", 3, true);
    send_frame(handler, status, strlen(status), true);
    send_frame(handler, identity, identity_size, true); /* the user id */
    send_frame(handler, "", 0, false);                   /* metadata: none */
    if (admitted)
        emit("authenticated", "{s:s%, s:s%}", "mechanism", mechanism, mechanism_size, "identity", identity,
             identity_size);
    else
        emit("denied", "{s:s%, s:s%, s:s}", "mechanism", mechanism, mechanism_size, "identity", identity,
             identity_size, "reason", reason);
    frames_close(&request);
}

void *monitor_handshakes(void *context, void *socket, const char *name)
{
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://monitor.%s", name);
    /* libzmq binds a PAIR at `endpoint` and sends it the socket's events of this mask. */
    int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
    if (zmq_socket_monitor(socket, endpoint, events) < 0)
        fail("monitor", "zmq_socket_monitor: %s", zmq_strerror(errno));
    void *monitor = zmq_socket(context, ZMQ_PAIR);
    int linger = 0;
    zmq_setsockopt(monitor, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(monitor, endpoint) < 0)
        fail("monitor", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    return monitor;
}

const char *handshake_failure(void *monitor, uint32_t *value)
{
    frames_t event;
    *value = 0;
    if (!recv_if_ready(monitor, &event))
        return NULL;
    /* Frame 0: the event (16 bits) then its value (32 bits), in the machine's byte order;
       frame 1: the endpoint. */
    uint16_t number = 0;
    if (event.count == 2 && frame_size(&event, 0) == 6) {
        memcpy(&number, frame_data(&event, 0), sizeof number);
        memcpy(value, frame_data(&event, 0) + 2, sizeof *value);
    }
    frames_close(&event);
    switch (number) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: return "no-detail"; /* value: an errno */
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: return "protocol";   /* a ZMQ_PROTOCOL_ERROR_* */
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: return "auth";           /* the ZAP status code */
    default: return NULL;
    }
}
