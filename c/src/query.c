/* query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).

   The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
   publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
   publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an
   XPUB. */
#include "query.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <jansson.h>
#include <zmq.h>

#include "contract.h"
#include "frames.h"
#include "monitor.h"
#include "names.h"
#include "ticker.h"

/* [max size] ZMQ_MAXMSGSIZE, 1024 bytes on every socket, set before bind or connect: the largest
   legal frame is a 256-byte value (a key, a subtree, properties or a routing id: 255); between 257
   and 1024 bytes it reaches us and is reported, above that the library drops it with the
   sender's connection, before allocating it. */
static const int64_t MAX_MESSAGE = QUERY_MAX_MESSAGE;
enum {
    MAX_KEY = QUERY_MAX_KEY, /* bytes of a key, a subtree, the properties */
    MAX_VALUE = QUERY_MAX_VALUE,
    MAX_FRAMES = QUERY_MAX_FRAMES, /* frames kept of a message (5, a routing id, one to tell "more"); the rest are dropped */
    MAX_TTL = 86400,
};
static const char NAME_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
static const char SEGMENT_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
static const unsigned char ZERO[8]; /* a sequence of no meaning: our KVSETs' */

/* --- the protocol's pieces ------------------------------------------------------------------ */

static bool in_set(const char *set, size_t set_size, char c)
{
    return memchr(set, c, set_size) != NULL;
}

/* "/" segment ("/" segment)..., a segment being 1 or more of A-Z a-z 0-9 . _ -, and a final "/"
   when `subtree`: a key, or a subtree that is not the whole map. */
static bool is_path(const char *data, size_t size, bool subtree)
{
    if (size < 2 || size > MAX_KEY || data[0] != '/' || (data[size - 1] == '/') != subtree)
        return false;
    for (size_t i = 1; i < size; i++)
        if (data[i] == '/' ? data[i - 1] == '/' : !in_set(SEGMENT_CHARS, sizeof SEGMENT_CHARS - 1, data[i]))
            return false;
    return true;
}

bool is_key(const char *data, size_t size)
{
    return is_path(data, size, false);
}

static bool is_subtree(const char *data, size_t size)
{
    return size == 0 || is_path(data, size, true);
}

/* A key is in a subtree when the subtree is a prefix of it (the empty subtree holds every key). */
bool in_subtree(const char *key, size_t size, const char *subtree, size_t subtree_size)
{
    return subtree_size <= size && !memcmp(key, subtree, subtree_size);
}

/* 1 to 86400 in decimal, without a leading zero; 0 for anything else. */
static long seconds(const char *text, size_t size)
{
    long number = 0;
    if (size < 1 || size > 5 || text[0] == '0')
        return 0;
    for (size_t i = 0; i < size; i++) {
        if (text[i] < '0' || text[i] > '9')
            return 0;
        number = number * 10 + (text[i] - '0');
    }
    return number <= MAX_TTL ? number : 0;
}

/* The `ttl` property in seconds, 0 for none; -1 when the properties are not `name=value\n` lines
   (a name of 1 to 32 of A-Z a-z 0-9 _ -, a value of printable ASCII) or hold a ttl that is not
   one decimal number of 1 to 86400, or two ttls. */
static long ttl_of(const char *data, size_t size)
{
    long ttl = 0;
    if (size > MAX_KEY)
        return -1;
    for (size_t at = 0; at < size;) {
        size_t name = at;
        while (at < size && in_set(NAME_CHARS, sizeof NAME_CHARS - 1, data[at]))
            at++;
        size_t name_size = at - name;
        if (name_size < 1 || name_size > MAX_NAME || at == size || data[at++] != '=')
            return -1;
        size_t value = at;
        while (at < size && data[at] >= 0x20 && data[at] <= 0x7e) /* bytes above 0x7f are negative */
            at++;
        if (at == size || data[at] != '\n')
            return -1;
        size_t value_size = at++ - value;
        bool is_ttl = name_size == 3 && !memcmp(data + name, "ttl", 3);
        if (is_ttl && (ttl || !(ttl = seconds(data + value, value_size))))
            return -1; /* a second ttl, or one that is not 1 to 86400 */
    }
    return ttl;
}

/* A message for a reason, from frame `first` on: its frame sizes, and at most MAX_QUOTE bytes of
   that frame. */
enum { SHAPE_SIZE = 8 * MAX_FRAMES + QUOTE_SIZE + 32 };
static const char *shape(const frames_t *message, size_t first, char text[SHAPE_SIZE])
{
    char quoted[QUOTE_SIZE] = "''";
    size_t used = (size_t)snprintf(text, SHAPE_SIZE, "[");
    for (size_t i = first; i < message->count; i++)
        used += (size_t)snprintf(text + used, SHAPE_SIZE - used, "%s%zu", i > first ? ", " : "",
                                 frame_size(message, i));
    if (first < message->count)
        quote(frame_data(message, first), frame_size(message, first), quoted);
    snprintf(text + used, SHAPE_SIZE - used, "] bytes, beginning %s", quoted);
    return text;
}

/* Why a KVSYNC, KVPUB or KVSET (5 frames) is malformed, written in `why`; NULL if it is not. */
enum { WHY_SIZE = 256 };
static const char *check_kv(const frames_t *message, char why[WHY_SIZE])
{
    char text[QUOTE_SIZE];
    if (message->count != 5)
        snprintf(why, WHY_SIZE, "expected 5 frames, got %zu%s", message->count,
                 message->count == MAX_FRAMES ? " or more" : "");
    else if (!is_key(frame_data(message, 0), frame_size(message, 0)))
        snprintf(why, WHY_SIZE, "not a key: %s", quote(frame_data(message, 0), frame_size(message, 0), text));
    else if (frame_size(message, 1) != 8)
        snprintf(why, WHY_SIZE, "a sequence of %zu bytes, not 8", frame_size(message, 1));
    else if (frame_size(message, 2) != 0 && frame_size(message, 2) != 16)
        snprintf(why, WHY_SIZE, "a UUID of %zu bytes, not 0 or 16", frame_size(message, 2));
    else if (ttl_of(frame_data(message, 3), frame_size(message, 3)) < 0)
        snprintf(why, WHY_SIZE, "properties that are not name=value lines with at most one ttl of 1 to 86400: %s",
                 quote(frame_data(message, 3), frame_size(message, 3), text));
    else if (frame_size(message, 4) > MAX_VALUE)
        snprintf(why, WHY_SIZE, "a value of %zu bytes, more than %d", frame_size(message, 4), MAX_VALUE);
    else
        return NULL;
    return why;
}

/* Every byte in lowercase hex, as events show values (frames.h's hex stops at 16 bytes). */
json_t *json_hex(const void *data, size_t size)
{
    char text[2 * MAX_VALUE + 1] = "";
    for (size_t i = 0; i < size; i++)
        snprintf(text + 2 * i, 3, "%02x", ((const unsigned char *)data)[i]);
    return json_string(text);
}

