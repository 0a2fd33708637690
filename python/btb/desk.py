"""desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).

One ZeroMQ context for the whole process; one thread per agent, each owning the sockets of one
earlier example's client role; the main thread runs the scenario and writes every agent's events to
stdout (with --monitor on, the socket monitors' threads write there too, under the same lock).
Threads share no state: they talk only through PAIR sockets over `inproc://`, the pipes."""
import argparse
import copy
import json
import math
import os
import struct
import threading
import time
from collections import Counter, deque

import zmq

from . import chat, query, ticker, valuation
from .contract import Deadline, Failure, StopSignal, Usage, at_least, bind, connect, recv_if_ready, write_line
from .monitor import watch
from .web import Web

KEEPALIVE = 1.0  # seconds without a request before the chat agent sends a keep-alive
MAX_QUEUED = 100  # texts waiting to be posted, writes waiting to be read back; more is `bad-command`, "busy"
MAX_TRADE = 1000000  # orders in one trade
SEND_BATCH = 1000  # orders sent per turn at most (a high-water mark's worth): results and the pipe get their turn
STOP_WAIT = 5000  # ms the main thread waits for every `stopped` after STOP
PROGRESS_EVERY = 0.1  # seconds between the page's `progress` lines at most


# --- flags -----------------------------------------------------------------------------------


def add_roles(roles):
    trader = roles.add_parser("trader")
    trader.add_argument("--name", type=query.segment, required=True)
    trader.add_argument("--chat-requests", default="tcp://127.0.0.1:5555")
    trader.add_argument("--chat-broadcasts", default="tcp://127.0.0.1:5556")
    trader.add_argument("--chat-clients", type=at_least(1), default=1)
    trader.add_argument("--posts", type=at_least(0), default=5)
    trader.add_argument("--ticks", default="tcp://127.0.0.1:5557")
    trader.add_argument("--follow", type=ticker.symbols, default="AAPL,GOOG,MSFT")
    trader.add_argument("--forget", type=optional_symbol, default="")
    trader.add_argument("--forget-after", type=at_least(1), default=10)
    trader.add_argument("--tick-count", type=at_least(1), default=20)
    trader.add_argument("--seed", type=ticker.seed, default=1)
    trader.add_argument("--orders", default="tcp://127.0.0.1:5562")
    trader.add_argument("--results", default="tcp://127.0.0.1:5560")
    trader.add_argument("--control", default="tcp://127.0.0.1:5561")
    trader.add_argument("--trade", type=trade_size, default=100)
    trader.add_argument("--workers", type=at_least(1), default=1)
    trader.add_argument("--quiet", type=at_least(1), default=1000)
    trader.add_argument("--heartbeat", type=at_least(1), default=100)
    trader.add_argument("--snapshot", default="tcp://127.0.0.1:5566")
    trader.add_argument("--updates", default="tcp://127.0.0.1:5567")
    trader.add_argument("--collector", default="tcp://127.0.0.1:5568")
    trader.add_argument("--subtrees", type=query.subtree_list, default="/prices/,/desks/")
    trader.add_argument("--http", type=page_endpoint, default="")
    trader.add_argument("--timeout", type=at_least(0), default=60000)
    trader.set_defaults(run=run_trader)


def page_endpoint(value):
    if value and not (value.startswith("tcp://") and len(value) > len("tcp://")):
        raise argparse.ArgumentTypeError("the page is served over TCP: tcp://HOST:PORT, or empty for no page")
    return value


def optional_symbol(value):
    return ticker.symbol(value) if value else None


def trade_size(value):
    number = int(value)
    if not 0 <= number <= MAX_TRADE:
        raise argparse.ArgumentTypeError(f"a trade is 0 to {MAX_TRADE} orders")
    return number


def check_flags(args):
    """What the parser cannot see alone: exit 2 before any thread starts."""
    if args.forget is not None and args.forget not in args.follow:
        raise Usage(f"--forget {args.forget} is not one of --follow")
    own = f"/desks/{args.name}/".encode()
    if not any(own.startswith(tree) for tree in args.subtrees):
        raise Usage(f"--subtrees must hold {own.decode()}, where the desk writes its valuation")


# --- the pipes -------------------------------------------------------------------------------


def pipe_endpoint(name):
    # [inproc] No network, no bytes on a wire: the context hands whole messages from one thread's
    # socket to another's. It exists only inside one context, so every thread shares this one; the
    # main thread binds each pipe before its agent's thread connects.
    return f"inproc://desk-{name}"


