"""chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md)."""
import time
import zmq

from . import security
from .contract import Deadline, Failure, StopSignal, at_least, bind, connect, emit, log, name, recv_if_ready
from .monitor import watch

MAX_HANDLE = 32  # bytes of UTF-8 (the contract's MAX_NAME)
MAX_TEXT = 4096  # bytes of UTF-8
# [max size] ZMQ_MAXMSGSIZE, on all four sockets, set before bind or connect: libzmq drops a bigger
# frame together with the sender's connection, so no peer makes a role allocate without bound (a
# subscription is a frame too). The largest legal frame is a 4096-byte text; the margin lets a text
# a little too long still reach the server's own `text-too-long` rule, and leaves room for CURVE's
# per-frame overhead.
MAX_MESSAGE = 8192


def add_roles(roles):
    server = roles.add_parser("server")
    add_endpoints(server, timeout=0)
    server.add_argument("--heartbeat", type=at_least(1), default=100)
    server.add_argument("--expiry", type=at_least(1), default=5000)
    security.add_flags(server, server=True)
    server.set_defaults(run=run_server)

    client = roles.add_parser("client")
    add_endpoints(client, timeout=30000)
    client.add_argument("--name", type=name, required=True)
    client.add_argument("--count", type=at_least(0), default=5)
    client.add_argument("--clients", type=at_least(1), default=1)
    client.add_argument("--keepalive", type=at_least(1), default=1000)
    client.add_argument("--retry", type=at_least(1), default=2000)
    client.add_argument("--pace", type=at_least(0), default=0)
    security.add_flags(client, server=False)
    client.set_defaults(run=run_client)


def add_endpoints(parser, timeout):
    parser.add_argument("--requests", default="tcp://127.0.0.1:5555")
    parser.add_argument("--broadcasts", default="tcp://127.0.0.1:5556")
    parser.add_argument("--timeout", type=at_least(0), default=timeout)


def post_text(name, number):
    return f"{name} #{number}: héllo wörld 🌍"


def post_number(handle, text):
    """The number i of a text `<handle> #<i>: ...` (1 to 9 ASCII digits), or None."""
    prefix = f"{handle} #"
    digits, colon, _ = text[len(prefix):].partition(":") if text.startswith(prefix) else ("", "", "")
    if colon and 1 <= len(digits) <= 9 and all("0" <= c <= "9" for c in digits):
        return int(digits)
    return None


# --- server ----------------------------------------------------------------------------------


def check_request(frames):
    """The first broken rule of a request, as (code, reason), or None when it is well formed."""
    # [multipart] A message arrives whole or not at all: recv_multipart hands us every frame of the
    # request at once, never part of it. How many frames there are is still the peer's choice, so
    # the count is checked first, never assumed.
    if len(frames) not in (1, 2):
        return "frame-count", f"expected 1 or 2 frames, got {len(frames)}"
    if not frames[0]:
        return "empty-handle", "the handle frame is empty"
    if len(frames[0]) > MAX_HANDLE:
        return "handle-too-long", f"the handle has {len(frames[0])} bytes, at most {MAX_HANDLE}"
    if len(frames) == 2 and not frames[1]:
        return "empty-text", "the text frame is empty"
    if len(frames) == 2 and len(frames[1]) > MAX_TEXT:
        return "text-too-long", f"the text has {len(frames[1])} bytes, at most {MAX_TEXT}"
    for frame in frames:
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError as error:
            return "invalid-utf8", f"not UTF-8: {error.reason} at byte {error.start}"
    return None


def check_post(frames, roster):
    """A well-formed post from a handle the server does not know: join first. After a restart,
    this is how a posting client learns that the server has forgotten it."""
    if len(frames) == 2 and frames[0] not in roster:
        return "unknown-handle", "join with [handle] before posting"
    return None


