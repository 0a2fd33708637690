/* btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md). */
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "desk.h"
#include "perf.h"
#include "query.h"
#include "ticker.h"
#include "valuation.h"

static const struct {
    const char *example, *role;
    int (*run)(int argc, char **argv); /* argv[0] names the role; returns the exit code */
} ROLES[] = {
    {"chat", "server", chat_server},
    {"chat", "client", chat_client},
    {"ticker", "publisher", ticker_publisher},
    {"ticker", "proxy", ticker_proxy},
    {"ticker", "subscriber", ticker_subscriber},
    {"ticker", "encode", ticker_encode},
    {"valuation", "sink", valuation_sink},
    {"valuation", "source", valuation_source},
    {"valuation", "worker", valuation_worker},
    {"valuation", "encode", valuation_encode},
    {"perf", "thr-sink", perf_thr_sink},
    {"perf", "thr-source", perf_thr_source},
    {"perf", "lat-echo", perf_lat_echo},
    {"perf", "lat-ping", perf_lat_ping},
    {"perf", "inproc-thr", perf_inproc_thr},
    {"perf", "tcp-sink", perf_tcp_sink},
    {"perf", "tcp-source", perf_tcp_source},
    {"perf", "tcp-echo", perf_tcp_echo},
    {"perf", "tcp-ping", perf_tcp_ping},
    {"query", "engine", query_engine},
    {"query", "facade", query_facade},
    {"query", "derive", query_derive},
    {"desk", "trader", desk_trader},
};
enum { ROLE_COUNT = sizeof ROLES / sizeof ROLES[0] };

int main(int argc, char **argv)
{
    for (size_t i = 0; argc >= 3 && i < ROLE_COUNT; i++)
        if (!strcmp(argv[1], ROLES[i].example) && !strcmp(argv[2], ROLES[i].role)) {
            char program[64]; /* names the role in the parser's messages */
            snprintf(program, sizeof program, "btb %s %s", ROLES[i].example, ROLES[i].role);
            argv[2] = program;
            return ROLES[i].run(argc - 2, argv + 2);
        }
    fputs("usage: btb <example> <role> [--flag value]...\nroles:", stderr);
    for (size_t i = 0; i < ROLE_COUNT; i++)
        fprintf(stderr, " '%s %s'", ROLES[i].example, ROLES[i].role);
    fputc('\n', stderr);
    return 2; /* the command line was wrong */
}