class Agent:
    """An agent's side of its thread: its end of the pipe, and the sockets it owns. A ZeroMQ socket
    is not thread-safe: every socket made here is created, used and closed by this thread alone."""

    def __init__(self, context, name, args):
        self.context, self.name, self.args, self.sockets = context, name, args, []
        # [PAIR] exactly one peer, known in advance: it never drops and never routes, and joins
        # this thread to the main thread over inproc. The main thread bound the other end before
        # starting us (bind first, then connect).
        self.pipe = context.socket(zmq.PAIR)
        # [linger] 0 on the pipe: a message sent over inproc is already in the peer's queue, so
        # closing has nothing left to send.
        self.pipe.linger = 0
        self.pipe.connect(pipe_endpoint(name))

    def socket(self, kind, flag, max_message, linger=0):
        """One of the agent's network sockets, with its linger and its example's size limit; with
        --monitor on, narrated as the socket of `flag`."""
        sock = self.context.socket(kind)
        sock.linger = linger
        # [max size] The example's own limit (chat 8192, ticker and valuation 256, query 1024 bytes),
        # sized from its largest frame and set before bind or connect. The pipes have none: inproc
        # carries whole messages between threads of one program, never bytes from a peer.
        sock.maxmsgsize = max_message
        watch(sock, flag, self.args)  # in the agent's thread, which owns the socket
        self.sockets.append(sock)
        return sock

    def report(self, event, *frames, **fields):
        """An event up the pipe: its name, the JSON line the main thread will print, and the values
        it acts on, as the frames of one message."""
        # [HWM] At the high-water mark (1000 messages) a PAIR send blocks: the mute state, as for
        # PUSH and DEALER; it never drops. The main thread reads the pipes all the time.
        line = json.dumps({"event": event, "agent": self.name, **fields}, ensure_ascii=False)
        self.pipe.send_multipart([event.encode(), line.encode(), *frames])

    def error(self, code, reason):
        self.report("error", code=code, reason=reason)

    def bad_command(self, command, reason=None):
        self.error("bad-command", reason or f"{command[0][:32]!r} with {len(command) - 1} more frames "
                                            f"is no command of the {self.name} agent")

    def command(self):
        """The next command from the main thread (a list of frames), or None; it never waits."""
        return recv_if_ready(self.pipe)

    def stop(self, **counters):
        """Close every socket, then say `stopped`: by then nothing of ours is left but lingering
        messages, which the context finishes sending before it terminates."""
        for sock in self.sockets:
            sock.close()
        self.report("stopped", **counters)
        self.pipe.close()


def ms_until(moment):
    """A poll timeout in milliseconds until a time.monotonic() moment (rounded up: no spinning)."""
    return max(0, math.ceil((moment - time.monotonic()) * 1000))


# --- the agents: each runs in its own thread -------------------------------------------------
#
# Each is an earlier example's client role turned into a loop that polls its sockets AND its
# pipe, so that STOP is heard however busy or stuck its protocol is: the launch contract's loop
# shape, the pipe first, then the agent's sockets in PROTOCOL.md's order, one message each, then
# the timers. Every receive after a poll is non-blocking (recv_if_ready): POLLIN is a hint, not a
# promise. A Failure (a bind or connect that fails, a fatal chat reply) ends the agent: it reports
# the error and stops without being asked; bad input from a peer is only an `error` event, and the
# agent goes on.


