/* web: the desk's page, HTTP/1.1 over a ZMQ_STREAM socket (examples/desk/PROTOCOL.md, "The web
   page: HTTP over a ZMQ_STREAM socket"). The desk's main thread owns it: one socket more in its
   poll, never shared with an agent. */
#ifndef BTB_WEB_H
#define BTB_WEB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "contract.h"

typedef struct web web_t;

/* The desk's handler of a page's command: `target` is "/follow", "/forget", "/chat" or "/value",
   `body` its whole body (UTF-8, at most 4096 bytes). It checks the body, reports the `command`
   event, hands the command to its agent and returns 204; or returns 400 or 409 with `why`. */
typedef int web_command_handler(void *desk, const char *target, const char *body, size_t size, char why[REASON_SIZE]);

/* Binds the STREAM socket to `endpoint` (tcp://, a wildcard port `*` allowed); NULL if the bind
   fails, errno saying why. */
web_t *web_open(void *context, const char *endpoint, bool monitor);
/* The endpoint bound, with the port a wildcard got; and the socket, for the desk's poll. */
const char *web_endpoint(const web_t *web);
void *web_socket(const web_t *web);
/* Reads what the browsers sent (at most 100 messages, none waited for) and answers every request
   that is whole; the page's commands go to `on_command`. */
void web_receive(web_t *web, int64_t now, web_command_handler *on_command, void *desk);
/* A line the desk wrote (or `progress`): kept for the replay, and sent to every event stream.
   `key` (NULL for none) names what a later line replaces: "tick SYMBOL", "applied KEY",
   "progress". */
void web_publish(web_t *web, const char *line, size_t size, const char *key);
/* The desk's `ready` is out: the start-up lines of the replay are complete. */
void web_serving(web_t *web);
/* The deadlines of `now`, and the closes that waited for room. */
void web_expire(web_t *web, int64_t now);
void web_close(web_t *web);

#endif
