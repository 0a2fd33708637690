#include "monitor.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

const char *parse_on_off(const char *text, void *value)
{
    if (strcmp(text, "on") && strcmp(text, "off"))
        return "must be on or off";
    *(bool *)value = !strcmp(text, "on");
    return NULL;
}

/* The contract's `kind` of each libzmq event. MONITOR_STOPPED is not one: it ends the watch. */
static const struct {
    uint16_t event;
    const char *kind;
} KINDS[] = {
    {ZMQ_EVENT_CONNECTED, "connected"},             /* value: the file descriptor */
    {ZMQ_EVENT_CONNECT_DELAYED, "connect-delayed"}, /* value: unspecified */
    {ZMQ_EVENT_CONNECT_RETRIED, "connect-retried"}, /* value: ms until the next attempt */
    {ZMQ_EVENT_LISTENING, "listening"},             /* value: the file descriptor */
    {ZMQ_EVENT_BIND_FAILED, "bind-failed"},         /* value: an errno */
    {ZMQ_EVENT_ACCEPTED, "accepted"},               /* value: the file descriptor */
    {ZMQ_EVENT_ACCEPT_FAILED, "accept-failed"},     /* value: an errno */
    {ZMQ_EVENT_CLOSED, "closed"},                   /* value: the file descriptor */
    {ZMQ_EVENT_CLOSE_FAILED, "close-failed"},       /* value: an errno */
    {ZMQ_EVENT_DISCONNECTED, "disconnected"},       /* value: the file descriptor */
    {ZMQ_EVENT_HANDSHAKE_SUCCEEDED, "handshake-succeeded"},               /* value: 0 */
    {ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, "handshake-failed-no-detail"}, /* value: an errno */
    {ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, "handshake-failed-protocol"},   /* a ZMQ_PROTOCOL_ERROR_* */
    {ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, "handshake-failed-auth"},           /* the ZAP status code */
};

static const char *kind_of(uint16_t event)
{
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (KINDS[i].event == event)
            return KINDS[i].kind;
    return NULL;
}

typedef struct {
    void *pair;       /* our end of the monitor's inproc PAIR, owned by the watching thread */
    const char *flag; /* the `socket` field */
} watch_t;

/* The watching thread: one event at a time, as long as the PAIR can receive. Its blocking receive
   ends with ETERM when the role terminates the context; then it closes the PAIR, which is what
   zmq_ctx_term waits for. Signals are blocked here (monitor_socket), so no EINTR either. */
static void *watch_events(void *argument)
{
    watch_t watch = *(watch_t *)argument;
    free(argument);
    zmq_msg_t head, endpoint;
    zmq_msg_init(&head);
    zmq_msg_init(&endpoint);
    /* Frame 1: the event (16 bits) then its value (32 bits), in the machine's byte order;
       frame 2: the endpoint, a peer's or the bound one. */
    while (zmq_msg_recv(&head, watch.pair, 0) >= 0 && zmq_msg_more(&head) &&
           zmq_msg_recv(&endpoint, watch.pair, 0) >= 0) {
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&head) == 6) {
            memcpy(&event, zmq_msg_data(&head), sizeof event);
            memcpy(&value, (const char *)zmq_msg_data(&head) + 2, sizeof value);
        }
        if (event == ZMQ_EVENT_MONITOR_STOPPED) /* the socket was closed: nothing more comes */
            break;
        const char *kind = kind_of(event), *text = zmq_msg_data(&endpoint);
        size_t size = zmq_msg_size(&endpoint);
        char quoted[QUOTE_SIZE];
        if (!utf8_valid(text, size, NULL)) { /* a JSON string is UTF-8; an ipc path need not be */
            text = quote(text, size, quoted);
            size = strlen(quoted);
        }
        if (kind)
            emit("socket-event", "{s:s, s:s, s:s%, s:I}", "socket", watch.flag, "kind", kind, "endpoint", text,
                 size, "value", (json_int_t)value);
    }
    zmq_msg_close(&head);
    zmq_msg_close(&endpoint);
    zmq_close(watch.pair);
    return NULL;
}

/* [monitor] A socket's own events (listening, connected, accepted, disconnected, the handshake's
   success or failure) never arrive on the socket: libzmq publishes each on an inproc PAIR that
   we connect to, the socket's monitor. It is
   attached before bind or connect, so that `listening` and the first `connected` are seen. It is
   read on a thread of its own, one per watched socket, so that the role's loop is the same with
   and without --monitor; its lines share stdout with the role's, one whole line at a time, and
   none is written after `done` (emit() sees to both). */
void monitor_socket(void *context, void *socket, const char *flag, bool on)
{
    if (!on)
        return;
    static atomic_int monitors; /* an endpoint of its own per socket: the desk has several threads */
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://monitor.%s-%d", flag, atomic_fetch_add(&monitors, 1) + 1);
    if (zmq_socket_monitor(socket, endpoint, ZMQ_EVENT_ALL) < 0)
        fail("monitor", "zmq_socket_monitor: %s", zmq_strerror(errno));
    /* Connected here, before the watched socket's bind or connect: libzmq drops the events it
       publishes while no peer is connected. Linger 0: nothing is ever sent on it. */
    watch_t *watch = malloc(sizeof *watch);
    if (!watch)
        fail("memory", "out of memory");
    *watch = (watch_t){.pair = zmq_socket(context, ZMQ_PAIR), .flag = flag};
    int linger = 0;
    zmq_setsockopt(watch->pair, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(watch->pair, endpoint) < 0)
        fail("monitor", "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    /* From pthread_create on (the memory barrier libzmq asks for when a socket changes threads),
       the PAIR is the new thread's. It starts with SIGTERM and SIGINT blocked, so that they go to
       the role's thread, whose poll they interrupt. Detached: nobody joins it, the context's
       termination ends it. */
    sigset_t stop, mask;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, &mask);
    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int failed = pthread_create(&thread, &detached, watch_events, watch);
    pthread_attr_destroy(&detached);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (failed)
        fail("thread", "cannot start the monitor thread of --%s", flag);
}