def run_server(args):
    stop = StopSignal()
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [REP] answers each request exactly once, in order: the library keeps the lockstep, and keeps
    # the envelope (the REQ's empty delimiter) aside so that our reply goes back to whoever asked.
    requests = context.socket(zmq.REP)
    # [linger] 0 on both sockets: the server stops only when told to, and what is still queued then
    # (a reply to a client that left, a roster) is not worth waiting for: closing drops it at once.
    requests.linger = 0
    requests.maxmsgsize = MAX_MESSAGE
    # [PUB] sends every broadcast to every subscriber whose filter matches; it never blocks, and it
    # drops for a subscriber that is not connected yet (the slow joiner) or past its high-water mark.
    broadcasts = context.socket(zmq.PUB)
    broadcasts.linger = 0
    broadcasts.maxmsgsize = MAX_MESSAGE  # PUB sends, but still decodes what subscribers send it
    # [HWM] PUB queues at most 1000 messages (the default high-water mark) for each subscriber; at
    # the mark it drops that subscriber's broadcasts rather than block the server, as a PUSH would.
    # Security options are read when a connection starts: set them before binding. The ZAP
    # handler, if any, is bound first, so that no handshake happens without it.
    zap, monitors = security.secure_server(args, context, {"requests": requests, "broadcasts": broadcasts})
    if not monitors:  # under plain/curve the handshake watcher holds each socket's one monitor
        watch(requests, "requests", args)
        watch(broadcasts, "broadcasts", args)
    emit("ready", requests=bind(requests, args.requests), broadcasts=bind(broadcasts, args.broadcasts),
         security=args.security)
    # One poller for everything the loop serves: ZAP questions, handshake failures, requests.
    poller = zmq.Poller()
    for socket in ([zap.socket] if zap else []) + list(monitors.values()) + [requests]:
        poller.register(socket, zmq.POLLIN)

    roster = {}  # handle (UTF-8 bytes, so sorting is by bytes) -> last seen, monotonic seconds
    accepted = rejected = 0
    next_beat = time.monotonic()

    def broadcast_roster():
        # Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
        broadcasts.send_multipart([b""] + sorted(roster))

    # The loop's five steps (examples/README.md, "One loop shape"): the stop flag and the deadline;
    # the wait, up to the next heartbeat; one poll; the ready sockets, in a fixed order (ZAP, the
    # monitors, REP), one message each; the heartbeat.
    while not stop.raised:
        if deadline.expired():
            raise Failure("timeout", f"still serving after {args.timeout} ms")
        wait_ms = max(0, int((next_beat - time.monotonic()) * 1000))
        # [poll] One poll for every socket, with a timeout that serves the heartbeat (never past the
        # deadline), instead of a blocking recv: the timer, the deadline and the stop flag all get
        # their turn without a second thread. A signal never shows as EINTR here: pyzmq runs the
        # handler and polls on for the time left (a heartbeat at most), then step 1 sees the flag.
        ready = dict(poller.poll(deadline.cap(wait_ms)))
        if zap and zap.socket in ready:
            zap.handle()
        for name, monitor in monitors.items():
            failure = security.handshake_failure(monitor) if monitor in ready else None
            if failure:
                emit("handshake-failed", socket=name, failure=failure[0], value=failure[1])
        # POLLIN is a hint: None is REP dropping something it could not answer (no request after
        # all), and the loop goes on to its timer.
        frames = recv_if_ready(requests) if requests in ready else None
        if frames is not None:
            problem = check_request(frames) or check_post(frames, roster)
            if problem:
                code, reason = problem
                rejected += 1
                requests.send_multipart([b"", code.encode()])
                emit("error", code=code, reason=reason)
            else:
                handle_bytes = frames[0]
                joined = handle_bytes not in roster
                roster[handle_bytes] = time.monotonic()
                if len(frames) == 2:
                    broadcasts.send_multipart(frames)  # [handle, text], exactly as posted
                    emit("posted", handle=handle_bytes.decode(), text=frames[1].decode())
                accepted += 1
                requests.send_multipart(sorted(roster))
                if joined:
                    emit("joined", handle=handle_bytes.decode())
                    broadcast_roster()
        now = time.monotonic()
        if now >= next_beat:
            for silent in [h for h, seen in roster.items() if now - seen > args.expiry / 1000]:
                del roster[silent]
                emit("expired", handle=silent.decode())
            broadcast_roster()
            next_beat = now + args.heartbeat / 1000

    emit("done", requests=accepted, rejected=rejected)
    context.destroy()


