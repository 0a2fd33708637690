/* perf's plain-TCP roles, tcp-sink, tcp-source, tcp-echo and tcp-ping: the machine's ceiling, for
   comparison (examples/perf/PROTOCOL.md). The same four measurements as thr-sink, thr-source,
   lat-echo and lat-ping, with no ZeroMQ at all: one POSIX socket, and each message framed by hand
   as a 4-byte big-endian length, then its bytes (the least a byte stream needs to carry messages).
   TCP_NODELAY and SO_REUSEADDR as libzmq sets them; SO_RCVTIMEO and SO_SNDTIMEO bound every wait
   (and accept and connect) by --timeout, 0 being no limit for both. */
#include "perf.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "contract.h"
#include "frames.h"

enum {
    HEADER = 4,             /* the length before every message */
    READ_SIZE = 256 * 1024, /* the sink reads what has arrived, up to this much at a time */
    WRITE_SIZE = 64 * 1024, /* the source writes this much at a time, at most 1000 messages */
};

/* --- sockets -------------------------------------------------------------------------------- */

/* The first address of "tcp://HOST:PORT" (HOST may be [IPv6] or * for any, PORT * for any free
   one), as ZeroMQ spells an endpoint; fails with `code` (bind or connect) if it is not one. */
static struct addrinfo *resolve(const char *endpoint, const char *code)
{
    const char *prefix = "tcp://", *colon = strrchr(endpoint, ':');
    const char *host = endpoint + strlen(prefix);
    char name[256];
    if (strncmp(endpoint, prefix, strlen(prefix)) || colon < host || (size_t)(colon - host) >= sizeof name)
        fail(code, "%s: not tcp://HOST:PORT", endpoint);
    size_t length = (size_t)(colon - host);
    memcpy(name, host, length);
    name[length] = '\0';
    if (length >= 2 && name[0] == '[' && name[length - 1] == ']') { /* [::1] */
        name[length - 1] = '\0';
        memmove(name, name + 1, length - 1);
    }
    const char *port = strcmp(colon + 1, "*") ? colon + 1 : "0"; /* port 0: the kernel picks one */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV | AI_PASSIVE}, *found;
    int error = getaddrinfo(strcmp(name, "*") ? name : NULL, port, &hints, &found);
    if (error)
        fail(code, "%s: %s", endpoint, gai_strerror(error));
    return found;
}

/* TCP_NODELAY (no Nagle: a small message leaves at once), and every wait bounded by --timeout. */
static void tune(int fd, int timeout)
{
    int on = 1;
    struct timeval wait = {.tv_sec = timeout / 1000, .tv_usec = timeout % 1000 * 1000};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
}

/* Sinks and echoes: listen on --endpoint, report it in `ready`, take the one peer. */
static int accept_peer(const perf_args *args)
{
    struct addrinfo *address = resolve(args->endpoint, "bind");
    int listener = socket(address->ai_family, SOCK_STREAM, 0), on = 1;
    if (listener < 0)
        fail("bind", "socket: %s", strerror(errno));
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    tune(listener, args->timeout); /* SO_RCVTIMEO bounds accept too */
    if (bind(listener, address->ai_addr, address->ai_addrlen) < 0 || listen(listener, 1) < 0)
        fail("bind", "cannot bind %s: %s", args->endpoint, strerror(errno));
    freeaddrinfo(address);

    struct sockaddr_storage bound; /* the real port, when --endpoint asked for any (*) */
    socklen_t size = sizeof bound;
    getsockname(listener, (struct sockaddr *)&bound, &size);
    char host[INET6_ADDRSTRLEN], endpoint[ENDPOINT_SIZE];
    bool v6 = bound.ss_family == AF_INET6;
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)&bound;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&bound;
    inet_ntop(bound.ss_family, v6 ? (const void *)&in6->sin6_addr : (const void *)&in4->sin_addr, host, sizeof host);
    snprintf(endpoint, sizeof endpoint, v6 ? "tcp://[%s]:%u" : "tcp://%s:%u", host,
             ntohs(v6 ? in6->sin6_port : in4->sin_port));
    emit("ready", "{s:s}", "endpoint", endpoint);

    int peer;
    while ((peer = accept(listener, NULL, NULL)) < 0)
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            fail("timeout", "no peer connected within the timeout");
        else if (errno != EINTR)
            fail("accept", "accept: %s", strerror(errno));
    close(listener);
    tune(peer, args->timeout);
    return peer;
}

/* Sources and pings: connect to --endpoint. Nothing retries as ZeroMQ's reconnect would: the
   sink or echo listens before it reports `ready`, so a refused connection is an error. */
static int connect_peer(const perf_args *args)
{
    struct addrinfo *address = resolve(args->endpoint, "connect");
    int fd = socket(address->ai_family, SOCK_STREAM, 0);
    if (fd < 0)
        fail("connect", "socket: %s", strerror(errno));
    tune(fd, args->timeout); /* SO_SNDTIMEO bounds connect too: EINPROGRESS once it has passed */
    if (connect(fd, address->ai_addr, address->ai_addrlen) < 0)
        fail(errno == EINPROGRESS ? "timeout" : "connect", "cannot connect to %s: %s", args->endpoint,
             strerror(errno));
    freeaddrinfo(address);
    emit("ready", "{}");
    return fd;
}

/* --- reading and writing a stream ------------------------------------------------------------ */

/* At least `least` bytes and at most `most` into `buffer`; returns how many came. A stream has no
   messages: one read may bring part of one, or several. */
