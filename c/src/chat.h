/* chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md). */
#ifndef BTB_CHAT_H
#define BTB_CHAT_H

/* `btb chat server|client [--flag value]...`; argv[0] is the role. Returns the exit code. */
int chat_server(int argc, char **argv);
int chat_client(int argc, char **argv);

#endif
