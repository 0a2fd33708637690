"""web: the desk's live page, served over a ZMQ_STREAM socket by the desk's main thread
(examples/desk/PROTOCOL.md, "The web page: HTTP over a ZMQ_STREAM socket").

STREAM is the socket for a peer that does not speak ZeroMQ: no ZMTP, raw TCP bytes both ways. Each
message is [identity, bytes]: the identity names one TCP connection, the bytes are one read from it
(a request may come in pieces). Here the peer is a browser, and the bytes are HTTP/1.1."""
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from importlib import resources

import zmq

from .contract import bind
from .monitor import watch

PAGE = resources.files(__package__).joinpath("page.html").read_bytes()  # examples/desk/page.html
HEAD_LIMIT = 8192  # bytes up to and including the blank line that ends the headers
BODY_LIMIT = 4096  # bytes of a body (a chat text's limit)
REQUEST_TIME = 5.0  # seconds for a whole request, from a connection's first message
CLOSE_TIME = 1.0  # seconds a client has to close after its answer, before the desk closes it
MAX_CONNECTIONS = 256
RECENT, LATEST = 1000, 256  # the replay: last lines in order; latest line per key (ticks, keys)
# Messages read per turn at most: the STREAM socket is drained on purpose, since one message is one
# read of one connection (a request may come in many), but bounded, so that the pipes get their turn.
BATCH = 100
ROUTES = {b"/": b"GET", b"/events": b"GET", b"/follow": b"POST", b"/forget": b"POST", b"/chat": b"POST", b"/value": b"POST"}
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 505: "HTTP Version Not Supported"}
VISIBLE = re.compile(rb"[\x21-\x7e]+")
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
               b"Connection: close\r\n\r\n")


class Refused(Exception):
    """A request the desk answers with an error: its status and a line saying why."""

    def __init__(self, status, reason, allow=None):
        super().__init__(reason)
        self.status, self.reason, self.allow = status, reason, allow


@dataclass
class Connection:
    deadline: float  # when the desk closes it (None: an event stream, open until it leaves)
    state: str = "reading"  # reading, answered, stream, closing (a slow stream, cut off)
    buffer: bytes = field(default=b"", repr=False)