def chat_agent(context, args):
    """The chat client: waits for a first broadcast, joins, keeps alive, and posts what POST queues."""
    agent = Agent(context, "chat", args)
    sent = received = 0
    try:
        # [SUB] a prefix filter on frame 0, subscribed before it connects: "" lets posts and
        # rosters alike through. SUB first, created and connected: its subscription starts
        # travelling at once.
        sub = agent.socket(zmq.SUB, "chat-broadcasts", chat.MAX_MESSAGE)
        sub.subscribe(b"")
        connect(sub, args.chat_broadcasts)
        # [REQ] strict lockstep: one request in flight, no second send before its reply (in_flight).
        # A lost reply would need a new socket; the agent does not resend (no Lazy Pirate), so its
        # chat then waits until STOP.
        req = agent.socket(zmq.REQ, "chat-requests", chat.MAX_MESSAGE)
        connect(req, args.chat_requests)
        agent.report("ready", handle=args.name)

        me = args.name.encode()
        live = joined = crowded = False  # a broadcast came / our join was answered / --chat-clients seen
        roster, texts = [], deque()  # the last roster reported; texts waiting to be posted
        in_flight = None  # the request waiting for its reply
        last_request = time.monotonic()
        poller = zmq.Poller()
        for sock in (agent.pipe, req, sub):
            poller.register(sock, zmq.POLLIN)

        def on_roster(handles):
            nonlocal roster, crowded
            if handles != roster:
                roster = handles
                agent.report("roster", handles=handles)
            crowded = crowded or len(handles) >= args.chat_clients  # everyone listens before anyone talks

        while True:
            idle = joined and in_flight is None  # only then can a keep-alive fall due
            # [poll] The pipe and both sockets at once, with a timeout up to the keep-alive when one
            # can fall due, else none: STOP comes up the pipe (Python runs signal handlers in the
            # main thread, so no EINTR here). Then the pipe, REQ and SUB, each ready one read
            # without blocking (POLLIN is a hint), one message each; then the next request.
            ready = dict(poller.poll(ms_until(last_request + KEEPALIVE) if idle else None))
            if agent.pipe in ready and (command := agent.command()) is not None:
                if command == [b"STOP"]:
                    break
                # [multipart] A command arrives whole or not at all; how many frames it has is
                # still the sender's business (a person's, through the page): checked, not assumed.
                if command[0] != b"POST" or len(command) != 2:
                    agent.bad_command(command)
                elif problem := chat.check_request([me, command[1]]):  # what the server would reject
                    agent.bad_command(command, problem[1])
                elif len(texts) >= MAX_QUEUED:
                    agent.bad_command(command, "busy")
                else:
                    texts.append(command[1])
            if req in ready and (reply := recv_if_ready(req)) is not None:
                handles = chat.reply_roster(reply)  # an error reply raises a Failure: fatal, as for the client
                on_roster(handles)
                if len(in_flight) == 2:
                    sent += 1
                    agent.report("sent", text=in_flight[1].decode(), roster=handles)
                joined, in_flight, last_request = True, None, time.monotonic()
            if sub in ready and (frames := recv_if_ready(sub)) is not None:
                # [slow joiner] What the server broadcast before our subscription reached it is lost
                # for us; it broadcasts a roster every heartbeat, so the first broadcast of any kind
                # says the subscription is live. Only then do we join, and from then on no post is
                # missed.
                live = True
                kind, content = chat.read_broadcast(frames)
                if kind == "roster":
                    on_roster(content)
                elif kind == "post":
                    received += 1
                    agent.report("received", content[0].encode(), handle=content[0], text=content[1])
                else:
                    agent.error("malformed-broadcast", content)
            if live and in_flight is None:  # REQ allows the next request only after the reply
                if not joined:
                    in_flight = [me]  # join
                elif texts and crowded:
                    in_flight = [me, texts.popleft()]  # a post
                elif time.monotonic() >= last_request + KEEPALIVE:
                    in_flight = [me]  # keep-alive: silent handles expire from the roster
                if in_flight:
                    req.send_multipart(in_flight)  # connected, so queued at once: it does not block
    except Failure as failure:
        agent.error(failure.code, failure.reason)
    finally:
        agent.stop(sent=sent, received=received)


def ticker_agent(context, args):
    """The ticker subscriber: its symbols come and go with FOLLOW and FORGET; every tick is checked."""
    agent = Agent(context, "ticker", args)
    ticks = malformed = 0
    try:
        sub = agent.socket(zmq.SUB, "ticks", ticker.MAX_MESSAGE)
        # Our own topic at once, before connecting: the publisher counts the desk as a subscriber by
        # it, and publishes once every subscriber is there. A followed symbol's first ticks may pass
        # before its subscription has travelled upstream: ticks count from the first that arrives.
        sub.subscribe(b"@" + args.name.encode())
        connect(sub, args.ticks)
        agent.report("ready", name=args.name)

        followed = set()
        poller = zmq.Poller()
        poller.register(agent.pipe, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())  # no timer to serve: STOP comes up the pipe
            # The ticks first: [poll] has already fetched the tick the SUB will deliver next, filtered
            # by the subscriptions of that moment; a FORGET served before it would meet it after the
            # unsubscribe. Served first, it is checked against the set it was filtered by.
            if sub in ready and (frames := recv_if_ready(sub)) is not None:
                checked = ticker.check_tick(frames, followed, args.seed)
                if len(checked) == 2:
                    malformed += 1
                    agent.error(*checked)
                else:
                    symbol, sequence, timestamp, price = checked
                    ticks += 1
                    agent.report("tick", symbol.encode(), symbol=symbol, sequence=sequence, timestamp=timestamp,
                                 price=price)
            if agent.pipe in ready and (command := agent.command()) is not None:
                if command == [b"STOP"]:
                    break
                if command[0] not in (b"FOLLOW", b"FORGET") or len(command) != 2:
                    agent.bad_command(command)
                elif not ticker.is_topic(command[1] + b"\0"):  # a topic is the symbol and a NUL
                    agent.bad_command(command, f"{command[1][:32]!r} is not 1 to 8 letters A-Z")
                elif command[0] == b"FOLLOW" and command[1].decode() not in followed and len(followed) == ticker.MAX_SYMBOLS:
                    agent.bad_command(command, "busy")  # --follow's bound holds for FOLLOW too: 32 symbols
                elif command[0] == b"FOLLOW" and (symbol := command[1].decode()) not in followed:
                    sub.subscribe(ticker.topic(symbol))
                    followed.add(symbol)
                    agent.report("subscribed", symbol=symbol)
                elif command[0] == b"FORGET" and (symbol := command[1].decode()) in followed:
                    # [SUB] filters what it delivers by its current subscriptions (a prefix of frame
                    # 0): no tick of the symbol comes after this, even one already queued.
                    sub.unsubscribe(ticker.topic(symbol))
                    followed.remove(symbol)
                    agent.report("unsubscribed", symbol=symbol)
    except Failure as failure:
        agent.error(failure.code, failure.reason)
    finally:
        agent.stop(ticks=ticks, malformed=malformed)


