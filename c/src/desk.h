/* desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md). */
#ifndef BTB_DESK_H
#define BTB_DESK_H

/* `btb desk trader [--flag value]...`; argv[0] is the role. Returns the exit code. */
int desk_trader(int argc, char **argv);

#endif
