/* ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md). */
#ifndef BTB_TICKER_H
#define BTB_TICKER_H

/* `btb ticker publisher|proxy|subscriber|encode [--flag value]...`; argv[0] is the role.
   Returns the exit code. */
int ticker_publisher(int argc, char **argv);
int ticker_proxy(int argc, char **argv);
int ticker_subscriber(int argc, char **argv);
int ticker_encode(int argc, char **argv);

#endif