class Trade:
    """One trade of orders 1 to N, in the valuation agent: what has gone out, what has come back."""

    def __init__(self, count):
        self.count = count
        self.next_id = 1  # the first pass sends 1 to N in order
        self.again, self.batch = deque(), []  # a resend: its ids still to go out, and all of them
        self.values, self.priced, self.resent = {}, Counter(), set()
        self.quiet_since = time.monotonic()

    def next_order(self):
        """The id to send next (the first pass, then the resend in progress), or None."""
        if self.next_id <= self.count:
            return self.next_id
        return self.again[0] if self.again else None


def valuation_agent(context, args):
    """The valuation source and sink in one thread: it deals a trade's orders to the workers,
    counts and checks their results, and sends again what a dead worker lost."""
    agent = Agent(context, "valuation", args)
    trade, total = None, 0  # the trade running or last run; the total of the last one complete
    try:
        # [PUSH] deals orders round-robin to the connected workers; at the high-water mark it blocks
        # and never drops, so the agent sends only when a poll said there is room (POLLOUT).
        orders = agent.socket(zmq.PUSH, "orders", valuation.MAX_MESSAGE)
        # [PULL] fair-queues readies and results from every connected worker.
        results = agent.socket(zmq.PULL, "results", valuation.MAX_MESSAGE)
        # [PUB] the control channel to every worker: it never blocks, and drops for a worker not
        # connected yet or past its high-water mark; hence the state repeated every heartbeat.
        # [linger] 1000 ms on the control PUB: a `finished` published just before the desk stops
        # still reaches the workers, who leave when they hear it. 0 on PUSH and PULL.
        control = agent.socket(zmq.PUB, "control", valuation.MAX_MESSAGE, linger=1000)
        bound = {"orders": bind(orders, args.orders), "results": bind(results, args.results),
                 "control": bind(control, args.control)}
        # Frames 2-4: the bound endpoints, which the main thread reports in the desk's own ready.
        agent.report("ready", *(endpoint.encode() for endpoint in bound.values()), **bound)

        state, workers = b"waiting", set()
        next_beat = time.monotonic()  # the state goes out at once, then every --heartbeat ms
        poller = zmq.Poller()
        poller.register(agent.pipe, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)

        def set_state(new):
            nonlocal state
            state = new
            control.send(state)  # at once; the heartbeat repeats it: level-triggered

        while True:
            # Poll the PUSH for room (POLLOUT) only while an order waits for it: it never blocks
            # in a send, and results and the pipe are read meanwhile.
            sending = trade is not None and state != b"waiting" and trade.next_order() is not None
            poller.register(orders, zmq.POLLOUT if sending else 0)  # 0: not polled
            quiet = state == b"go" and not trade.again  # the quiet timer runs (no resend going out)
            timers = [next_beat] + ([trade.quiet_since + args.quiet / 1000] if quiet else [])
            # [poll] The pipe, the PULL and (for room) the PUSH at once, with a timeout up to the next
            # heartbeat or quiet period; then the pipe, the PUSH and the PULL, in that order.
            ready = dict(poller.poll(ms_until(min(timers))))
            if agent.pipe in ready and (command := agent.command()) is not None:
                if command == [b"STOP"]:
                    break
                count = struct.unpack(">Q", command[1])[0] if len(command) == 2 and len(command[1]) == 8 else 0
                if command[0] != b"VALUE" or len(command) != 2:
                    agent.bad_command(command)
                elif not 1 <= count <= MAX_TRADE:
                    agent.bad_command(command, f"a trade is 1 to {MAX_TRADE} orders, in 8 bytes big-endian")
                elif trade is not None and (state != b"finished" or trade.again):
                    agent.bad_command(command, "busy")
                else:
                    if state == b"finished":  # the previous workers have left: wait for new ones
                        workers.clear()
                        set_state(b"waiting")
                    trade = Trade(count)
            if orders in ready:
                # Sends in a batch, on purpose: up to SEND_BATCH orders while there is room, then
                # results and the pipe get their turn.
                for _ in range(SEND_BATCH):
                    order_id = trade.next_order()
                    if order_id is None:
                        break
                    try:
                        orders.send_multipart(valuation.order_frames(args.seed, order_id), zmq.DONTWAIT)
                    except zmq.Again:
                        break  # the room the poll saw is gone: back to the poll
                    if trade.next_id <= trade.count:  # the first pass
                        trade.next_id += 1
                        if trade.next_id > trade.count:
                            agent.report("sent", orders=trade.count)
                    else:
                        trade.again.popleft()
                        if not trade.again:
                            agent.report("resent", ids=trade.batch)
            if results in ready and (frames := recv_if_ready(results)) is not None:
                if frames[0] == b"ready":
                    if problem := valuation.check_ready(frames):
                        agent.error(*problem)  # not a worker: --workers waits on
                    elif (name := frames[1].decode()) not in workers:
                        workers.add(name)
                        agent.report("worker", name=name)
                elif len(checked := valuation.check_result(frames, trade.count if trade else 0, args.seed)) == 2:
                    agent.error(*checked)  # not counted: the id stays missing
                else:
                    worker, order_id, amount = checked
                    if order_id in trade.values and order_id in trade.resent:
                        agent.report("late-duplicate", id=order_id, worker=worker)  # we sent it twice
                    elif order_id in trade.values:
                        agent.error("duplicate", f"a second result for order {order_id}, from {worker}")
                    else:
                        trade.values[order_id] = amount
                        trade.priced[worker] += 1
                        trade.quiet_since = time.monotonic()
                        agent.report("result", id=order_id, worker=worker)
                        if len(trade.values) == trade.count:
                            set_state(b"finished")
                            total = sum(trade.values.values())
                            agent.report("complete", struct.pack(">q", total), total=total,
                                         workers=dict(trade.priced), resent=sorted(trade.resent))
            if state == b"waiting" and trade is not None and len(workers) >= args.workers:
                set_state(b"go")  # every ready worker has seen a state already: none misses `go`
                agent.report("started", workers=len(workers))
                trade.quiet_since = time.monotonic()
            now = time.monotonic()
            if state == b"go" and not trade.again and now - trade.quiet_since >= args.quiet / 1000:
                # PUSH dropped what was queued for a worker that died: send every id sent and not
                # answered again. (No `resend` on the control channel: the source is this thread.)
                missing = [i for i in range(1, trade.next_id) if i not in trade.values]
                if missing:
                    agent.report("resend", ids=missing)
                    trade.again.extend(missing)
                    trade.batch = missing
                    trade.resent.update(missing)
                trade.quiet_since = now
            if now >= next_beat:
                control.send(state)  # a worker that joins late learns the state within a heartbeat
                next_beat = now + args.heartbeat / 1000
    except Failure as failure:
        agent.error(failure.code, failure.reason)
    finally:
        agent.stop(orders=len(trade.values) if trade else 0, total=total)


