/* chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md). */
#ifndef BTB_CHAT_H
#define BTB_CHAT_H

#include "contract.h"
#include "frames.h"
#include "names.h"
#include "security.h"

/* `btb chat server|client [--flag value]...`; argv[0] is the role. Returns the exit code. */
int chat_server(int argc, char **argv);
int chat_client(int argc, char **argv);

/* What another client of the chat server needs (the desk's chat agent). */
enum {
    CHAT_MAX_TEXT = 4096,    /* bytes of UTF-8 in a post */
    CHAT_MAX_MESSAGE = 8192, /* ZMQ_MAXMSGSIZE of every chat socket (chat.c says why) */
};
/* Post number N of a participant: printf(CHAT_POST_FORMAT, name, N). */
#define CHAT_POST_FORMAT u8"%s #%d: héllo wörld 🌍"

typedef struct {
    const char *requests, *broadcasts, *name;
    int timeout, count, clients, keepalive, retry, pace;
    bool monitor; /* --monitor on */
    security_t security;
} client_args;

typedef struct {
    client_args args;
    deadline_t deadline;
    void *context;      /* where Lazy Pirate makes each new REQ */
    void *sub, *req;
    void *monitor;      /* the first SUB's handshake watcher under plain or curve, until a rejoin; or NULL */
    json_t *roster;     /* the last roster seen, as reported: a JSON array of handles */
    json_t *peers;      /* the roster of step 4: whose posts we wait for, who must rejoin first */
    names_t received;   /* value: the highest post number received from the handle */
    json_t *texts;      /* handle -> {text: null}: the different texts received from it, at most
                           --count of them (the chat client's; NULL in the desk's agent) */
    int received_total;
    int64_t last_request;
    /* Restarts (the chat client's; the desk's agent has none): a roster broadcast listed us since
       our last join; the server forgot us, so rejoin. */
    bool listed, forgotten;
} client_t;

/* A reply to the client's request: its roster is taken in (reported as `roster` if it changed)
   and NULL returned, or the code of what makes it fatal (`rejected`, `malformed-reply`) with a
   `reason`. */
const char *client_on_reply(client_t *client, const frames_t *reply, char reason[REASON_SIZE]);
/* A broadcast: a roster, or a post (`received`); anything else is reported as
   `malformed-broadcast` and ignored. Returns which it was. */
typedef enum { MALFORMED_BROADCAST, ROSTER_BROADCAST, POST_BROADCAST } broadcast_t;
broadcast_t client_on_broadcast(client_t *client, const frames_t *broadcast);

#endif
