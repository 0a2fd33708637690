#include "security.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <zmq.h>

#include "frames.h"

/* --- mechanisms, keys and passwords --------------------------------------------------------- */

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

/* Options are read when a connection starts: the caller sets them before bind or connect. */
void secure_socket(void *socket, const security_t *security, bool as_server)
{
    int yes = 1;
    if (security->mechanism == SECURITY_CURVE) {
        /* [CURVE] The server holds its secret key and proves it in the handshake; a client holds a
           key pair of its own and a copy of the server's public key, learnt out of band. All of
           them are set before bind or connect, and from then on every frame travels encrypted. */
        if (as_server) {
            set_option(socket, ZMQ_CURVE_SERVER, &yes, sizeof yes, "ZMQ_CURVE_SERVER");
        } else {
            set_option(socket, ZMQ_CURVE_SERVERKEY, security->curve_server, Z85_KEY, "ZMQ_CURVE_SERVERKEY");
            set_option(socket, ZMQ_CURVE_PUBLICKEY, security->curve_public, Z85_KEY, "ZMQ_CURVE_PUBLICKEY");
        }
        /* 40 bytes long: libzmq reads the key as Z85 text, 32 would be raw bytes. */
        set_option(socket, ZMQ_CURVE_SECRETKEY, security->curve_secret, Z85_KEY, "ZMQ_CURVE_SECRETKEY");
    } else if (security->mechanism == SECURITY_PLAIN) {
        /* [PLAIN] A user name and a password, sent in clear: PLAIN authenticates, it does not
           encrypt. A PLAIN server admits anyone by itself; only its ZAP handler (below) checks
           the pair, which is why a plain server always runs one. */
        if (as_server) {
            set_option(socket, ZMQ_PLAIN_SERVER, &yes, sizeof yes, "ZMQ_PLAIN_SERVER");
        } else {
            set_option(socket, ZMQ_PLAIN_USERNAME, security->plain_user, strlen(security->plain_user),
                       "ZMQ_PLAIN_USERNAME");
            set_option(socket, ZMQ_PLAIN_PASSWORD, security->plain_password,
                       strlen(security->plain_password), "ZMQ_PLAIN_PASSWORD");
        }
    }
}

/* --- ZAP: who may connect ------------------------------------------------------------------- */

void *zap_start(void *context, const security_t *security)
{
    if (security->mechanism == SECURITY_NULL || (security->mechanism == SECURITY_CURVE && !security->curve_clients))
        return NULL;
    /* [ZAP] For every PLAIN or CURVE handshake, libzmq sends a request to the REP socket bound to
       inproc://zeromq.zap.01 in the same context, and waits for its answer (200 or 400); with none
       bound, it admits everyone. So the handler is bound before the sockets it guards, and the
       role's loop answers it first, before anything else it serves. */
    void *handler = zmq_socket(context, ZMQ_REP);
    int linger = 0;
    zmq_setsockopt(handler, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(handler, "inproc://zeromq.zap.01") < 0)
        fail("bind", "cannot bind the ZAP handler: %s", zmq_strerror(errno));
    return handler;
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

/* --- handshake failures --------------------------------------------------------------------- */

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
