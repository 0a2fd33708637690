#include "frames.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

/* --- receiving ------------------------------------------------------------------------------ */

bool frame_if_ready(void *socket, zmq_msg_t *frame)
{
    if (zmq_msg_recv(frame, socket, ZMQ_DONTWAIT) >= 0)
        return true;
    if (errno != EAGAIN && errno != EINTR) /* EINTR: a signal; the caller checks its flags */
        fail("recv", "zmq_msg_recv: %s", zmq_strerror(errno));
    return false;
}

bool recv_if_ready(void *socket, frames_t *message)
{
    return recv_at_most(socket, message, SIZE_MAX);
}

bool recv_at_most(void *socket, frames_t *message, size_t keep)
{
    size_t room = 4;
    message->frame = malloc(room * sizeof *message->frame);
    message->count = 0;
    zmq_msg_t dropped; /* each frame past the first `keep`, in turn */
    zmq_msg_init(&dropped);
    /* A multipart message arrives whole or not at all: once its first frame is here, so are the
       others, and receiving them cannot block. ZMQ_RCVMORE (zmq_msg_more) says that another
       frame of it follows. */
    for (bool first = true, more = true; more; first = false) {
        zmq_msg_t *frame = &dropped;
        if (message->count < keep) {
            if (message->count == room) /* only the pointers move: a zmq_msg_t must stay put */
                message->frame = realloc(message->frame, (room *= 2) * sizeof *message->frame);
            frame = message->frame ? malloc(sizeof *frame) : NULL;
            if (!frame)
                fail("memory", "out of memory");
            zmq_msg_init(frame);
            message->frame[message->count++] = frame;
        }
        if (first) { /* the first frame: only if it is there */
            if (!frame_if_ready(socket, frame)) {
                frames_close(message);
                zmq_msg_close(&dropped);
                return false;
            }
        } else { /* the rest: already here (a receive releases what `frame` held before) */
            while (zmq_msg_recv(frame, socket, 0) < 0)
                if (errno != EINTR)
                    fail("recv", "zmq_msg_recv: %s", zmq_strerror(errno));
        }
        more = zmq_msg_more(frame);
    }
    zmq_msg_close(&dropped);
    return true;
}

void frames_close(frames_t *message)
{
    for (size_t i = 0; i < message->count; i++) {
        zmq_msg_close(message->frame[i]);
        free(message->frame[i]);
    }
    free(message->frame);
    message->frame = NULL;
    message->count = 0;
}

bool frame_is(const frames_t *m, size_t i, const char *text)
{
    return i < m->count && frame_size(m, i) == strlen(text) && !memcmp(frame_data(m, i), text, frame_size(m, i));
}

/* --- sending -------------------------------------------------------------------------------- */

void send_frame(void *socket, const void *data, size_t size, bool more)
{
    while (zmq_send(socket, data, size, more ? ZMQ_SNDMORE : 0) < 0)
        if (errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
}

void send_parts(void *socket, const part_t *parts, size_t count)
{
    for (size_t i = 0; i < count; i++)
        send_frame(socket, parts[i].data, parts[i].size, i + 1 < count);
}

bool send_if_room(void *socket, const part_t *parts, size_t count)
{
    /* ZMQ_DONTWAIT: the room a poll saw may be gone by now (the peer left); then nothing is sent
       and the caller waits again instead of blocking. The high-water mark counts whole messages,
       so once the first frame is accepted, the rest of the message is too. */
    int flags = ZMQ_DONTWAIT | (count > 1 ? ZMQ_SNDMORE : 0);
    if (zmq_send(socket, parts[0].data, parts[0].size, flags) < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail("send", "zmq_send: %s", zmq_strerror(errno));
        return false;
    }
    for (size_t i = 1; i < count; i++)
        send_frame(socket, parts[i].data, parts[i].size, i + 1 < count);
    return true;
}

void send_when_room(void *socket, const part_t *parts, size_t count, const deadline_t *deadline,
                    const char *what)
{
    for (;;) {
        zmq_pollitem_t item = {.socket = socket, .events = ZMQ_POLLOUT};
        int ready = zmq_poll(&item, 1, deadline_cap(deadline, 1000));
        if (ready < 0 && errno != EINTR)
            fail("poll", "zmq_poll: %s", zmq_strerror(errno));
        if (ready > 0 && send_if_room(socket, parts, count))
            return;
        if (deadline_expired(deadline))
            fail("timeout", "no room to send %s", what);
    }
}

/* --- the bytes of a frame ------------------------------------------------------------------- */

/* The `size` bytes of `value`, the most significant first. */
static void put_be(unsigned char *bytes, size_t size, uint64_t value)
{
    for (size_t i = size; i-- > 0; value >>= 8)
        bytes[i] = (unsigned char)value;
}

static uint64_t get_be(const void *data, size_t size)
{
    const unsigned char *bytes = data;
    uint64_t value = 0;
    for (size_t i = 0; i < size; i++)
        value = value << 8 | bytes[i];
    return value;
}

void put_be64(unsigned char bytes[8], uint64_t value) { put_be(bytes, 8, value); }
uint64_t get_be64(const void *data) { return get_be(data, 8); }
void put_be32(unsigned char bytes[4], uint32_t value) { put_be(bytes, 4, value); }
uint32_t get_be32(const void *data) { return (uint32_t)get_be(data, 4); }

const char *hex(const void *data, size_t size, char text[HEX_SIZE])
{
    const unsigned char *bytes = data;
    size = size < 16 ? size : 16;
    for (size_t i = 0; i < size; i++)
        snprintf(text + 2 * i, 3, "%02x", bytes[i]);
    text[2 * size] = '\0';
    return text;
}
