/* Multipart messages: receiving what a poll said is there, without ever waiting for it; sending
   frame by frame, or only when there is room; and the bytes of a frame (network byte order, hex). */
#ifndef BTB_FRAMES_H
#define BTB_FRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "contract.h"

/* --- receiving ------------------------------------------------------------------------------ */

/* One multipart message, every frame of it received. */
typedef struct {
    zmq_msg_t **frame; /* each frame allocated once: libzmq forbids moving a zmq_msg_t */
    size_t count;
} frames_t;
/* The message a poll said was waiting (ZMQ_POLLIN), or false if there is none after all. A poll's
   POLLIN is a hint, not a promise: REP silently drops a request it cannot route (no empty
   delimiter frame) inside the receive, and REQ a reply, and a blocking receive would then wait
   for the next one: no heartbeat, no deadline, no stop. So the first frame is received with
   ZMQ_DONTWAIT; EAGAIN (or a signal, EINTR) means "nothing", and the caller goes round its loop. */
bool recv_if_ready(void *socket, frames_t *message);
/* The same, keeping at most `keep` frames (1 or more): the rest of the message is received and
   dropped, so that a message of a million empty frames costs nothing. A message->count of `keep`
   may therefore stand for more. */
bool recv_at_most(void *socket, frames_t *message, size_t keep);
/* The same for one frame, whatever its ZMQ_RCVMORE says; `frame` is initialised by the caller. */
bool frame_if_ready(void *socket, zmq_msg_t *frame);
void frames_close(frames_t *message);
static inline const char *frame_data(const frames_t *m, size_t i) { return zmq_msg_data(m->frame[i]); }
static inline size_t frame_size(const frames_t *m, size_t i) { return zmq_msg_size(m->frame[i]); }
/* Whether the message has a frame i, and it is exactly `text`. */
bool frame_is(const frames_t *message, size_t i, const char *text);

/* --- sending -------------------------------------------------------------------------------- */

/* One frame; `more` (ZMQ_SNDMORE) says another frame of the same message follows. */
void send_frame(void *socket, const void *data, size_t size, bool more);
/* One frame of a message to send. */
typedef struct {
    const void *data;
    size_t size;
} part_t;
/* One message, frame by frame (send_frame), on a socket whose send does not wait: PUB and XPUB
   never block, and the rest of a message goes wherever its first frame went. */
void send_parts(void *socket, const part_t *parts, size_t count);
/* Sends the message if there is room for it now (ZMQ_DONTWAIT), else sends nothing and returns
   false: for a loop that polls for ZMQ_POLLOUT among its other sockets instead of waiting. */
bool send_if_room(void *socket, const part_t *parts, size_t count);
/* Sends one multipart message on a socket that can block, like PUSH while no peer is connected
   or every peer's queue is full (the high-water mark): it waits for room with a poll (ZMQ_POLLOUT),
   never past the deadline, else fails with `timeout`, naming `what`. */
void send_when_room(void *socket, const part_t *parts, size_t count, const deadline_t *deadline,
                    const char *what);

/* --- the bytes of a frame ------------------------------------------------------------------- */

/* Big-endian (network order): the most significant byte first, whatever the machine's order. */
void put_be64(unsigned char bytes[8], uint64_t value);
uint64_t get_be64(const void *data);
void put_be32(unsigned char bytes[4], uint32_t value);
uint32_t get_be32(const void *data);
/* Lowercase hex of the first `size` bytes (at most 16); `text` has room for 33 characters. */
enum { HEX_SIZE = 2 * 16 + 1 };
const char *hex(const void *data, size_t size, char text[HEX_SIZE]);

#endif
