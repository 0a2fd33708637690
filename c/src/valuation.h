/* valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md). */
#ifndef BTB_VALUATION_H
#define BTB_VALUATION_H

/* `btb valuation sink|source|worker|encode [--flag value]...`; argv[0] is the role.
   Returns the exit code. */
int valuation_sink(int argc, char **argv);
int valuation_source(int argc, char **argv);
int valuation_worker(int argc, char **argv);
int valuation_encode(int argc, char **argv);

#endif
