/* Socket monitors: `--monitor on` reports every connection event of the sockets a flag gives an
   endpoint, as `socket-event` lines (examples/README.md, "Socket monitors: `--monitor on`"). */
#ifndef BTB_MONITOR_H
#define BTB_MONITOR_H

#include <stdbool.h>

#include "contract.h"

/* --monitor on|off (default off), a flag of every role but perf's and the test-vector printers'.
   Any other value is a bad command line (exit 2). */
flag_parser parse_on_off; /* into a bool */
#define MONITOR_FLAG(variable) PARSED_FLAG("monitor", parse_on_off, variable)

/* When `on`, reports the events of `socket` (made in `context`) as `socket-event` lines whose
   `socket` is `flag`, the name of the flag that gave its endpoint (a string literal: the watching
   thread keeps it); when off, does nothing. Call it in the thread that owns the socket, after its
   options are set and BEFORE its bind or connect. */
void monitor_socket(void *context, void *socket, const char *flag, bool on);

#endif
