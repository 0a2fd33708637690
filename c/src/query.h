/* query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md). */
#ifndef BTB_QUERY_H
#define BTB_QUERY_H

/* `btb query engine|facade|derive [--flag value]...`; argv[0] is the role. Returns the exit code. */
int query_engine(int argc, char **argv);
int query_facade(int argc, char **argv);
int query_derive(int argc, char **argv);

#endif
