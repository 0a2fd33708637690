/* Security (examples/README.md, "Security: mechanisms, keys and passwords"): the --security flags
   and their keys and passwords, the mechanism's options on a socket, the ZAP handler that decides
   who passes a PLAIN or CURVE handshake, and the monitor that tells a client it was refused. */
#ifndef BTB_SECURITY_H
#define BTB_SECURITY_H

#include <stdbool.h>
#include <stdint.h>

#include "contract.h"

/* --- mechanisms, keys and passwords --------------------------------------------------------- */

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

/* --- ZAP: who may connect (examples/README.md, "ZAP: who may connect") ---------------------- */

/* The ZAP handler (RFC 27) of a server, or NULL when its mechanism admits anyone without one
   (null, and curve without --curve-clients). It binds inproc://zeromq.zap.01 in `context`, so it
   must start before the secure sockets bind. */
void *zap_start(void *context, const security_t *security);
/* Answers the ZAP request waiting on `handler` (if any, after all: recv_if_ready), reported as
   `authenticated` or `denied`. */
void zap_answer(void *handler, const security_t *security);

/* --- handshake failures (examples/README.md, "Handshake failures: the socket monitor") ------ */

/* A monitor of `socket`'s handshake failures: the inproc PAIR that libzmq's events arrive on,
   `name` telling the sockets apart. Started before the socket binds or connects. */
void *monitor_handshakes(void *context, void *socket, const char *name);
/* Reads one event of `monitor`: its failure ("no-detail", "protocol" or "auth") with the event's
   value (an errno, a ZMQ_PROTOCOL_ERROR_* code or the ZAP status), or NULL for another event or
   none. */
const char *handshake_failure(void *monitor, uint32_t *value);

#endif