def query_agent(context, args):
    """The CHP facade: waits for a HUGZ, syncs every subtree, applies updates, and writes what
    WRITE asks for, reporting when it comes back."""
    agent = Agent(context, "query", args)
    mirror = query.Mirror(args.subtrees, emit=agent.report)  # its events go up the pipe
    try:
        # [DEALER] several requests in flight at once, no lockstep and no envelope of its own: the
        # subtree in each KTHXBAI says which request it answers.
        snapshot = agent.socket(zmq.DEALER, "snapshot", query.MAX_MESSAGE)
        updates = agent.socket(zmq.SUB, "updates", query.MAX_MESSAGE)
        # [XPUB] to the collector: a PUB that hands us each subscription as a message (first byte 1
        # or 0), so we learn when the collector's subscription to everything has arrived.
        # Linger 1000 ms: the last write may still be queued when the desk stops.
        collector = agent.socket(zmq.XPUB, "collector", query.MAX_MESSAGE, linger=1000)
        query.connect_facade(updates, snapshot, args)  # subtrees, then HUGZ: see the HUGZ wait below
        connect(collector, args.collector)
        agent.report("ready", name=args.name, subtrees=[tree.decode() for tree in args.subtrees])

        hugged = collector_live = False
        writes, unread = deque(), set()  # (key, value) to write; written and not read back yet
        poller = zmq.Poller()
        for sock in (agent.pipe, updates, collector):  # the DEALER once a HUGZ has come
            poller.register(sock, zmq.POLLIN)
        while True:
            # No timer to serve: STOP comes up the pipe. Then the pipe, the DEALER, the SUB and the
            # XPUB, in that order (PROTOCOL.md's), those that are polled and ready.
            ready = dict(poller.poll())
            if agent.pipe in ready and (command := agent.command()) is not None:
                if command == [b"STOP"]:
                    break
                if command[0] != b"WRITE" or len(command) != 3:
                    agent.bad_command(command)
                elif not (query.is_key(command[1]) and mirror.subtrees_of(command[1])):
                    # A key outside our subtrees would never come back to be read.
                    agent.bad_command(command, f"{command[1][:32]!r} is not a key in the agent's subtrees")
                elif not 1 <= len(command[2]) <= query.MAX_VALUE:
                    agent.bad_command(command, f"a value of {len(command[2])} bytes, not 1 to {query.MAX_VALUE}")
                elif len(writes) + len(unread) >= MAX_QUEUED:
                    agent.bad_command(command, "busy")
                else:
                    writes.append((command[1], command[2]))
            if snapshot in ready and (frames := query.recv_message(snapshot)):
                if mirror.waiting:
                    mirror.on_snapshot(frames)  # `synced` once a subtree's KTHXBAI is in
                    if not mirror.waiting:
                        poller.register(updates, zmq.POLLIN)
                else:
                    agent.error("unexpected-snapshot", f"{frames[0][:32]!r} after every KTHXBAI")
            if updates in ready and (frames := query.recv_message(updates)):
                if hugged:
                    key, sequence, value = mirror.on_update(frames) or (None, 0, None)  # None: not applied
                    if key is not None:  # the engine's keys the desk watches, for its page
                        agent.report("applied", key, key=key.decode(), value=value.hex(), sequence=sequence)
                    if (key, value) in unread:
                        unread.remove((key, value))
                        agent.report("read-back", key, value, key=key.decode(), value=value.hex(), sequence=sequence)
                elif frames[0] == b"HUGZ":
                    # [slow joiner] The engine answers a subscription to HUGZ at once, and ours is
                    # the last made: every subtree's is in place now, so no update from here on can
                    # be missed. What came before is dropped: the snapshots cover it.
                    hugged = True
                    for tree in args.subtrees:  # every request in flight at once on the one DEALER
                        snapshot.send_multipart([query.ICANHAZ, tree])
                    poller.unregister(updates)  # its updates wait, in order, until every KTHXBAI
                    poller.register(snapshot, zmq.POLLIN)
            if collector in ready and (frame := recv_if_ready(collector, whole=False)) is not None:
                collector_live = collector_live or frame == b"\x01"  # the collector's subscription to everything
            while writes and collector_live and hugged and not mirror.waiting:
                key, value = writes.popleft()
                collector.send_multipart(query.kvset(key, value))  # XPUB never blocks
                unread.add((key, value))
                agent.report("wrote", key=key.decode(), value=value.hex(), ttl=0)
    except Failure as failure:
        agent.error(failure.code, failure.reason)
    finally:
        agent.stop(**mirror.summary())