class Web:
    """The STREAM socket and what the desk knows of each connection. Main thread only."""

    def __init__(self, context, endpoint, args):
        self.socket = context.socket(zmq.STREAM)
        self.socket.linger = 0  # an open event stream has nothing worth waiting for at exit
        # The high-water mark bounds what one connection can hold in the desk: 1000 messages
        # queued for a reader that does not read, then sends to it fail (the slow reader, below).
        self.socket.sndhwm = 1000
        watch(self.socket, "http", args)  # a browser's connections are accepted and disconnected too
        self.endpoint = bind(self.socket, endpoint)
        self.connections = {}  # identity -> Connection
        self.serving = False  # the desk has said ready: lines go to the replay's ring from now on
        self.startup, self.recent, self.latest = [], deque(maxlen=RECENT), OrderedDict()

    # --- sending: never blocking --------------------------------------------------------------

    def send(self, identity, data):
        """'sent', 'full' (its queue is at the high-water mark) or 'gone'. A blocking send to a
        reader that does not read would freeze the whole desk: every send here is DONTWAIT."""
        try:
            self.socket.send_multipart([identity, data], zmq.DONTWAIT)
            return "sent"
        except zmq.Again:
            return "full"
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:  # no such connection any more
                return "gone"
            raise

    def answer(self, identity, status, body=b"", content_type=b"text/plain; charset=utf-8", allow=None):
        head = [f"HTTP/1.1 {status} {REASONS[status]}".encode()]
        if status != 204:
            head += [b"Content-Type: " + content_type, b"Content-Length: %d" % len(body)]
        head += [b"Cache-Control: no-store", b"Connection: close"] + ([b"Allow: " + allow] if allow else [])
        if self.send(identity, b"\r\n".join(head) + b"\r\n\r\n" + body) != "sent":
            self.connections.pop(identity, None)
            return
        # The client closes (Connection: close); the desk closes later, not now: NetMQ drops what
        # is still queued on a connection closed right after a send.
        self.connections[identity] = Connection(time.monotonic() + CLOSE_TIME, "answered")

    # --- receiving: one read of a TCP connection per message --------------------------------------

    def receive(self, on_command):
        """Read what the poll reported, without waiting (POLLIN is a hint), at most BATCH messages."""
        for _ in range(BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue  # STREAM always delivers [identity, bytes]
            identity, data = frames
            known = self.connections.get(identity)
            if not data:  # libzmq: an empty frame at connect, and again when the peer closes
                if known:
                    del self.connections[identity]
                else:
                    self.track(identity)
                continue
            known = known or self.track(identity)  # NetMQ tells of a connection only with its data
            if known and known.state == "reading":
                known.buffer += data
                self.parse(identity, known.buffer, on_command)
            # Bytes after a request (a longer body, a second request) are ignored: one per connection.

    def track(self, identity):
        if len(self.connections) >= MAX_CONNECTIONS:
            answered = [(c.deadline, i) for i, c in self.connections.items() if c.state == "answered"]
            if not answered:
                self.send(identity, b"")  # an empty frame closes the connection: at once, unanswered
                return None
            oldest = min(answered)[1]  # answered longest ago: it only waits for its client to close
            self.send(oldest, b"")
            del self.connections[oldest]
        self.connections[identity] = Connection(time.monotonic() + REQUEST_TIME)
        return self.connections[identity]

    def parse(self, identity, buffer, on_command):
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and len(buffer) < HEAD_LIMIT:
            return  # the head is not all in yet
        try:
            if end < 0 or end + 4 > HEAD_LIMIT:
                raise Refused(431, f"the request line and headers are over {HEAD_LIMIT} bytes")
            method, target, length = parse_head(buffer[:end])
            body = buffer[end + 4:]
            if length is not None and len(body) < length:
                return  # the body is not all in yet
            self.route(identity, method, target, body[:length], on_command)
        except Refused as refused:
            self.answer(identity, refused.status, refused.reason.encode() + b"\n", allow=refused.allow)

    def route(self, identity, method, target, body, on_command):
        if target == b"/":
            self.answer(identity, 200, PAGE, b"text/html; charset=utf-8")
        elif target == b"/events":
            self.start_stream(identity)
        else:
            status, reason = on_command(target, body)
            self.answer(identity, status, b"" if status == 204 else reason.encode() + b"\n")

    # --- the event stream -------------------------------------------------------------------------

    def start_stream(self, identity):
        """The head and the replay in one message, so that a page opened at any time has it all."""
        lines = self.startup + list(self.recent) + list(self.latest.values())
        if self.send(identity, STREAM_HEAD + b"".join(b"data: " + line + b"\n\n" for line in lines)) == "sent":
            self.connections[identity] = Connection(None, "stream")
        else:
            self.connections.pop(identity, None)

    def publish(self, line, key=None):
        """One line the desk wrote: kept for the replay, and sent to every event stream."""
        if not self.serving and len(self.startup) < RECENT:
            self.startup.append(line)
        elif key is None:
            self.recent.append(line)
        elif key in self.latest or len(self.latest) < LATEST:
            self.latest[key] = line
        message = b"data: " + line + b"\n\n"
        for identity, connection in list(self.connections.items()):
            if connection.state != "stream":
                continue
            sent = self.send(identity, message)
            if sent == "full":
                # A reader too slow for its stream: drop this line and every later one, and close
                # the stream once its queue takes the close (expire). It reconnects to a fresh replay.
                connection.state = "closing"
            elif sent == "gone":
                del self.connections[identity]

    def expire(self):
        """Close what is past its deadline, and the slow streams whose queue takes the close now."""
        now = time.monotonic()
        for identity, connection in list(self.connections.items()):
            if connection.state == "closing" or (connection.deadline is not None and now >= connection.deadline):
                if connection.state == "reading" and connection.buffer:
                    self.answer(identity, 408, f"no whole request within {REQUEST_TIME * 1000:.0f} ms\n".encode())
                elif self.send(identity, b"") != "full":
                    del self.connections[identity]

    def close(self):
        self.socket.close()


def parse_head(head):
    """(method, target, Content-Length or None) of a request head, or Refused."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not all(VISIBLE.fullmatch(part) for part in parts):
        raise Refused(400, "a request line is METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if re.fullmatch(rb"HTTP/\d\.\d", version):
            raise Refused(505, "HTTP/1.1 only")
        raise Refused(400, "a request line ends with HTTP/1.1")
    length, chunked = None, False
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise Refused(400, "a header line without a colon")
        name, value = name.strip().lower(), value.strip()
        chunked = chunked or name == b"transfer-encoding"
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise Refused(400, "Content-Length is one number of decimal digits")
            length = int(value)
    if chunked:
        raise Refused(501, "no Transfer-Encoding: send a Content-Length")
    if length is not None and length > BODY_LIMIT:
        raise Refused(413, f"a body is at most {BODY_LIMIT} bytes")
    allowed = ROUTES.get(target)
    if allowed is None:
        raise Refused(404, f"no {target[:64].decode('ascii')} here")
    if method != allowed:
        raise Refused(405, f"{target.decode('ascii')} takes {allowed.decode('ascii')}", allow=allowed)
    if method == b"POST" and length is None:
        raise Refused(411, "a POST needs a Content-Length")
    return method, target, length
