/* query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md). */
#ifndef BTB_QUERY_H
#define BTB_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "contract.h"
#include "frames.h"

/* `btb query engine|facade|derive [--flag value]...`; argv[0] is the role. Returns the exit code. */
int query_engine(int argc, char **argv);
int query_facade(int argc, char **argv);
int query_derive(int argc, char **argv);

/* What another facade needs (the desk's query agent). */
enum {
    QUERY_MAX_MESSAGE = 1024, /* ZMQ_MAXMSGSIZE of every query socket (query.c says why) */
    QUERY_MAX_KEY = 255,      /* bytes of a key, a subtree, the properties */
    QUERY_MAX_VALUE = 256,
    QUERY_MAX_FRAMES = 7, /* frames kept of a message received (recv_at_most) */
};
/* A key: "/" segment ("/" segment)..., a segment 1 or more of A-Z a-z 0-9 . _ -. */
bool is_key(const char *data, size_t size);
/* A key is in a subtree when the subtree is a prefix of it (the empty subtree holds every key). */
bool in_subtree(const char *key, size_t size, const char *subtree, size_t subtree_size);
/* Every byte in lowercase hex, as events show values; a sequence as a JSON number. */
json_t *json_hex(const void *data, size_t size);
json_t *json_u64(uint64_t number);

/* The map: keys in order, so that the keys of a subtree are side by side. */
typedef struct {
    size_t key_size, value_size;
    char key[QUERY_MAX_KEY], value[QUERY_MAX_VALUE];
    uint64_t sequence; /* of the update that last set it (the engine's map) */
    int64_t expires;   /* now_ms() when its ttl runs out; 0: never */
} entry_t;
typedef struct {
    entry_t **entry; /* sorted by key bytes */
    size_t count, room;
} map_t;

typedef struct {
    const char *bytes; /* in the --subtrees text; the empty subtree (`all`) is the whole map */
    size_t size;
    bool waiting;       /* asked for, and its KTHXBAI not in yet */
    uint64_t watermark; /* its KTHXBAI's sequence */
    int keys;           /* its KVSYNCs */
} subtree_t;
typedef struct {
    subtree_t *tree;
    size_t count;
} subtrees_t;
/* A flag parser (contract.h): a comma-separated list of subtrees, `all` the whole map; the list
   is allocated. */
flag_parser parse_subtrees;

typedef struct {
    const char *snapshot, *updates, *collector, *name;
    subtrees_t subtrees;
    int count, writes, ttl, silence, timeout; /* silence: the facade role's, not the desk's */
} facade_args;

/* Write N (1 to --writes): the key /facades/NAME/N and the value NAME/N, and what came back. */
typedef struct {
    char key[64], value[48];
    bool echoed, expired; /* came back as a KVPUB; deleted since by the engine (a ttl) */
} write_t;

/* The facade's map and what it still waits for. */
typedef struct {
    facade_args args;
    map_t map;
    size_t waiting;       /* subtrees whose KTHXBAI is not in yet */
    uint64_t first, last; /* the first and the last KVPUB applied */
    int applied, discarded;
    bool sees_own;   /* whether its subtrees hold its own keys */
    write_t *writes; /* [1] to [--writes] */
    int echoes;
    bool delete_sent, deleted;
} facade_t;

/* Subscribes the SUB to every subtree, then to HUGZ; returns the subtrees as a JSON array. */
json_t *facade_subscribe(void *updates, const subtrees_t *trees);
/* Sends an ICANHAZ? for every subtree at once on the DEALER. */
void facade_request_snapshots(facade_t *facade, void *snapshot);
/* A reply on the DEALER while the snapshots come in: a KVSYNC, or a KTHXBAI (`synced`). */
void facade_on_snapshot(facade_t *facade, const frames_t *message);
/* A message on the SUB once every snapshot is in: a HUGZ, or a KVPUB, applied (facade->applied
   counts it) or discarded by the late-joiner rule. */
void facade_on_update(facade_t *facade, const frames_t *message);
/* Sends a KVSET on the XPUB to the collector, reported as `wrote`. */
void facade_write(void *collector, const char *key, size_t key_size, const char *value, size_t value_size, int ttl);
/* The fields of the facade's `done`: sequence, first, map, applied, discarded. */
json_t *facade_summary(const facade_t *facade);
void facade_free(facade_t *facade);

#endif