AGENTS = {"chat": chat_agent, "ticker": ticker_agent, "valuation": valuation_agent, "query": query_agent}


# --- the main thread -------------------------------------------------------------------------


class Desk:
    """The main thread's side: one pipe end per agent, the scenario's progress, and stdout."""

    def __init__(self, context, args, web):
        self.context, self.args, self.web = context, args, web  # web: the page's STREAM socket, or None
        self.pipes, self.threads, self.names = {}, {}, {}  # agent -> PAIR, agent -> Thread, PAIR -> agent
        self.poller = zmq.Poller()
        self.endpoints = {}  # the valuation agent's bound endpoints, for the desk's `ready`
        self.stopping = False  # STOP has gone down the pipes
        self.stopped = []  # the agents that said `stopped`, in that order
        self.failed = None  # the first agent that stopped before it was told to
        self.ticks, self.received = Counter(), Counter()  # symbol -> ticks; handle -> posts received
        self.posted = self.sent = self.synced = 0
        self.following = set(args.follow)
        self.forgotten = args.forget is None
        self.complete = self.read_back = args.trade == 0  # with no trade, nothing to wait for
        self.valuation = (f"/desks/{args.name}/valuation".encode(), None)  # the key, and the total written
        self.finished = False  # the scenario has been done (a page may change it since: it stays done)
        self.trading = args.trade > 0  # a VALUE went down and its `complete` has not come back
        self.trade, self.results = args.trade, 0  # the trade's size, and its results so far
        self.progress_at, self.progress_shown = 0.0, 0  # when the page last had a `progress`, and its count

    def start(self, name, deadline):
        """Bind the agent's pipe, start its thread, and wait for its first event, which must be
        `ready`: each agent's own proof that its sockets exist. None, or the Failure."""
        pipe = self.context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.bind(pipe_endpoint(name))  # bind before the agent connects: what inproc always accepted
        self.pipes[name], self.names[pipe] = pipe, name
        self.poller.register(pipe, zmq.POLLIN)
        # The agent gets its own copy of the flags: threads share nothing but the context. A daemon
        # thread does not keep the process alive, should an agent never stop (agent-stuck).
        thread = threading.Thread(target=AGENTS[name], args=(self.context, copy.deepcopy(self.args)),
                                  name=f"desk-{name}", daemon=True)
        self.threads[name] = thread
        thread.start()
        while not deadline.expired():
            if pipe.poll(deadline.cap(100)) and (frames := recv_if_ready(pipe)) is not None:
                self.on_event(name, frames)
                return None if frames[0] == b"ready" else Failure("agent-failed", f"the {name} agent did not start")
        return Failure("timeout", f"the {name} agent was not ready within {self.args.timeout} ms")

    def command(self, name, *frames):
        """A command down a pipe. Without waiting: an agent that stopped by itself has closed its
        end, and a PAIR with no peer would block the send for ever."""
        try:
            self.pipes[name].send_multipart(list(frames), zmq.DONTWAIT)
        except zmq.Again:
            pass  # its `stopped` is in our queue: the loop will see it

    def write(self, line, key=None, page=True, event=None):
        """One line to stdout, and to the page's event streams (`key`: the line replaces the last one
        with that key in the page's replay)."""
        write_line(line, event)  # under the lock the socket monitors' threads share
        if self.web and page:
            self.web.publish(line, key)

    def emit(self, event, **fields):
        self.write(json.dumps({"event": event, **fields}, ensure_ascii=False).encode(), event=event)

    def on_event(self, name, frames):
        """Write the event's line (frame 1, unchanged), then act on frame 0 and frames 2..."""
        event, values, args = frames[0], frames[2:], self.args
        key = {b"tick": b"tick ", b"applied": b"applied "}.get(event)
        # One `result` per order would flood a page: it gets their count in `progress` instead.
        self.write(frames[1], key and key + values[0], page=event != b"result")
        if event == b"result":
            self.results += 1
        elif event == b"started":
            self.results = self.progress_shown = 0
        elif event == b"complete":
            self.show_progress(force=True)
        if event == b"stopped":
            self.stopped.append(name)
            if not self.stopping and self.failed is None:
                self.failed = name
        elif self.stopping:
            pass  # after STOP, events are written, no longer acted on
        elif event == b"ready" and name == "valuation":
            self.endpoints = dict(zip(("orders", "results", "control"), (value.decode() for value in values)))
        elif event == b"tick":
            symbol = values[0].decode()
            self.ticks[symbol] += 1
            if self.posted < args.posts:  # prices drive the chat
                self.posted += 1
                self.command("chat", b"POST", chat.post_text(args.name, self.posted).encode())
            if symbol == args.forget and not self.forgotten and self.ticks[symbol] >= args.forget_after:
                self.command("ticker", b"FORGET", values[0])
                self.forgotten = True
                self.following.discard(symbol)
        elif event == b"sent" and name == "chat":  # the valuation agent's `sent` is its orders'
            self.sent += 1
        elif event == b"received":
            self.received[values[0].decode()] += 1
        elif event == b"complete":  # the valuation goes to the engine
            total = str(struct.unpack(">q", values[0])[0]).encode()
            self.valuation = (self.valuation[0], total)
            self.complete, self.trading = True, False
            self.command("query", b"WRITE", *self.valuation)
        elif event == b"synced":
            self.synced += 1
        elif event == b"read-back" and tuple(values) == self.valuation:
            self.read_back = True

    def show_progress(self, force=False):
        """The page's `progress`: at most every 100 ms while the count changes, and before `complete`."""
        if self.web and self.results != self.progress_shown and (force or time.monotonic() - self.progress_at >= PROGRESS_EVERY):
            line = {"event": "progress", "agent": "valuation", "results": self.results, "orders": self.trade}
            self.web.publish(json.dumps(line).encode(), b"progress")  # the page's only: not on stdout
            self.progress_at, self.progress_shown = time.monotonic(), self.results

    def on_command(self, target, body):
        """A command from the page: checked, reported as `command`, handed to its agent. (status, reason)."""
        if target in (b"/follow", b"/forget"):
            try:
                symbol = ticker.symbol(body.decode("ascii"))
            except (UnicodeDecodeError, argparse.ArgumentTypeError):
                return 400, "a symbol is 1 to 8 letters A-Z"
            follow = target == b"/follow"
            self.emit("command", command="FOLLOW" if follow else "FORGET", symbol=symbol)
            self.command("ticker", b"FOLLOW" if follow else b"FORGET", body)
            # The scenario waits for the symbols the page follows, and no longer for those it forgets.
            (self.following.add if follow else self.following.discard)(symbol)
        elif target == b"/chat":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                return 400, "the text is not UTF-8"
            if not 1 <= len(body) <= chat.MAX_TEXT:
                return 400, f"a text is 1 to {chat.MAX_TEXT} bytes"
            self.emit("command", command="POST", text=text)
            self.command("chat", b"POST", body)
        else:  # /value
            if not (body.isdigit() and 1 <= int(body) <= MAX_TRADE):
                return 400, f"a trade is 1 to {MAX_TRADE} orders, in decimal digits"
            if self.trading:
                return 409, "a trade is running: wait for its total"
            self.trade, self.trading = int(body), True
            self.emit("command", command="VALUE", orders=self.trade)
            self.command("valuation", b"VALUE", struct.pack(">Q", self.trade))
        return 204, ""

    def done(self):
        args = self.args
        ticker_done = self.forgotten and all(self.ticks[symbol] >= args.tick_count for symbol in self.following)
        talkers = sum(1 for count in self.received.values() if count >= args.posts)
        chat_done = self.sent >= args.posts and (args.posts == 0 or talkers >= args.chat_clients)
        query_done = self.synced == len(args.subtrees) and self.read_back
        return ticker_done and chat_done and self.complete and query_done

    def serve(self, stop, deadline):
        """The loop, until the scenario is done (without a page) or a signal comes (None), or it
        fails (the Failure)."""
        if self.web:
            self.poller.register(self.web.socket, zmq.POLLIN)
        while True:
            if self.failed:
                return Failure("agent-failed", f"the {self.failed} agent stopped by itself")
            self.finished = self.finished or self.done()
            if (self.finished and not self.web) or stop.raised:  # a page is served until a signal
                return None
            if deadline.expired():
                return Failure("timeout", f"not done after {self.args.timeout} ms: {self.progress()}")
            # [poll] The four pipes and the page's STREAM at once, with a timeout of at most 100 ms (the
            # time the other languages take to notice a signal, and the page's connections their
            # deadlines), never past the deadline. pyzmq resumes a poll a signal interrupted (EINTR)
            # after running the handler, so the flag is seen above within 100 ms.
            ready = dict(self.poller.poll(deadline.cap(100)))
            for name, pipe in self.pipes.items():  # chat, ticker, valuation, query
                if pipe in ready and (frames := recv_if_ready(pipe)) is not None:  # one message per pipe: fair
                    self.on_event(name, frames)
            if self.web and self.web.socket in ready:
                self.web.receive(self.on_command)  # drains on purpose, up to web.BATCH messages
            if self.web:
                self.show_progress()
                self.web.expire()

    def progress(self):
        return (f"ticks {dict(self.ticks)}, {self.sent} posts sent, received {dict(self.received)}, "
                f"complete {self.complete}, {self.synced} subtrees synced, read back {self.read_back}")

    def shut_down(self):
        """STOP every agent at once (they are independent) and wait for their `stopped`, writing
        what comes meanwhile. The agents that never said it: none, normally."""
        self.stopping = True
        told = set(self.stopped)
        deadline = Deadline(STOP_WAIT)
        while (running := [name for name in self.pipes if name not in self.stopped]) and not deadline.expired():
            poller = zmq.Poller()
            for name in running:
                # STOP once the pipe takes it: an agent stopped by the deadline during its start-up
                # may not have connected its end yet, and a PAIR without its peer takes nothing.
                poller.register(self.pipes[name], zmq.POLLIN | (0 if name in told else zmq.POLLOUT))
            for pipe, events in poller.poll(deadline.remaining_ms()):
                name = self.names[pipe]
                if events & zmq.POLLOUT and name not in told:
                    self.command(name, b"STOP")
                    told.add(name)
                if events & zmq.POLLIN and (frames := recv_if_ready(pipe)) is not None:
                    self.on_event(name, frames)
        return running

    def close(self):
        for thread in self.threads.values():
            thread.join()  # each has returned, or is about to: it closed its pipe end after `stopped`
        for pipe in self.pipes.values():
            pipe.close()
        if self.web:
            self.web.close()
            self.web = None  # the last lines (done, an error) go to stdout only


