/* btb <example> <role> [--flag value]...: one entry point for every role (examples/README.md). */
#include <stdbool.h>
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

/* The help (examples/README.md, "Help: one text, six programs") is examples/help.txt, generated
   from the PROTOCOL.md tables by `invoke help` and built in by embedded.S (.incbin). Every language
   prints the same section byte for byte, so it is written as the raw bytes, unchanged. */
extern const char help_txt[], help_txt_end[];

static bool is_role(const char *example, const char *role)
{
    for (size_t i = 0; i < ROLE_COUNT; i++)
        if (!strcmp(example, ROLES[i].example) && !strcmp(role, ROLES[i].role))
            return true;
    return false;
}

/* Prints the section `btb WORDS... --help` asks for, if it does: the words are the leading
   arguments that do not begin with '-', and --help or -h counts only where a flag may stand (every
   flag takes a value). Returns false, printing nothing, when there is no such section. */
static bool help_requested(int argc, char **argv)
{
    int words = 0;
    bool asked = false;
    while (1 + words < argc && argv[1 + words][0] != '-')
        words++;
    for (int i = 1 + words; i < argc; i += 2)
        asked |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
    if (!asked || words > 2 || (words == 2 && !is_role(argv[1], argv[2])))
        return false;
    char header[128]; /* [btb], [btb EXAMPLE] or [btb EXAMPLE ROLE] */
    int length = snprintf(header, sizeof header, "[btb%s%s%s%s]", words > 0 ? " " : "",
                          words > 0 ? argv[1] : "", words > 1 ? " " : "", words > 1 ? argv[2] : "");
    if (length < 0 || (size_t)length >= sizeof header)
        return false; /* names no section */
    const char *start = NULL, *end = help_txt_end; /* the section: the lines after its header */
    for (const char *line = help_txt, *next; line < help_txt_end; line = next) {
        const char *newline = memchr(line, '\n', (size_t)(help_txt_end - line));
        next = newline ? newline + 1 : help_txt_end;
        size_t size = (size_t)((newline ? newline : help_txt_end) - line); /* without the newline */
        if (size < 5 || memcmp(line, "[btb", 4) || line[size - 1] != ']')
            continue; /* not a header */
        if (start) {
            end = line;
            break;
        }
        if (size == (size_t)length && !memcmp(line, header, size))
            start = next;
    }
    if (start)
        fwrite(start, 1, (size_t)(end - start), stdout);
    return start != NULL;
}

int main(int argc, char **argv)
{
    if (help_requested(argc, argv))
        return fflush(stdout) ? 1 : 0; /* 1 only if stdout could not take the help */
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
