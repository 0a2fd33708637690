/* ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md). */
#ifndef BTB_TICKER_H
#define BTB_TICKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "contract.h"
#include "frames.h"

/* `btb ticker publisher|proxy|subscriber|encode [--flag value]...`; argv[0] is the role.
   Returns the exit code. */
int ticker_publisher(int argc, char **argv);
int ticker_proxy(int argc, char **argv);
int ticker_subscriber(int argc, char **argv);
int ticker_encode(int argc, char **argv);

/* The prices' generator, which the valuation's orders use too: every integer is a uint64_t, and
   C's unsigned arithmetic wraps modulo 2^64, as the protocols say. */
#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)
uint64_t splitmix64(uint64_t x);
/* A ticker symbol, a valuation order's symbol: 1 to 8 letters A-Z. */
enum { MAX_SYMBOL = 8 };
bool is_symbol(const char *text, size_t size);

/* What a subscriber of ticks needs (this example's subscriber, the query engine). */
enum { MAX_SYMBOLS = 32 }; /* in one --symbols list */
/* A symbol as a C string. Its terminating NUL is the topic's NUL (see topic_size). */
typedef char symbol_t[MAX_SYMBOL + 1];
typedef struct {
    size_t count;
    symbol_t name[MAX_SYMBOLS];
} symbols_t;
/* Flag parsers (contract.h): a symbol_t; a symbols_t from a comma-separated list. */
flag_parser parse_symbol, parse_symbols;
/* The index of `name` in `symbols`, or -1. */
int symbol_index(const symbols_t *symbols, const char *name);
/* Frame 0 of a tick: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL
   (a SUB filter is a prefix match). In C that NUL is the string's own terminator: the topic is
   the string with it, strlen + 1 bytes. */
size_t topic_size(const char *name);
/* Whether `data` is a topic: 1 to 8 letters A-Z, then the NUL. */
bool is_topic(const char *data, size_t size);

/* What another subscriber of ticks needs (the desk's ticker agent). */
enum { TICKER_MAX_MESSAGE = 256 }; /* ZMQ_MAXMSGSIZE of every ticker socket (ticker.c says why) */
/* A good tick, as reported. */
typedef struct {
    const char *name; /* in frame 0 */
    int index;        /* among the subscribed symbols */
    uint64_t sequence;
    int64_t timestamp;
    double price;
} checked_t;
/* Checks a tick before anything else: its code and `reason` if it is bad (malformed-tick,
   unexpected-symbol, wrong-price), else NULL and `tick`. */
const char *check_tick(const frames_t *frames, const symbols_t *subscribed, uint64_t seed, checked_t *tick,
                       char reason[REASON_SIZE]);
/* Subscribes a SUB socket to a symbol's topic, or (`on` false) unsubscribes it. */
void subscribe_symbol(void *socket, const char *name, bool on);

#endif