def run_trader(args):
    check_flags(args)
    stop = StopSignal()  # Python runs signal handlers in the main thread only: agents never see one
    deadline = Deadline(args.timeout)
    context = zmq.Context()  # the process's one context: every thread's sockets, every inproc pipe
    try:
        web = Web(context, args.http, args) if args.http else None  # before any thread: a failed bind stops here
    except Failure:
        context.destroy(linger=0)
        raise
    desk = Desk(context, args, web)
    failure = None
    for name in AGENTS:  # one at a time, in a fixed order: each waits for the previous one's ready
        if failure := desk.start(name, deadline):
            break
    else:
        desk.emit("ready", name=args.name, **desk.endpoints, http=web.endpoint if web else "")
        if web:
            web.serving = True  # from now on, lines go to the replay's ring, not its start-up
        for symbol in args.follow:
            desk.command("ticker", b"FOLLOW", symbol.encode())
        if args.trade:
            desk.command("valuation", b"VALUE", struct.pack(">Q", args.trade))
        failure = desk.serve(stop, deadline)
    complete = desk.finished or desk.done()
    stuck = desk.shut_down()
    if stuck:
        if failure:
            desk.emit("error", code=failure.code, reason=failure.reason)
        desk.emit("error", code="agent-stuck", reason=f"no stopped from {', '.join(stuck)} within {STOP_WAIT} ms of STOP")
        # Leave without terminating the context, which would wait for the stuck agent's sockets
        # for ever, and without Python's clean-up, which would try to.
        os._exit(1)
    desk.close()
    # Returns once every socket of every thread is closed and its linger has run out: which is why
    # the agents close theirs before they say `stopped`.
    context.term()
    if failure:
        raise failure
    desk.emit("done", complete=complete, agents=[name for name in AGENTS if name in desk.stopped])