# --- client ----------------------------------------------------------------------------------


def handle_problem(frame):
    """Why a frame is not a handle (1 to 32 bytes of UTF-8), or None."""
    if not 1 <= len(frame) <= MAX_HANDLE:
        return f"a handle of {len(frame)} bytes, not 1 to {MAX_HANDLE}"
    try:
        frame.decode()
    except UnicodeDecodeError:
        return "a handle that is not UTF-8"
    return None


def reply_roster(reply):
    """The roster in a reply, as a list of handles. An error reply (`rejected`) and a reply that
    breaks the reply table (`malformed-reply`) are fatal to a client: they raise a Failure."""
    if reply[0] == b"":
        if len(reply) != 2:
            raise Failure("malformed-reply", f"an error reply has 2 frames, got {len(reply)}")
        raise Failure("rejected", f"the server rejected our request: {reply[1][:32]!r}")
    problem = next(filter(None, map(handle_problem, reply)), None)
    if problem:
        raise Failure("malformed-reply", f"the roster holds {problem}")
    return [frame.decode() for frame in reply]


def read_broadcast(frames):
    """A broadcast as ("roster", handles), ("post", (handle, text)) or ("malformed", reason),
    checked against the broadcast table: a post is a handle and a text, a roster an empty frame
    then handles (their order is not checked)."""
    if frames[0] == b"":
        problem = next(filter(None, map(handle_problem, frames[1:])), None)
        return ("malformed", f"the roster holds {problem}") if problem else ("roster", [f.decode() for f in frames[1:]])
    if len(frames) != 2:
        return "malformed", f"a post has 2 frames, got {len(frames)}"
    handle, text = frames
    problem = handle_problem(handle)
    if not problem and not 1 <= len(text) <= MAX_TEXT:
        problem = f"a text of {len(text)} bytes, not 1 to {MAX_TEXT}"
    if not problem:
        try:
            return "post", (handle.decode(), text.decode())
        except UnicodeDecodeError:
            problem = "a text that is not UTF-8"
    return "malformed", f"a post with {problem}"