/* A sequence as a JSON number. jansson's integers are signed 64-bit: one that a peer made up
   above 2^63 - 1 is shown as a real. */
json_t *json_u64(uint64_t number)
{
    return number <= INT64_MAX ? json_integer((json_int_t)number) : json_real((double)number);
}

static void set_option(void *socket, int option, int value)
{
    if (zmq_setsockopt(socket, option, &value, sizeof value) < 0)
        fail("socket", "zmq_setsockopt: %s", zmq_strerror(errno));
}

/* --- the map: keys in order, so that the keys of a subtree are side by side ------------------- */

/* Where `key` is, or belongs: the first entry not below it. A subtree's keys start there. */
static size_t map_lower(const map_t *map, const char *key, size_t size)
{
    size_t low = 0, high = map->count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (bytes_compare(map->entry[middle]->key, map->entry[middle]->key_size, key, size) < 0)
            low = middle + 1;
        else
            high = middle;
    }
    return low;
}

static entry_t *map_get(const map_t *map, const char *key, size_t size)
{
    size_t at = map_lower(map, key, size);
    entry_t *entry = at < map->count ? map->entry[at] : NULL;
    return entry && !bytes_compare(entry->key, entry->key_size, key, size) ? entry : NULL;
}

/* Sets `key` to `value`, with no expiry, or deletes it for an empty value. */
static void map_set(map_t *map, const char *key, size_t key_size, const char *value, size_t value_size,
                    uint64_t sequence)
{
    size_t at = map_lower(map, key, key_size);
    bool found = at < map->count && !bytes_compare(map->entry[at]->key, map->entry[at]->key_size, key, key_size);
    if (!value_size) {
        if (found) {
            free(map->entry[at]);
            map->count--;
            memmove(&map->entry[at], &map->entry[at + 1], (map->count - at) * sizeof *map->entry);
        }
        return;
    }
    if (!found) {
        if (map->count == map->room) {
            map->room = map->room ? 2 * map->room : 64;
            map->entry = realloc(map->entry, map->room * sizeof *map->entry);
        }
        entry_t *entry = map->entry ? malloc(sizeof *entry) : NULL;
        if (!entry)
            fail("memory", "out of memory");
        memmove(&map->entry[at + 1], &map->entry[at], (map->count - at) * sizeof *map->entry);
        map->entry[at] = entry;
        map->count++;
        entry->key_size = key_size;
        memcpy(entry->key, key, key_size);
    }
    entry_t *entry = map->entry[at];
    entry->value_size = value_size;
    memcpy(entry->value, value, value_size);
    entry->sequence = sequence;
    entry->expires = 0;
}

static void map_free(map_t *map)
{
    for (size_t i = 0; i < map->count; i++)
        free(map->entry[i]);
    free(map->entry);
    *map = (map_t){0};
}

/* --- the map fed by ticks ------------------------------------------------------------------- */

/* floor(price × 100 + 0.5) of a price's binary64 bits: two operations, each rounded to binary64
   (the volatile keeps a compiler from fusing them into one multiply-add), and an exact floor;
   -1 when the price is not finite, negative or above 10^9. */
static int64_t tick_cents(uint64_t bits)
{
    double price;
    memcpy(&price, &bits, sizeof price);
    if (!isfinite(price) || !(price >= 0 && price <= 1e9))
        return -1;
    volatile double scaled = price * 100;
    return (int64_t)(scaled + 0.5); /* not negative: the conversion's truncation is the floor */
}

/* Per symbol, the highest and lowest price in cents and the number of ticks. */
typedef struct {
    int64_t high, low, ticks;
} stats_t;
typedef struct {
    char key[MAX_KEY + 1], value[32];
} derived_t;

/* The four derived keys of one tick of `symbol` and their new values, in the table's order. */
static void derive_keys(stats_t *stats, const char *symbol, int64_t cents, derived_t keys[4])
{
    if (!stats->ticks++)
        stats->high = stats->low = cents;
    stats->high = cents > stats->high ? cents : stats->high;
    stats->low = cents < stats->low ? cents : stats->low;
    snprintf(keys[0].key, sizeof keys[0].key, "/prices/%s", symbol);
    snprintf(keys[1].key, sizeof keys[1].key, "/stats/%s/high", symbol);
    snprintf(keys[2].key, sizeof keys[2].key, "/stats/%s/low", symbol);
    snprintf(keys[3].key, sizeof keys[3].key, "/stats/%s/ticks", symbol);
    int64_t prices[3] = {cents, stats->high, stats->low};
    for (int i = 0; i < 3; i++) /* cents / 100, ".", cents mod 100 in two digits */
        snprintf(keys[i].value, sizeof keys[i].value, "%lld.%02lld", (long long)(prices[i] / 100),
                 (long long)(prices[i] % 100));
    snprintf(keys[3].value, sizeof keys[3].value, "%lld", (long long)stats->ticks);
}

/* Only what changes is an update: a key not in the map differs. */
static bool changes(const map_t *map, const derived_t *derived)
{
    const entry_t *entry = map_get(map, derived->key, strlen(derived->key));
    return !entry || entry->value_size != strlen(derived->value) ||
           memcmp(entry->value, derived->value, entry->value_size);
}

typedef struct {
    symbol_t symbol;
    const char *prices; /* checked: 16 hex digits, then "," or the end */
    uint64_t sequence;
} derive_args;

static const char *parse_prices(const char *text, void *value)
{
    for (const char *part = text;; part += 17) {
        if (strspn(part, "0123456789abcdefABCDEF") != 16 || (part[16] && part[16] != ','))
            return "prices are 8-byte binary64 values in hex";
        if (!part[16])
            break;
    }
    *(const char **)value = text;
    return NULL;
}