static size_t read_at_least(int fd, unsigned char *buffer, size_t least, size_t most)
{
    size_t got = 0;
    while (got < least) {
        ssize_t n = recv(fd, buffer + got, most - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            fail("closed", "the peer closed the connection");
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            fail("timeout", "no message within the timeout");
        else if (errno != EINTR)
            fail("recv", "recv: %s", strerror(errno));
    }
    return got;
}

/* All `size` bytes, however many calls the kernel takes them in. MSG_NOSIGNAL: a peer that has
   gone is an error here, not a SIGPIPE that kills the process. */
static void write_all(int fd, const unsigned char *data, size_t size)
{
    while (size > 0) {
        ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
        if (n >= 0) {
            data += n;
            size -= (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            fail("timeout", "no room to send within the timeout");
        } else if (errno != EINTR) {
            fail("send", "send: %s", strerror(errno));
        }
    }
}

static void check_length(const unsigned char header[HEADER], int size)
{
    if (get_be32(header) != (uint32_t)size)
        fail("wrong-size", "a message of %lu bytes, expected %d", (unsigned long)get_be32(header), size);
}

static void check_deadline(const deadline_t *deadline, int done)
{
    if (deadline_expired(deadline))
        fail("timeout", "not finished by the deadline (%d messages)", done);
}

/* One message of `size` bytes, framed, ready to send: the length, then zeros. */
static unsigned char *framed(int size)
{
    unsigned char *message = calloc(1, HEADER + (size_t)size);
    if (!message)
        fail("memory", "out of memory for a message of %d bytes", size);
    put_be32(message, (uint32_t)size);
    return message;
}

/* --- roles ---------------------------------------------------------------------------------- */

int perf_tcp_sink(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, THROUGHPUT_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    int fd = accept_peer(&args);

    /* Read whatever has arrived, many messages at a time, and walk through it: the header
       (`have` of its 4 bytes so far), then `left` bytes of the message to skip. */
    static unsigned char buffer[READ_SIZE];
    unsigned char header[HEADER];
    size_t have = 0, left = 0;
    int done = 0;
    int64_t started = 0;
    while (done < args.count) {
        check_deadline(&deadline, done); /* once a read: a read brings up to a thousand messages */
        size_t got = read_at_least(fd, buffer, 1, sizeof buffer), at = 0;
        while (done < args.count) {
            if (have < HEADER) {
                size_t n = got - at < HEADER - have ? got - at : HEADER - have;
                memcpy(header + have, buffer + at, n);
                have += n;
                at += n;
                if (have < HEADER)
                    break; /* the rest of the header is in the next read */
                check_length(header, args.size);
                left = (size_t)args.size;
            }
            size_t n = got - at < left ? got - at : left;
            left -= n;
            at += n;
            if (left > 0)
                break; /* the rest of the message is in the next read */
            if (done++ == 0)
                started = now_ns(); /* timed from the first message's arrival, as thr-sink */
            have = 0;
        }
    }
    int64_t ended = now_ns();
    emit_throughput(args.size, args.count, started, ended);
    emit("done", "{}");
    close(fd);
    return 0;
}

int perf_tcp_source(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, THROUGHPUT_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    int fd = connect_peer(&args);

    /* Up to 1000 framed messages, written in one call: the batching libzmq does too. When the
       sink's receive buffer is full, send blocks: TCP's own flow control. */
    size_t framed_size = HEADER + (size_t)args.size;
    size_t fit = WRITE_SIZE / framed_size;
    int batch = fit < 1 ? 1 : fit > 1000 ? 1000 : (int)fit;
    unsigned char *messages = calloc((size_t)batch, framed_size);
    if (!messages)
        fail("memory", "out of memory for %d messages of %d bytes", batch, args.size);
    for (int i = 0; i < batch; i++)
        put_be32(messages + i * framed_size, (uint32_t)args.size);
    for (int done = 0; done < args.count; done += batch) {
        check_deadline(&deadline, done); /* once a batch: at most every 1000 messages */
        int n = args.count - done < batch ? args.count - done : batch;
        write_all(fd, messages, (size_t)n * framed_size);
    }
    emit("done", "{}");
    /* No linger to set: close returns at once and the kernel still delivers what is queued. */
    close(fd);
    free(messages);
    return 0;
}

int perf_tcp_echo(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, LATENCY_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    int fd = accept_peer(&args);

    size_t framed_size = HEADER + (size_t)args.size;
    unsigned char *message = framed(args.size);
    for (int done = 0; done < args.count; done++) {
        if (done % 1000 == 0)
            check_deadline(&deadline, done);
        /* Usually one read brings the whole message; never more than one (the peer waits). */
        size_t got = read_at_least(fd, message, HEADER, framed_size);
        check_length(message, args.size);
        read_at_least(fd, message + got, framed_size - got, framed_size - got);
        write_all(fd, message, framed_size); /* exactly what came */
    }
    emit("done", "{}");
    close(fd);
    free(message);
    return 0;
}

int perf_tcp_ping(int argc, char **argv)
{
    perf_args args;
    if (!perf_parse(argc, argv, &args, LATENCY_COUNT, true))
        return 2;
    deadline_t deadline = deadline_start(args.timeout);
    int fd = connect_peer(&args);

    size_t framed_size = HEADER + (size_t)args.size;
    unsigned char *request = framed(args.size), *reply = framed(args.size);
    int64_t started = now_ns();
    for (int done = 0; done < args.count; done++) {
        if (done % 1000 == 0)
            check_deadline(&deadline, done);
        write_all(fd, request, framed_size); /* one request, then its reply, as REQ does */
        size_t got = read_at_least(fd, reply, HEADER, framed_size);
        check_length(reply, args.size);
        read_at_least(fd, reply + got, framed_size - got, framed_size - got);
    }
    int64_t ended = now_ns();
    emit_latency(args.size, args.count, started, ended);
    emit("done", "{}");
    close(fd);
    free(request);
    free(reply);
    return 0;
}
