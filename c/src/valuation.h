/* valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md). */
#ifndef BTB_VALUATION_H
#define BTB_VALUATION_H

#include <stdbool.h>
#include <stdint.h>

#include "contract.h"
#include "frames.h"
#include "names.h"

/* `btb valuation sink|source|worker|encode [--flag value]...`; argv[0] is the role.
   Returns the exit code. */
int valuation_sink(int argc, char **argv);
int valuation_source(int argc, char **argv);
int valuation_worker(int argc, char **argv);
int valuation_encode(int argc, char **argv);

/* What another source and sink needs (the desk's valuation agent). */
enum { VALUATION_MAX_MESSAGE = 256 }; /* ZMQ_MAXMSGSIZE of every valuation socket (valuation.c says why) */

/* The control channel's states, as sent: one frame of text. */
typedef enum { WAITING, GO, FINISHED } state_t;
extern const char *const STATES[];

/* The five frames of order `id` of the batch of `seed`, big-endian (network order): u64 id,
   symbol, side, u32 quantity, i64 cents; and the five parts that send them (pointing into it). */
typedef struct {
    unsigned char id[8];
    const char *symbol;
    char side;
    unsigned char quantity[4], cents[8];
} order_frames_t;
order_frames_t order_frames(uint64_t seed, uint64_t id);
void order_parts(const order_frames_t *frames, part_t parts[5]);

/* The sink: readies and results in, the state out. */
typedef struct {
    const char *results, *control;
    int workers, count, quiet, heartbeat, timeout;
    uint64_t seed;
} sink_args;

typedef struct {
    sink_args args;
    void *results, *control;
    state_t state;
    names_t ready;  /* the workers that said ready */
    names_t priced; /* value: the results counted from that worker */
    bool *have;     /* have[id]: a result for order id is counted, 1 <= id <= count */
    bool *resent;   /* resent[id]: order id was re-dispatched */
    int counted;
    /* A sum of checked values only: each is at most 1000 × 100099 cents either way and --count
       is an int, so |total| < 2^31 × 2^27 = 2^58: a signed 64-bit total is exact, and cannot
       overflow. */
    int64_t total;
    int64_t quiet_since; /* ms: the last new result, or `go` */
} sink_t;

/* Publishes a state on the control PUB, at once. */
void sink_set_state(sink_t *sink, state_t state);
/* A `ready` from a worker: checked (`malformed-ready`), and reported as `worker` if it is new. */
void sink_on_ready(sink_t *sink, const frames_t *message);
/* While `waiting`, once --workers workers are ready: the state `go`, reported as `started`. */
bool sink_start_when_ready(sink_t *sink);
/* A result, checked and counted (`result`, `late-duplicate`, or an error); the last one makes
   the state `finished`, reported as `complete`. */
void sink_on_result(sink_t *sink, const frames_t *message);
/* Every id without a counted result, ascending, into `missing` (room for --count ids), each
   marked as re-dispatched; returns how many. */
int sink_missing(sink_t *sink, int *missing);

#endif