int query_derive(int argc, char **argv)
{
    derive_args args = {0};
    const flag_t flags[] = {
        REQUIRED_FLAG("symbol", parse_symbol, args.symbol),
        REQUIRED_FLAG("prices", parse_prices, args.prices),
        PARSED_FLAG("sequence", parse_u64, args.sequence),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    map_t map = {0};
    stats_t stats = {0};
    for (const char *part = args.prices;; part += 17) {
        uint64_t bits = strtoull(part, NULL, 16); /* stops at the comma */
        int64_t cents = tick_cents(bits);
        if (cents < 0)
            fail("malformed-tick", "price %016llx cannot be cents", (unsigned long long)bits);
        derived_t keys[4];
        derive_keys(&stats, args.symbol, cents, keys);
        for (int i = 0; i < 4; i++) {
            if (!changes(&map, &keys[i]))
                continue;
            size_t key_size = strlen(keys[i].key), value_size = strlen(keys[i].value);
            map_set(&map, keys[i].key, key_size, keys[i].value, value_size, ++args.sequence);
            unsigned char sequence[8];
            put_be64(sequence, args.sequence);
            emit("encoded", "{s:[o,o,s,s,o]}", "frames", json_hex(keys[i].key, key_size),
                 json_hex(sequence, 8), "", "", json_hex(keys[i].value, value_size));
        }
        if (!part[16])
            break;
    }
    emit("done", "{}");
    map_free(&map);
    return 0;
}

/* --- engine --------------------------------------------------------------------------------- */

typedef struct {
    const char *snapshot, *updates, *collector, *ticks, *name;
    symbols_t symbols;
    int hugz, max_keys, timeout;
} engine_args;

/* The map (key -> value, sequence, expiry), the sockets it answers on, and the counters. */
typedef struct {
    engine_args args;
    void *snapshots, *updates; /* ROUTER, XPUB */
    map_t map;
    stats_t stats[MAX_SYMBOLS]; /* of each symbol of --symbols */
    uint64_t sequence;
    int served, abandoned;
    int64_t last_hugz; /* now_ms(): a HUGZ goes out every --hugz ms from it */
    unsigned char uuid[16]; /* who we are: drawn at start, so an engine started again has another */
} engine_t;

/* The RFC's HUGZ carries 0 and no UUID; ours the sequence of our last update (0 before the first),
   as the Guide's clonesrv, and our UUID: a facade that reads a sequence below what it has seen, or
   another UUID than the one it synced with, knows the engine restarted. */
static void hugz(engine_t *engine)
{
    unsigned char sequence[8];
    put_be64(sequence, engine->sequence);
    const part_t frames[] = {{"HUGZ", 4}, {sequence, 8}, {engine->uuid, 16}, {"", 0}, {"", 0}};
    send_parts(engine->updates, frames, 5); /* XPUB never blocks: a full queue loses it */
    engine->last_hugz = now_ms();
}

/* One update: the next sequence, the map, the KVPUB to every subscriber, the event. A KVPUB of a
   KVSET carries its UUID and properties (frames 2 and 3 of `kvset`); the others carry neither. */
static void update(engine_t *engine, const char *key, size_t key_size, const char *value, size_t value_size,
                   const char *cause, const frames_t *kvset)
{
    char copy[MAX_KEY]; /* `key` may be the entry's own, which a delete frees */
    memcpy(copy, key, key_size);
    engine->sequence++;
    map_set(&engine->map, copy, key_size, value, value_size, engine->sequence);
    unsigned char sequence[8];
    put_be64(sequence, engine->sequence);
    const part_t kvpub[] = {
        {copy, key_size},
        {sequence, 8},
        {kvset ? frame_data(kvset, 2) : "", kvset ? frame_size(kvset, 2) : 0},
        {kvset ? frame_data(kvset, 3) : "", kvset ? frame_size(kvset, 3) : 0},
        {value, value_size},
    };
    send_parts(engine->updates, kvpub, 5);
    emit("update", "{s:I, s:s%, s:o, s:s}", "sequence", (json_int_t)engine->sequence, "key", copy, key_size,
         "value", json_hex(value, value_size), "cause", cause);
}

/* Sends one message to the peer `routing_id` through ROUTER; NULL when it went out, else why not.
   With ROUTER_MANDATORY the first frame fails, without waiting, when the peer is gone (EHOSTUNREACH)
   or its queue is full (EAGAIN), where ROUTER would otherwise drop the message in silence. The high-water mark counts whole messages: once the first frame is
   in, so is the rest. */
static const char *send_to(void *router, zmq_msg_t *routing_id, const part_t *parts, size_t count)
{
    while (zmq_send(router, zmq_msg_data(routing_id), zmq_msg_size(routing_id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (errno == EHOSTUNREACH)
            return "gone";
        if (errno == EAGAIN)
            return "full";
        if (errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
    }
    send_parts(router, parts, count);
    return NULL;
}

static void abandon(engine_t *engine, const char *subtree, size_t size, size_t sent, const char *why)
{
    engine->abandoned++;
    emit("abandoned", "{s:s%, s:I, s:s}", "subtree", subtree, size, "keys", (json_int_t)sent, "why", why);
}

/* [routing id, ICANHAZ?, subtree]: a KVSYNC for every key of the subtree, then the KTHXBAI. */
static void on_icanhaz(engine_t *engine, const frames_t *message)
{
    char text[SHAPE_SIZE];
    if (message->count != 3 || !frame_is(message, 1, "ICANHAZ?") ||
        !is_subtree(frame_data(message, 2), frame_size(message, 2))) {
        emit_error("malformed-icanhaz", "not [ICANHAZ?, subtree]: %s", shape(message, 1, text));
        return;
    }
    zmq_msg_t *peer = message->frame[0];
    const char *subtree = frame_data(message, 2), *why;
    size_t size = frame_size(message, 2), sent = 0;
    uint64_t highest = 0;
    for (size_t i = map_lower(&engine->map, subtree, size); i < engine->map.count; i++, sent++) {
        const entry_t *entry = engine->map.entry[i];
        if (!in_subtree(entry->key, entry->key_size, subtree, size))
            break;
        unsigned char sequence[8];
        put_be64(sequence, entry->sequence); /* the key's own: the update that last set it */
        const part_t kvsync[] = {{entry->key, entry->key_size}, {sequence, 8}, {"", 0}, {"", 0},
                                 {entry->value, entry->value_size}};
        if ((why = send_to(engine->snapshots, peer, kvsync, 5))) {
            abandon(engine, subtree, size, sent, why);
            return;
        }
        highest = entry->sequence > highest ? entry->sequence : highest;
    }
    unsigned char sequence[8];
    put_be64(sequence, highest);
    const part_t kthxbai[] = {{"KTHXBAI", 7}, {sequence, 8}, {"", 0}, {"", 0}, {subtree, size}};
    if ((why = send_to(engine->snapshots, peer, kthxbai, 5))) {
        abandon(engine, subtree, size, sent, why);
        return;
    }
    engine->served++;
    emit("snapshot", "{s:s%, s:I, s:I, s:I}", "subtree", subtree, size, "keys", (json_int_t)sent, "sequence",
         (json_int_t)highest, "at", (json_int_t)engine->sequence);
}

static void on_kvset(engine_t *engine, const frames_t *message)
{
    char why[WHY_SIZE], text[QUOTE_SIZE];
    if (check_kv(message, why)) {
        emit_error("malformed-kvset", "%s", why);
        return;
    }
    const char *key = frame_data(message, 0), *value = frame_data(message, 4);
    size_t key_size = frame_size(message, 0), value_size = frame_size(message, 4);
    bool new_key = value_size && !map_get(&engine->map, key, key_size);
    if (new_key && engine->map.count >= (size_t)engine->args.max_keys) {
        emit_error("map-full", "%s would be key %lld", quote(key, key_size, text), engine->args.max_keys + 1LL);
        return;
    }
    /* Every valid write is an update, even one that changes nothing: its writer sees it come back. */
    update(engine, key, key_size, value, value_size, "kvset", message);
    long ttl = ttl_of(frame_data(message, 3), frame_size(message, 3));
    if (ttl && value_size) /* the next update of the key cancels it (map_set) */
        map_get(&engine->map, key, key_size)->expires = now_ms() + ttl * 1000;
}

/* A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price]. */
static void on_tick(engine_t *engine, const frames_t *message)
{
    char text[SHAPE_SIZE];
    if (message->count != 4 || !is_topic(frame_data(message, 0), frame_size(message, 0)) ||
        frame_size(message, 1) != 8 || frame_size(message, 2) != 8 || frame_size(message, 3) != 8) {
        emit_error("malformed-tick", "not a tick: %s", shape(message, 0, text));
        return;
    }
    const char *symbol = frame_data(message, 0); /* a C string: the topic ends with its NUL */
    int index = symbol_index(&engine->args.symbols, symbol);
    int64_t cents = tick_cents(get_be64(frame_data(message, 3)));
    if (index < 0 || cents < 0) {
        emit_error("malformed-tick", "%s: not subscribed, or price %s cannot be cents", symbol,
                   hex(frame_data(message, 3), 8, text));
        return;
    }
    derived_t keys[4];
    derive_keys(&engine->stats[index], symbol, cents, keys);
    for (int i = 0; i < 4; i++)
        if (changes(&engine->map, &keys[i]))
            update(engine, keys[i].key, strlen(keys[i].key), keys[i].value, strlen(keys[i].value), "tick", NULL);
}

/* A subscription frame: 1 (subscribe) or 0 (unsubscribe), then the topic. */
/* [slow joiner] A facade's subscriptions reach this XPUB some time after it connects, and an
   update published before then is lost for it. The facade subscribes to its subtrees and then to
   HUGZ, in that order on one connection; so the engine answers a subscription to a prefix of HUGZ
   with a HUGZ at once, and the facade that reads it knows every subscription is live. */
static void on_subscription(engine_t *engine, zmq_msg_t *frame)
{
    const unsigned char *data = zmq_msg_data(frame);
    size_t size = zmq_msg_size(frame);
    char text[QUOTE_SIZE];
    if (!size || data[0] > 1)
        emit_error("malformed-subscription", "not a subscription: %s", quote(data, size, text));
    else if (data[0] == 1 && size - 1 <= 4 && !memcmp(data + 1, "HUGZ", size - 1))
        hugz(engine); /* at once: the subscriber learns that its subscriptions are in place */
}

/* Every key whose ttl ran out is deleted, the earliest first, then by key. */
static void expire(engine_t *engine, int64_t now)
{
    for (;;) {
        const entry_t *first = NULL; /* scanning in key order: the first of the earliest */
        for (size_t i = 0; i < engine->map.count; i++) {
            const entry_t *entry = engine->map.entry[i];
            if (entry->expires && entry->expires <= now && (!first || entry->expires < first->expires))
                first = entry;
        }
        if (!first)
            return;
        update(engine, first->key, first->key_size, "", 0, "expired", NULL);
    }
}

/* Milliseconds until the next HUGZ or expiry is due. */
static long next_timer(const engine_t *engine)
{
    int64_t due = engine->last_hugz + engine->args.hugz;
    for (size_t i = 0; i < engine->map.count; i++)
        if (engine->map.entry[i]->expires && engine->map.entry[i]->expires < due)
            due = engine->map.entry[i]->expires;
    int64_t wait = due - now_ms();
    return wait > 0 ? (long)wait : 0;
}

typedef void handler_t(engine_t *engine, const frames_t *message);

/* One message of a socket the poll found ready, if there is one after all, to its handler. */
/* [multipart] A message arrives whole or not at all, however many frames the peer chose: every
   frame is here once the first is, so receiving them never waits. At most MAX_FRAMES are kept, the
   rest dropped as they come; each handler checks the count before it reads a frame. */
static void serve(engine_t *engine, const zmq_pollitem_t *item, handler_t *handler)
{
    frames_t message;
    if ((item->revents & ZMQ_POLLIN) && recv_at_most(item->socket, &message, MAX_FRAMES)) {
        handler(engine, &message);
        frames_close(&message);
    }
}

int query_engine(int argc, char **argv)
{
    engine_t engine = {
        .args = {
            .snapshot = "tcp://127.0.0.1:5556",
            .updates = "tcp://127.0.0.1:5557",
            .collector = "tcp://127.0.0.1:5558",
            .ticks = "",
            .name = "engine",
            .hugz = 1000,
            .max_keys = 10000,
        },
    };
    engine_args *args = &engine.args;
    bool monitor = false;
    parse_symbols("AAPL,GOOG,GOOGL,MSFT,IBM", &args->symbols); /* the default, parsed like the flag */
    const flag_t flags[] = {
        TEXT_FLAG("snapshot", args->snapshot),
        TEXT_FLAG("updates", args->updates),
        TEXT_FLAG("collector", args->collector),
        TEXT_FLAG("ticks", args->ticks),
        PARSED_FLAG("name", parse_name, args->name),
        PARSED_FLAG("symbols", parse_symbols, args->symbols),
        NUMBER_FLAG("hugz", args->hugz, 1),
        NUMBER_FLAG("max-keys", args->max_keys, 1),
        NUMBER_FLAG("timeout", args->timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;

    /* 16 random bytes from the kernel; at most 256 are never cut short by a signal. */
    if (getrandom(engine.uuid, sizeof engine.uuid, 0) != (ssize_t)sizeof engine.uuid)
        fail("random", "getrandom: %s", strerror(errno));
    stop_on_signals();
    deadline_t deadline = deadline_start(args->timeout);
    void *context = zmq_ctx_new();
    /* [ROUTER] Every request arrives with the routing id of its peer in front, and every reply is
       routed by the routing id we put in front; what it cannot route, it drops in silence.
       MANDATORY: fail instead (EHOSTUNREACH, or EAGAIN for a full queue), and abandon that
       snapshot. */
    engine.snapshots = zmq_socket(context, ZMQ_ROUTER);
    set_option(engine.snapshots, ZMQ_ROUTER_MANDATORY, 1);
    /* [HWM] The send high-water mark bounds each peer's queue; ROUTER_MANDATORY makes a full one
       fail the send (EAGAIN) where ROUTER would drop. --max-keys + 1 leaves room for a whole
       snapshot per peer: libzmq learns that a peer has read its messages only in batches, so a
       loop of sends would find 1000 (the default) "full" at once. The other queues keep 1000, at
       which the XPUB drops updates for a facade that falls that far behind; a DEALER at its mark
       would block instead (mute), which the facade's few ICANHAZ? never reach. */
    set_option(engine.snapshots, ZMQ_SNDHWM, args->max_keys < INT_MAX ? args->max_keys + 1 : INT_MAX);
    /* [XPUB] A PUB on the wire that hands us every subscription as a message (first byte 1 or 0),
       here verbose: repeated ones included, so that each new subscriber to HUGZ gets its HUGZ. */
    engine.updates = zmq_socket(context, ZMQ_XPUB);
    set_option(engine.updates, ZMQ_XPUB_VERBOSE, 1);
    /* [SUB] The collector: a prefix filter on frame 0, "" for every write of every facade. */
    void *collector = zmq_socket(context, ZMQ_SUB);
    zmq_setsockopt(collector, ZMQ_SUBSCRIBE, "", 0);
    void *ticks = *args->ticks ? zmq_socket(context, ZMQ_SUB) : NULL;
    void *sockets[] = {engine.snapshots, engine.updates, collector, ticks};
    int count = ticks ? 4 : 3;
    const char *const flag_names[] = {"snapshot", "updates", "collector", "ticks"};
    for (int i = 0; i < count; i++) {
        /* [linger] 0: updates are a stream, and snapshots are asked for again: closing a socket
           drops what it still holds. */
        limit_socket(sockets[i], 0, MAX_MESSAGE);
        monitor_socket(context, sockets[i], flag_names[i], monitor);
    }
    char bound[3][ENDPOINT_SIZE];
    bind_socket(engine.snapshots, args->snapshot, bound[0]);
    bind_socket(engine.updates, args->updates, bound[1]);
    bind_socket(collector, args->collector, bound[2]);
    if (ticks) {
        connect_socket(ticks, args->ticks);
        /* The symbols first, then the @name the publisher counts us by: after connect, so that
           they go out in this order (the ticker subscriber's [SUB] says why). */
        for (size_t i = 0; i < args->symbols.count; i++)
            zmq_setsockopt(ticks, ZMQ_SUBSCRIBE, args->symbols.name[i], topic_size(args->symbols.name[i]));
        char me[1 + MAX_NAME];
        me[0] = '@';
        memcpy(me + 1, args->name, strlen(args->name));
        zmq_setsockopt(ticks, ZMQ_SUBSCRIBE, me, 1 + strlen(args->name));
    }
    emit("ready", "{s:s, s:s, s:s}", "snapshot", bound[0], "updates", bound[1], "collector", bound[2]);

    engine.last_hugz = now_ms();
    zmq_pollitem_t items[4]; /* ROUTER, XPUB, the collector, the ticks (with --ticks): the order served */
    for (int i = 0; i < 4; i++)
        items[i] = (zmq_pollitem_t){.socket = sockets[i], .events = ZMQ_POLLIN};
    while (!stop_requested()) {
        if (deadline_expired(&deadline))
            fail("timeout", "still serving after %d ms", args->timeout);
        /* [poll] Every socket at once, with a timeout that ends at the next HUGZ or expiry (never
           past the deadline); a signal's EINTR is a poll that found nothing. Then one message from
           each socket that has one, received without waiting: a flood on one cannot starve the
           others, and POLLIN is only a hint. */
        poll_all(items, count, deadline_cap(&deadline, next_timer(&engine)));
        serve(&engine, &items[0], on_icanhaz);
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        /* One frame at a time, whatever its ZMQ_RCVMORE: XPUB passes each subscription on as a
           frame of its own, and a peer's other frames keep their "more" flag. */
        if ((items[1].revents & ZMQ_POLLIN) && frame_if_ready(engine.updates, &frame))
            on_subscription(&engine, &frame);
        zmq_msg_close(&frame);
        serve(&engine, &items[2], on_kvset);
        serve(&engine, &items[3], on_tick); /* never ready without --ticks: not polled */
        int64_t now = now_ms(); /* the timers: expiries, then the HUGZ */
        expire(&engine, now);
        if (now - engine.last_hugz >= args->hugz)
            hugz(&engine); /* every --hugz ms, busy or not: a facade that hears nothing knows we are gone */
    }

    emit("done", "{s:I, s:I, s:i, s:i}", "sequence", (json_int_t)engine.sequence, "keys",
         (json_int_t)engine.map.count, "snapshots", engine.served, "abandoned", engine.abandoned);
    for (int i = 0; i < count; i++)
        zmq_close(sockets[i]);
    zmq_ctx_term(context);
    map_free(&engine.map);
    return 0;
}

/* --- facade --------------------------------------------------------------------------------- */

static const char *parse_segment(const char *text, void *value)
{
    size_t size = strlen(text);
    if (size < 1 || size > MAX_NAME || strspn(text, NAME_CHARS) != size)
        return "a facade name is 1 to 32 of A-Z a-z 0-9 _ -";
    *(const char **)value = text;
    return NULL;
}

const char *parse_subtrees(const char *text, void *value)
{
    subtrees_t *list = value;
    list->count = 0;
    list->tree = calloc(strlen(text) + 1, sizeof *list->tree); /* room for every part */
    if (!list->tree)
        return "out of memory";
    for (const char *part = text;; part += strcspn(part, ",") + 1) {
        subtree_t tree = {.bytes = part, .size = strcspn(part, ",")};
        if (tree.size == 3 && !memcmp(part, "all", 3))
            tree = (subtree_t){.bytes = ""}; /* the whole map; an empty item is an error */
        else if (!is_path(tree.bytes, tree.size, true))
            return "a subtree is like /prices/ (or all)";
        for (size_t i = 0; i < list->count; i++)
            if (!bytes_compare(list->tree[i].bytes, list->tree[i].size, tree.bytes, tree.size))
                return "a subtree is listed twice";
        list->tree[list->count++] = tree;
        if (!part[strcspn(part, ",")])
            return NULL;
    }
}

static const char *parse_ttl(const char *text, void *value)
{
    if (!(*(int *)value = (int)seconds(text, strlen(text))))
        return "a ttl is 1 to 86400 seconds";
    return NULL;
}

/* The write of `key`, or NULL. */
static write_t *write_of(facade_t *facade, const char *key, size_t size)
{
    for (int n = 1; n <= facade->args.writes; n++)
        if (!bytes_compare(facade->writes[n].key, strlen(facade->writes[n].key), key, size))
            return &facade->writes[n];
    return NULL;
}

static subtree_t *waiting_for(facade_t *facade, const char *subtree, size_t size)
{
    for (size_t i = 0; i < facade->args.subtrees.count; i++) {
        subtree_t *tree = &facade->args.subtrees.tree[i];
        if (tree->waiting && !bytes_compare(tree->bytes, tree->size, subtree, size))
            return tree;
    }
    return NULL;
}

/* A reply on the DEALER while the snapshots come in: a KVSYNC, or a KTHXBAI. */
void facade_on_snapshot(facade_t *facade, const frames_t *message)
{
    char why[WHY_SIZE], text[SHAPE_SIZE];
    subtrees_t *trees = &facade->args.subtrees;
    if (frame_is(message, 0, "KTHXBAI")) {
        subtree_t *tree = NULL;
        if (message->count != 5 || frame_size(message, 1) != 8 ||
            !is_subtree(frame_data(message, 4), frame_size(message, 4))) {
            emit_error("malformed-kthxbai", "not [KTHXBAI, sequence, -, -, subtree]: %s", shape(message, 0, text));
        } else if (!(tree = waiting_for(facade, frame_data(message, 4), frame_size(message, 4)))) {
            /* Nothing but the subtree says which request a reply answers. */
            emit_error("unexpected-kthxbai", "no request waits for subtree %s",
                       quote(frame_data(message, 4), frame_size(message, 4), text));
        } else {
            tree->waiting = false;
            facade->waiting--;
            tree->watermark = get_be64(frame_data(message, 1));
            emit("synced", "{s:s%, s:o, s:i}", "subtree", tree->bytes, tree->size, "sequence",
                 json_u64(tree->watermark), "keys", tree->keys);
        }
        return;
    }
    const char *bad = check_kv(message, why);
    const char *key = frame_data(message, 0);
    size_t size = frame_size(message, 0), in = 0;
    for (size_t i = 0; !bad && i < trees->count; i++)
        in += trees->tree[i].waiting && in_subtree(key, size, trees->tree[i].bytes, trees->tree[i].size);
    if (!bad && !in) {
        snprintf(why, WHY_SIZE, "%s is in no subtree still being sent", quote(key, size, text));
        bad = why;
    }
    if (bad) {
        emit_error("malformed-kvsync", "%s", bad);
        return;
    }
    for (size_t i = 0; i < trees->count; i++) {
        subtree_t *tree = &trees->tree[i];
        tree->keys += tree->waiting && in_subtree(key, size, tree->bytes, tree->size);
    }
    map_set(&facade->map, key, size, frame_data(message, 4), frame_size(message, 4), 0);
}

/* A message on the SUB once every snapshot is in: a HUGZ, or a KVPUB. */
void facade_on_update(facade_t *facade, const frames_t *message)
{
    if (frame_is(message, 0, "HUGZ"))
        return; /* a keep-alive: the engine is there */
    char why[WHY_SIZE], text[QUOTE_SIZE];
    if (check_kv(message, why)) {
        emit_error("malformed-kvpub", "%s", why);
        return;
    }
    const char *key = frame_data(message, 0), *value = frame_data(message, 4);
    size_t size = frame_size(message, 0), value_size = frame_size(message, 4);
    bool in = false;
    uint64_t watermark = 0; /* the highest of the subtrees the key is in */
    for (size_t i = 0; i < facade->args.subtrees.count; i++) {
        const subtree_t *tree = &facade->args.subtrees.tree[i];
        if (in_subtree(key, size, tree->bytes, tree->size)) {
            in = true;
            watermark = tree->watermark > watermark ? tree->watermark : watermark;
        }
    }
    if (!in) {
        emit_error("unexpected-key", "%s is in none of our subtrees", quote(key, size, text));
        return;
    }
    uint64_t sequence = get_be64(frame_data(message, 1));
    /* The RFC's late-joiner rule: only what is newer than the snapshot, and than the last update. */
    if (sequence <= watermark || sequence <= facade->last) {
        facade->discarded++;
        return;
    }
    map_set(&facade->map, key, size, value, value_size, sequence);
    facade->first = facade->first ? facade->first : sequence;
    facade->last = sequence;
    facade->applied++;
    write_t *own = write_of(facade, key, size);
    if (own && !bytes_compare(own->value, strlen(own->value), value, value_size)) {
        facade->echoes += !own->echoed;
        own->echoed = true;
    } else if (own && !value_size && own == &facade->writes[1] && facade->delete_sent) {
        facade->deleted = true;
    } else if (own && !value_size && own->echoed) {
        own->expired = true;
    }
}

static bool finished(const facade_t *facade)
{
    uint64_t highest = 0;
    for (size_t i = 0; i < facade->args.subtrees.count; i++)
        if (facade->args.subtrees.tree[i].watermark > highest)
            highest = facade->args.subtrees.tree[i].watermark;
    if (facade->waiting || facade->applied < facade->args.count || facade->last <= highest)
        return false;
    if (!facade->sees_own || !facade->args.writes)
        return true;
    for (int n = 2; n <= facade->args.writes; n += 2) /* the writes with a ttl */
        if (!facade->writes[n].expired)
            return false;
    return facade->echoes == facade->args.writes && facade->deleted;
}

void facade_write(void *collector, const char *key, size_t key_size, const char *value, size_t value_size, int ttl)
{
    char properties[32] = "";
    if (ttl)
        snprintf(properties, sizeof properties, "ttl=%d\n", ttl);
    const part_t kvset[] = {{key, key_size}, {ZERO, 8}, {"", 0}, {properties, strlen(properties)},
                            {value, value_size}};
    send_parts(collector, kvset, 5); /* XPUB never blocks */
    emit("wrote", "{s:s%, s:o, s:i}", "key", key, key_size, "value", json_hex(value, value_size), "ttl", ttl);
}

static void write_key(void *collector, const char *key, const char *value, int ttl)
{
    facade_write(collector, key, strlen(key), value, strlen(value), ttl);
}

json_t *facade_subscribe(void *updates, const subtrees_t *trees)
{
    json_t *listed = json_array();
    for (size_t i = 0; i < trees->count; i++) {
        zmq_setsockopt(updates, ZMQ_SUBSCRIBE, trees->tree[i].bytes, trees->tree[i].size);
        json_array_append_new(listed, json_stringn(trees->tree[i].bytes, trees->tree[i].size));
    }
    /* Last: once a HUGZ arrives, every subscription before it is in place (one connection keeps
       them in order). The SUB is connected already: subscriptions made before a connect go out
       in libzmq's sorted order, not in the order made. */
    zmq_setsockopt(updates, ZMQ_SUBSCRIBE, "HUGZ", 4);
    return listed;
}

void facade_request_snapshots(facade_t *facade, void *snapshot)
{
    subtrees_t *trees = &facade->args.subtrees;
    for (size_t i = 0; i < trees->count; i++) { /* all requests in flight at once on the one DEALER */
        const part_t icanhaz[] = {{"ICANHAZ?", 8}, {trees->tree[i].bytes, trees->tree[i].size}};
        send_parts(snapshot, icanhaz, 2);
        trees->tree[i].waiting = true;
    }
    facade->waiting = trees->count;
}

json_t *facade_summary(const facade_t *facade)
{
    json_t *map = json_object();
    for (size_t i = 0; i < facade->map.count; i++) {
        const entry_t *entry = facade->map.entry[i];
        json_object_setn_new(map, entry->key, entry->key_size, json_hex(entry->value, entry->value_size));
    }
    return json_pack("{s:o, s:o, s:o, s:i, s:i}", "sequence", json_u64(facade->last), "first",
                     json_u64(facade->first), "map", map, "applied", facade->applied, "discarded",
                     facade->discarded);
}

void facade_free(facade_t *facade)
{
    map_free(&facade->map);
    free(facade->writes);
    free(facade->args.subtrees.tree);
}

/* The facade role's sockets: DEALER, SUB, and the XPUB to the collector (NULL without --writes). */
typedef struct {
    void *snapshot, *updates, *collector;
} links_t;

/* Step 1: the facade's sockets, new and connected. Returns the subtrees as a JSON array (`ready`). */
static json_t *open_facade(void *context, const facade_args *args, bool monitor, links_t *links)
{
    /* [DEALER] Sends and receives freely: several ICANHAZ? in flight at once, without REQ's
       lockstep, and with no envelope of its own, so nothing but a KTHXBAI's subtree says which
       request a reply answers: the application does the tracking. */
    links->snapshot = zmq_socket(context, ZMQ_DEALER);
    /* [SUB] A prefix filter on frame 0: one subscription per subtree, then HUGZ, made once it
       is connected (facade_subscribe); it receives no update outside them. */
    links->updates = zmq_socket(context, ZMQ_SUB);
    /* XPUB to the collector: a PUB that tells us when the collector's subscription has arrived. */
    links->collector = args->writes ? zmq_socket(context, ZMQ_XPUB) : NULL;
    limit_socket(links->snapshot, 0, MAX_MESSAGE);
    limit_socket(links->updates, 0, MAX_MESSAGE);
    monitor_socket(context, links->snapshot, "snapshot", monitor);
    monitor_socket(context, links->updates, "updates", monitor);
    if (links->collector) {
        /* [linger] 1000 ms, the one socket not at 0: the last write (a delete) may still be
           queued when we exit. Closing it returns at once; the context's end waits up to that
           long for the write to go out. */
        limit_socket(links->collector, 1000, MAX_MESSAGE);
        monitor_socket(context, links->collector, "collector", monitor);
    }
    connect_socket(links->updates, args->updates);
    connect_socket(links->snapshot, args->snapshot);
    if (links->collector)
        connect_socket(links->collector, args->collector);
    return facade_subscribe(links->updates, &args->subtrees);
}

/* Closes them with linger 0: writes queued for a dead engine are worth nothing. (Closing a
   socket stops its monitor: MONITOR_STOPPED ends the watching thread.) */
static void close_facade(const links_t *links)
{
    void *sockets[] = {links->snapshot, links->updates, links->collector};
    int linger = 0;
    for (int i = 0; i < 3; i++) {
        if (sockets[i]) {
            zmq_setsockopt(sockets[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_close(sockets[i]);
        }
    }
}

/* A new session's facade: no map, no watermarks, no counters, none of its writes seen. */
static void fresh_facade(facade_t *facade)
{
    map_free(&facade->map);
    *facade = (facade_t){.args = facade->args, .sees_own = facade->sees_own, .writes = facade->writes};
    for (size_t i = 0; i < facade->args.subtrees.count; i++) {
        subtree_t *tree = &facade->args.subtrees.tree[i];
        *tree = (subtree_t){.bytes = tree->bytes, .size = tree->size};
    }
    for (int n = 1; n <= facade->args.writes; n++)
        facade->writes[n].echoed = facade->writes[n].expired = false;
}

/* What a session knows of the engine it follows: `seen`, the highest sequence read from the SUB
   (HUGZ, and KVPUBs applied or discarded), and `engine`, the UUID in the HUGZ that started the
   session (none yet before it; empty from a server that follows the RFC, or the Guide's). */
typedef struct {
    uint64_t seen;
    bool named; /* whether a HUGZ has named the engine: `engine` is its UUID then */
    size_t engine_size;
    unsigned char engine[QUERY_MAX_MESSAGE]; /* no frame is longer (ZMQ_MAXMSGSIZE) */
} session_t;

/* Whether the SUB still hears the engine of this session: NULL if so, else why not ("engine" or
   "sequence", PROTOCOL.md "Restarts"). The same UUID in every HUGZ, and sequences that only rise:
   one engine's messages reach us in order on one connection, every KVPUB above the HUGZ before
   it, every HUGZ at least the KVPUBs before it. So a HUGZ with another UUID, a KVPUB not above
   `seen`, or a HUGZ below it, is another engine's. A HUGZ's UUID and sequence are frames 2 and 1
   when it is 5 frames with an 8-byte frame 1, else empty and 0; a sequence of 0 says nothing (a
   server that follows the RFC to the letter). Malformed KVPUBs tell nothing. */
static const char *follow_engine(const frames_t *message, session_t *session)
{
    char why[WHY_SIZE];
    uint64_t sequence;
    if (frame_is(message, 0, "HUGZ")) {
        bool whole = message->count == 5 && frame_size(message, 1) == 8;
        const char *uuid = whole ? frame_data(message, 2) : "";
        size_t size = whole ? frame_size(message, 2) : 0;
        sequence = whole ? get_be64(frame_data(message, 1)) : 0;
        if (size > sizeof session->engine) /* cannot happen (MAXMSGSIZE); never the same engine */
            return "engine";
        if (!session->named) {
            session->named = true;
            session->engine_size = size;
            memcpy(session->engine, uuid, size);
        } else if (size != session->engine_size || memcmp(uuid, session->engine, size)) {
            return "engine";
        }
        if (sequence && sequence < session->seen)
            return "sequence";
        session->seen = sequence > session->seen ? sequence : session->seen;
        return NULL;
    }
    if (check_kv(message, why))
        return NULL;
    sequence = get_be64(frame_data(message, 1));
    if (sequence <= session->seen)
        return "sequence";
    session->seen = sequence;
    return NULL;
}

/* One session with one engine: steps 2 to 6 of the facade, from a fresh facade and a fresh
   session. NULL once it is done; else why the engine turns out to be gone or new (PROTOCOL.md,
   "Restarts"): "silence", "engine" or "sequence", `session->seen` the highest sequence read from
   the SUB. */
static const char *follow(facade_t *facade, const links_t *links, const deadline_t *deadline, session_t *session)
{
    const facade_args *args = &facade->args;
    fresh_facade(facade);
    session->seen = 0;
    session->named = false; /* engine: none yet */
    session->engine_size = 0;
    /* The slow joiner: wait for a HUGZ, dropping whatever comes before it (the snapshot covers it).
       It goes through follow_engine too: it names the session's engine, and `seen` starts at the
       engine's sequence (0 for a HUGZ of 0), so that every update after it must be higher. */
    for (bool live = false; !live;) {
        if (deadline_expired(deadline))
            fail("timeout", "no HUGZ from the engine within %d ms", args->timeout);
        frames_t message;
        if (poll_in(links->updates, deadline_cap(deadline, 100)) &&
            recv_at_most(links->updates, &message, MAX_FRAMES)) {
            live = frame_is(&message, 0, "HUGZ");
            if (live)
                follow_engine(&message, session); /* none yet, `seen` 0: it cannot fail */
            frames_close(&message);
        }
    }

    int64_t heard = now_ms(); /* when the engine was last heard from: silence means it is gone */
    facade_request_snapshots(facade, links->snapshot);
    while (facade->waiting) { /* the SUB stays unread meanwhile: its updates wait, in order */
        if (deadline_expired(deadline))
            fail("timeout", "%zu of %zu subtrees never completed", facade->waiting, args->subtrees.count);
        frames_t message;
        if (poll_in(links->snapshot, deadline_cap(deadline, 100)) &&
            recv_at_most(links->snapshot, &message, MAX_FRAMES)) {
            heard = now_ms();
            facade_on_snapshot(facade, &message);
            frames_close(&message);
        }
        if (now_ms() - heard >= args->silence)
            return "silence";
    }

    /* DEALER, SUB, and the XPUB with --writes: the order they are served in. */
    zmq_pollitem_t items[] = {
        {.socket = links->snapshot, .events = ZMQ_POLLIN},
        {.socket = links->updates, .events = ZMQ_POLLIN},
        {.socket = links->collector, .events = ZMQ_POLLIN},
    };
    bool collector_live = false;
    while (!finished(facade)) {
        if (deadline_expired(deadline))
            fail("timeout", "applied %d updates, up to %llu, and was not done", facade->applied,
                 (unsigned long long)facade->last);
        /* At most 100 ms a poll: the silence is the one timer. */
        poll_all(items, links->collector ? 3 : 2, deadline_cap(deadline, 100));
        frames_t message;
        char text[QUOTE_SIZE];
        if ((items[0].revents & ZMQ_POLLIN) && recv_at_most(links->snapshot, &message, MAX_FRAMES)) {
            emit_error("unexpected-snapshot", "%s after every KTHXBAI",
                       quote(frame_data(&message, 0), frame_size(&message, 0), text));
            frames_close(&message);
        }
        if ((items[1].revents & ZMQ_POLLIN) && recv_at_most(links->updates, &message, MAX_FRAMES)) {
            heard = now_ms();
            const char *other = follow_engine(&message, session);
            if (!other)
                facade_on_update(facade, &message);
            frames_close(&message);
            if (other)
                return other;
        }
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if ((items[2].revents & ZMQ_POLLIN) && frame_if_ready(links->collector, &frame) && !collector_live &&
            zmq_msg_size(&frame) == 1 && *(const char *)zmq_msg_data(&frame) == 1) {
            collector_live = true; /* the collector's subscription to everything: writes now arrive */
            for (int n = 1; n <= args->writes; n++)
                write_key(links->collector, facade->writes[n].key, facade->writes[n].value,
                          n % 2 == 0 ? args->ttl : 0);
        }
        zmq_msg_close(&frame);
        if (collector_live && !facade->delete_sent && facade->echoes == args->writes) {
            write_key(links->collector, facade->writes[1].key, "", 0); /* an empty value: delete the key */
            facade->delete_sent = true;
        }
        if (now_ms() - heard >= args->silence) /* not even a HUGZ, sent every --hugz ms */
            return "silence";
    }
    return NULL;
}

int query_facade(int argc, char **argv)
{
    facade_t facade = {
        .args = {
            .snapshot = "tcp://127.0.0.1:5556",
            .updates = "tcp://127.0.0.1:5557",
            .collector = "tcp://127.0.0.1:5558",
            .count = 100,
            .ttl = 1,
            .silence = 3000,
            .timeout = 30000,
        },
    };
    facade_args *args = &facade.args;
    bool monitor = false;
    const flag_t flags[] = {
        TEXT_FLAG("snapshot", args->snapshot),
        TEXT_FLAG("updates", args->updates),
        TEXT_FLAG("collector", args->collector),
        REQUIRED_FLAG("name", parse_segment, args->name),
        REQUIRED_FLAG("subtrees", parse_subtrees, args->subtrees),
        NUMBER_FLAG("count", args->count, 1),
        NUMBER_FLAG("writes", args->writes, 0),
        PARSED_FLAG("ttl", parse_ttl, args->ttl),
        NUMBER_FLAG("silence", args->silence, 1),
        NUMBER_FLAG("timeout", args->timeout, 0),
        MONITOR_FLAG(monitor),
    };
    if (!parse_flags(argc, argv, flags, sizeof flags / sizeof flags[0]))
        return 2;
    subtrees_t *trees = &args->subtrees;
    char prefix[48]; /* of the facade's own keys */
    snprintf(prefix, sizeof prefix, "/facades/%s/", args->name);
    for (size_t i = 0; i < trees->count; i++)
        facade.sees_own |= in_subtree(prefix, strlen(prefix), trees->tree[i].bytes, trees->tree[i].size);
    if (!(facade.writes = calloc((size_t)args->writes + 1, sizeof *facade.writes)))
        fail("memory", "out of memory for %d writes", args->writes);
    for (int n = 1; n <= args->writes; n++) {
        snprintf(facade.writes[n].key, sizeof facade.writes[n].key, "%s%d", prefix, n);
        snprintf(facade.writes[n].value, sizeof facade.writes[n].value, "%s/%d", args->name, n);
    }

    deadline_t deadline = deadline_start(args->timeout);
    void *context = zmq_ctx_new();
    links_t links;
    emit("ready", "{s:s, s:o}", "name", args->name, "subtrees", open_facade(context, args, monitor, &links));
    const char *why;
    session_t session;
    while ((why = follow(&facade, &links, &deadline, &session))) {
        /* Start over on new sockets: the old ones may still hold the old engine's messages. */
        close_facade(&links);
        emit("resynced", "{s:s, s:o}", "why", why, "last", json_u64(session.seen));
        json_decref(open_facade(context, args, monitor, &links)); /* `ready` is said once */
    }

    emit("done", "o", facade_summary(&facade));
    zmq_close(links.updates);
    zmq_close(links.snapshot);
    if (links.collector)
        zmq_close(links.collector);
    zmq_ctx_term(context); /* waits for the collector's linger, at most */
    facade_free(&facade);
    return 0;
}
