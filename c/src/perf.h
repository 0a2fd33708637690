/* perf: throughput and latency, as libzmq's own perf tools measure them (examples/perf/PROTOCOL.md). */
#ifndef BTB_PERF_H
#define BTB_PERF_H

#include <stdbool.h>
#include <stdint.h>

/* `btb perf <role> [--flag value]...`; argv[0] is the role. Returns the exit code. */
int perf_thr_sink(int argc, char **argv);
int perf_thr_source(int argc, char **argv);
int perf_lat_echo(int argc, char **argv);
int perf_lat_ping(int argc, char **argv);
int perf_inproc_thr(int argc, char **argv);

/* The plain-TCP roles, no ZeroMQ at all: the machine's ceiling, for comparison (perf_tcp.c). */
int perf_tcp_sink(int argc, char **argv);
int perf_tcp_source(int argc, char **argv);
int perf_tcp_echo(int argc, char **argv);
int perf_tcp_ping(int argc, char **argv);

/* --- shared by both files ------------------------------------------------------------------ */

enum { THROUGHPUT_COUNT = 100000, LATENCY_COUNT = 10000, PERF_TIMEOUT = 60000 };
#define PERF_ENDPOINT "tcp://127.0.0.1:5570"

typedef struct {
    const char *endpoint;
    int size, count, timeout;
} perf_args;

/* The role's flags (--endpoint unless `endpoint` is false, --size, --count, --timeout) with their
   defaults; false on a bad command line (the role exits 2). */
bool perf_parse(int argc, char **argv, perf_args *args, int count, bool endpoint);

/* The `result` events, from an interval timed with now_ns(). */
void emit_throughput(int size, int count, int64_t started_ns, int64_t ended_ns);
void emit_latency(int size, int count, int64_t started_ns, int64_t ended_ns);

#endif