class Client:
    def __init__(self, args):
        self.args = args
        self.me = args.name.encode()
        self.deadline = Deadline(args.timeout)
        self.context = zmq.Context()
        # SUB first, created and connected, so that its subscription starts travelling as early as
        # possible; then REQ. Under PLAIN or CURVE, watch SUB's handshakes until the first broadcast.
        self.sub = self.open_broadcasts(handshakes=args.security != "null")
        self.req = self.open_requests()
        self.roster = []
        self.peers = []  # the roster of step 4: whose posts we wait for, and who must rejoin first
        self.last = {}  # handle -> the highest post number received from it
        self.texts = {}  # handle -> the different texts received from it
        self.received = 0
        self.listed = False  # a roster broadcast listed us since our last join
        self.forgotten = False  # the server forgot us (it restarted): rejoin before anything else
        self.last_request = time.monotonic()

    def open_broadcasts(self, handshakes=False):
        """A new SUB socket, subscribed to everything and connected. With `handshakes`, its
        handshake failures are watched (self.monitor) instead of its connections."""
        # [SUB] receives only what matches one of its subscriptions, a prefix of frame 0; "" lets
        # posts and rosters through. It subscribes before it connects, so the subscription goes out
        # as soon as the connection is up; nothing it did not subscribe to ever arrives.
        sub = self.context.socket(zmq.SUB)
        # [linger] 0 on both client sockets: a client leaves only once every request it sent has
        # been answered, so nothing still queued at exit is worth waiting for.
        sub.linger = 0
        sub.maxmsgsize = MAX_MESSAGE
        sub.subscribe(b"")
        security.secure_client(self.args, [sub])  # before connecting
        self.monitor = security.watch(sub) if handshakes else None
        if not self.monitor:  # a socket has one monitor: the handshake watcher's, when there is one
            watch(sub, "broadcasts", self.args)
        connect(sub, self.args.broadcasts)
        return sub

    def open_requests(self):
        """A new REQ socket, connected: at the start, and after each lost reply (Lazy Pirate)."""
        # [REQ] enforces send, receive, send, receive...: one request in flight at a time, and no
        # second send before the reply. So when a reply is lost, the socket is stuck: Lazy Pirate
        # throws it away and comes here for a new one.
        req = self.context.socket(zmq.REQ)
        # [linger] 0: closing a REQ whose reply is lost drops the request still queued for a dead
        # server at once, instead of holding up the exit.
        req.linger = 0
        req.maxmsgsize = MAX_MESSAGE
        security.secure_client(self.args, [req])
        watch(req, "requests", self.args)
        connect(req, self.args.requests)
        return req

    def request(self, frames):
        """One round trip, Lazy Pirate style; returns the roster of the reply, or None when the
        server answered a post with `unknown-handle` (rejoin, then send it again)."""
        self.req.send_multipart(frames)
        reply = self.wait_for_reply()
        while reply is None:
            # The reply is lost, perhaps with the server. Close the REQ (linger 0 drops what it
            # still holds) and send the same request again on a new one.
            emit("retried", text=frames[1].decode() if len(frames) == 2 else "")
            self.req.close()
            self.req = self.open_requests()
            self.req.send_multipart(frames)
            reply = self.wait_for_reply()
        self.last_request = time.monotonic()
        if len(frames) == 2 and reply == [b"", b"unknown-handle"]:
            self.forgotten = True
            return None
        roster = reply_roster(reply)
        self.update_roster(roster)
        return roster

    def wait_for_reply(self):
        """The reply, or None once --retry ms passed without one; `no-reply` at the deadline."""
        until = time.monotonic() + self.args.retry / 1000
        while (wait_ms := int((until - time.monotonic()) * 1000)) > 0:
            if self.deadline.expired():
                raise Failure("no-reply", f"no reply from the server within {self.args.timeout} ms")
            # [poll] REQ alone is polled while a request is in flight, up to --retry; POLLIN is a
            # hint: REQ may drop a reply it cannot route inside the receive, and then it is back to
            # the poll.
            if self.req.poll(self.deadline.cap(wait_ms), zmq.POLLIN):
                reply = recv_if_ready(self.req)
                if reply is not None:
                    return reply
        return None

    def join(self):
        self.listed = False
        return self.request([self.me])

    def update_roster(self, roster):
        if roster != self.roster:
            self.roster = roster
            emit("roster", handles=roster)

    def on_broadcast(self, frames):
        kind, content = read_broadcast(frames)
        if kind == "roster":
            self.update_roster(content)
            if self.args.name in content:
                self.listed = True
            elif self.listed:  # after one with us, a roster without us: the server has forgotten us
                self.forgotten, self.listed = True, False
        elif kind == "post":
            self.on_post(*content)
        else:
            emit("error", code="malformed-broadcast", reason=content)

    def on_post(self, handle, text):
        self.received += 1
        self.texts.setdefault(handle, set()).add(text)
        emit("received", handle=handle, text=text)
        number = post_number(handle, text)
        if number is not None:
            last = self.last.get(handle, 0)
            for missing in range(last + 1, min(number, self.args.count + 1)):  # bounded by --count
                emit("missed", handle=handle, number=missing)  # lost with a server that died
            self.last[handle] = max(last, number)

    def heard_all(self, peer):
        """--count different texts from `peer`, or its post numbered --count (posts before it may
        have been lost with a server that died)."""
        return len(self.texts.get(peer, ())) >= self.args.count or self.last.get(peer, 0) >= self.args.count

    def serve(self, until=None):
        """One turn of the client's loop: handle one broadcast, then send a keep-alive if one is
        due; or rejoin, if the server has forgotten us. Returns by `until` (monotonic seconds)."""
        if self.forgotten:
            return self.rejoin()
        if self.deadline.expired():
            raise Failure("timeout", f"not done after {self.args.timeout} ms")
        due = self.last_request + self.args.keepalive / 1000
        wait_ms = max(0, int((min(due, until or due) - time.monotonic()) * 1000))
        frames = recv_if_ready(self.sub) if self.sub.poll(self.deadline.cap(wait_ms), zmq.POLLIN) else None
        if frames is not None:
            self.on_broadcast(frames)
        # The timer, unless that broadcast told us the server forgot us: then the next turn rejoins,
        # and a keep-alive now would join us without the slow joiner's wait.
        if not self.forgotten and time.monotonic() >= due:
            self.request([self.me])  # keep-alive: silent handles expire from the roster

    def rejoin(self):
        """The server forgot us: start over as a newcomer (PROTOCOL.md, "Restarts")."""
        # What the old SUB already holds came from the old server: take it, then throw the socket
        # away. Which of its broadcasts are older than our join, nothing tells; a new SUB holds none.
        # This drains on purpose (PROTOCOL.md, "Restarts", step 1): every broadcast already queued.
        while (frames := recv_if_ready(self.sub)) is not None:
            self.on_broadcast(frames)
        self.sub.close()
        self.sub = self.open_broadcasts()
        # Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us,
        # once our subscription has reached it. Until then, no request, not even a keep-alive.
        self.on_broadcast(self.wait_for_first_broadcast())
        self.forgotten = False
        emit("rejoined", handles=self.join())
        # Everyone listens before anyone talks, again: every peer rejoins the same way.
        while not all(peer in self.roster for peer in self.peers):
            self.serve()

    def wait_for_first_broadcast(self):
        """The first broadcast's frames."""
        poller = zmq.Poller()
        if self.monitor:
            poller.register(self.monitor, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        while True:
            if self.deadline.expired():
                raise Failure("timeout", "no broadcast from the server")
            # No timer to serve: the wait is the deadline, at most --keepalive ms at a time.
            ready = dict(poller.poll(self.deadline.cap(self.args.keepalive)))
            failure = security.handshake_failure(self.monitor) if self.monitor in ready else None
            if failure:
                # Wrong keys or a wrong password do not get better by reconnecting: give up.
                raise Failure("refused", f"the server refused the {self.args.security.upper()} handshake "
                                         f"(handshake failure {failure[0]}, value {failure[1]})")
            frames = recv_if_ready(self.sub) if self.sub in ready else None
            if frames is not None:
                return frames

    def run(self):
        args = self.args
        # [slow joiner] Our subscription reaches the server some time after connect returns, and
        # what it publishes before then is lost for us. The server broadcasts a roster at least
        # every heartbeat: once a first broadcast arrives, the subscription is live.
        self.on_broadcast(self.wait_for_first_broadcast())
        self.join()
        emit("ready", handle=args.name, security=args.security)

        # Everyone listens before anyone talks: wait for --clients handles, all subscribed.
        while len(self.roster) < args.clients:
            self.serve()
        self.peers = list(self.roster)
        log(f"{args.name}: {len(self.peers)} peers, posting {args.count} texts")

        number = 1
        while number <= args.count:
            text = post_text(args.name, number)
            roster = self.request([self.me, text.encode()])
            if roster is None:  # unknown-handle: rejoin, then the same post again
                self.rejoin()
                continue
            emit("sent", text=text, roster=roster)
            number += 1
            until = time.monotonic() + args.pace / 1000  # --pace: broadcasts are served meanwhile
            while time.monotonic() < until:
                self.serve(until)

        while not all(self.heard_all(peer) for peer in self.peers):
            self.serve()
        emit("done", sent=args.count, received=self.received)
        self.context.destroy()


def run_client(args):
    Client(args).run()
