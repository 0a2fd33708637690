//! desk: a trading desk, one process whose threads talk over inproc pipes (examples/desk/PROTOCOL.md).
//!
//! One thread per agent; each agent is the client role of an earlier example (chat, ticker,
//! valuation, query) turned into a loop that polls its sockets and its pipe. The main thread runs
//! the scenario and is the only one that writes stdout (but the socket monitors' threads, with
//! --monitor on). The threads share nothing but the ZeroMQ context: "don't share state, share
//! messages".
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::{value_parser, Args, Subcommand};
use serde_json::{json, Value};

use crate::chat::{self, check_broadcast, check_reply, post_text, Broadcast};
use crate::contract::{
    bind, connect, emit, event_line, log, ms_until, poll, readable, readable_each, recv_frame_if_ready, recv_if_ready,
    stop_signal, usage, write_line, Deadline, Failure,
};
use crate::monitor::{self, OnOff};
use crate::web::{Answer, Web};
use crate::query::{
    self, is_key, is_word, quote, quote_all, recv_message, subtree_list, text, Facade, Subtrees, ICANHAZ,
};
use crate::ticker::{self, check_tick, hex, is_symbol, symbol, symbol_list, topic, Symbols, Tick};
use crate::valuation::{self, on_ready, order_frames, Tally};

// --- flags -----------------------------------------------------------------------------------

const MAX_TRADE: u64 = 1_000_000; // orders in one trade
const MAX_WAITING: usize = 100; // POSTs or WRITEs an agent holds before it answers "busy"
const SEND_BATCH: usize = 1000; // orders sent in one turn of the valuation agent's loop
const STOP_WAIT: Duration = Duration::from_millis(5000); // for every `stopped`, after STOP

#[derive(Subcommand)]
pub enum Role {
    /// one process, one thread per agent (chat, ticker, valuation, query), inproc pipes
    Trader(TraderArgs),
}

/// The desk's flags; each agent gets its own copy when its thread starts.
#[derive(Args, Clone)]
pub struct TraderArgs {
    #[arg(long, value_parser = desk_name)]
    name: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    chat_requests: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5556")]
    chat_broadcasts: String,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..))]
    chat_clients: u64,
    #[arg(long, default_value_t = 5)]
    posts: u64,
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    ticks: String,
    #[arg(long, value_parser = symbol_list, default_value = "AAPL,GOOG,MSFT")]
    follow: Symbols,
    #[arg(long, value_parser = symbol_or_none, default_value = "")]
    forget: String,
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..))]
    forget_after: u64,
    #[arg(long, default_value_t = 20, value_parser = value_parser!(u64).range(1..))]
    tick_count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "tcp://127.0.0.1:5562")]
    orders: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5560")]
    results: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5561")]
    control: String,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(0..=MAX_TRADE))]
    trade: u64,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..))]
    workers: u64,
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..))]
    quiet: u32,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(1..))]
    heartbeat: u32,
    #[arg(long, default_value = "tcp://127.0.0.1:5566")]
    snapshot: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5567")]
    updates: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5568")]
    collector: String,
    #[arg(long, value_parser = subtree_list, default_value = "/prices/,/desks/")]
    subtrees: Subtrees,
    #[arg(long, value_parser = http_endpoint, default_value = "")]
    http: String,
    #[arg(long, default_value_t = 60000)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

/// 1 to 32 of A-Z a-z 0-9 _ -: the chat handle, the ticker's @name, a segment of the desk's keys.
fn desk_name(value: &str) -> Result<String, String> {
    if is_word(value.as_bytes()) {
        Ok(value.to_string())
    } else {
        Err("a desk name is 1 to 32 of A-Z a-z 0-9 _ -".into())
    }
}

/// --forget: a symbol, or empty for none.
fn symbol_or_none(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Ok(String::new())
    } else {
        symbol(value)
    }
}

/// --http: a tcp:// endpoint (a wildcard port allowed), or empty for no page.
fn http_endpoint(value: &str) -> Result<String, String> {
    match value.strip_prefix("tcp://") {
        _ if value.is_empty() => Ok(String::new()),
        Some(address) if !address.is_empty() => Ok(value.to_string()),
        _ => Err("the page is served over TCP: tcp://HOST:PORT, or empty for no page".into()),
    }
}

/// What the parser alone cannot see: exit 2 before any thread starts.
fn check_flags(args: &TraderArgs) {
    if !args.forget.is_empty() && !args.follow.0.contains(&args.forget) {
        usage("--forget must be one of --follow, or empty");
    }
    // The valuation's total is written there, and must come back.
    let own = desk_key(&args.name, "");
    if !args.subtrees.0.iter().any(|tree| own.starts_with(tree)) {
        usage(&format!("--subtrees must hold {}", String::from_utf8_lossy(&own)));
    }
}

/// `/desks/NAME/` followed by `leaf`.
fn desk_key(name: &str, leaf: &str) -> Vec<u8> {
    format!("/desks/{}/{}", name, leaf).into_bytes()
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::Trader(args) => run_trader(args),
    }
}

// --- the pipes -------------------------------------------------------------------------------

const AGENTS: [&str; 4] = ["chat", "ticker", "valuation", "query"];
const CHAT: usize = 0;
const TICKER: usize = 1;
const VALUATION: usize = 2;
const QUERY: usize = 3;

/// [inproc] The pipes join the threads of this one process through its one context: an inproc
/// endpoint exists only inside the context that bound it, which is why the process has exactly one.
/// The main thread binds each pipe before it starts the agent that connects to it.
fn pipe_endpoint(agent: &str) -> String {
    format!("inproc://desk-{}", agent)
}

/// An agent's end of its pipe: events go up, commands come down.
struct Pipe {
    socket: zmq::Socket,
    agent: &'static str,
}

impl Pipe {
    /// Connect to the end the main thread bound before it started us (bind first, then connect:
    /// the inproc order that works with every library).
    fn connect(context: &zmq::Context, agent: &'static str) -> Option<Pipe> {
        // [PAIR] exactly one peer: the main thread's end of this pipe. It never drops and never
        // routes, and a second connection is refused: two threads, known in advance.
        let connected = context.socket(zmq::PAIR).and_then(|socket| {
            // Linger 0: an inproc send hands the message to the peer's queue at once, so nothing
            // is left to flush when the pipe closes. No maximum message size: inproc decodes no
            // bytes, it passes whole messages between threads of one program.
            socket.set_linger(0)?;
            socket.connect(&pipe_endpoint(agent))?;
            Ok(socket)
        });
        match connected {
            Ok(socket) => Some(Pipe { socket, agent }),
            Err(error) => {
                log(&format!("{} agent: cannot connect its pipe: {}", agent, error));
                None
            }
        }
    }

    /// Send an event up: frame 0 its name, frame 1 the event as JSON with "agent", then `extras`
    /// (what the main thread acts on: it never parses the JSON).
    fn event(&self, name: &str, mut fields: Value, extras: &[&[u8]]) {
        fields["agent"] = json!(self.agent);
        let line = event_line(name, fields);
        let frames: Vec<&[u8]> = [name.as_bytes(), line.as_bytes()].into_iter().chain(extras.iter().copied()).collect();
        // High-water mark: PAIR never drops; at 1000 messages this send waits for the main thread,
        // which reads whenever the pipe is readable. (Our own peers would drop meanwhile, not us.)
        loop {
            match self.socket.send_multipart(&frames, 0) {
                Ok(()) => return,
                Err(zmq::Error::EINTR) => continue, // only the first frame can wait, so none went out
                Err(error) => return log(&format!("{} agent: cannot send {} up its pipe: {}", self.agent, name, error)),
            }
        }
    }

    /// The examples' own code reports through this: their events, without extra frames.
    fn out(&self) -> impl FnMut(&str, Value) + '_ {
        move |name: &str, fields: Value| self.event(name, fields, &[])
    }

    fn error(&self, code: &str, reason: &str) {
        self.event("error", json!({ "code": code, "reason": reason }), &[]);
    }

    /// The command waiting on the pipe (after a poll), or None: nothing after all, or a command of
    /// the wrong shape, reported as `bad-command`.
    fn command(&self) -> Result<Option<Command>, Failure> {
        let Some(frames) = recv_if_ready(&self.socket)? else { return Ok(None) };
        match Command::parse(&frames) {
            Ok(command) => Ok(Some(command)),
            Err(reason) => {
                self.error("bad-command", &reason);
                Ok(None)
            }
        }
    }

    /// A well-formed command for another agent.
    fn not_mine(&self, command: &Command) {
        self.error("bad-command", &format!("{} is not a command of the {} agent", command.name(), self.agent));
    }

    /// The last event: the agent's sockets are closed (they were dropped when `serve` returned).
    fn stopped(&self, served: Result<(), Failure>, counters: Value) {
        if let Err(failure) = served {
            self.error(failure.code, &failure.reason); // the agent cannot go on: the desk will fail
        }
        self.event("stopped", counters, &[]);
    }
}

/// A command, down a pipe (main thread -> agent).
enum Command {
    Stop,
    Follow(String),
    Forget(String),
    Post(String),
    Value(u64),
    Write(Vec<u8>, Vec<u8>),
}

impl Command {
    /// A command as the protocol's table has it, or why it is not one. The main thread sends only
    /// good ones; the check is for commands that will come from people.
    fn parse(frames: &[Vec<u8>]) -> Result<Command, String> {
        // [multipart] A command arrives whole or not at all, as every message; its frame count is
        // part of its shape, checked with the rest, never assumed.
        let number = |frame: &[u8]| <[u8; 8]>::try_from(frame).map(u64::from_be_bytes).unwrap_or(0);
        Ok(match frames {
            [name] if name == b"STOP" => Command::Stop,
            [name, symbol] if name == b"FOLLOW" && is_symbol(symbol) => Command::Follow(text(symbol)),
            [name, symbol] if name == b"FORGET" && is_symbol(symbol) => Command::Forget(text(symbol)),
            [name, post] if name == b"POST" && (1..=chat::MAX_TEXT).contains(&post.len()) => {
                let post = std::str::from_utf8(post).map_err(|_| "POST: the text is not UTF-8".to_string())?;
                Command::Post(post.to_string())
            }
            [name, n] if name == b"VALUE" && (1..=MAX_TRADE).contains(&number(n)) => Command::Value(number(n)),
            [name, key, value] if name == b"WRITE" && is_key(key) && (1..=query::MAX_VALUE).contains(&value.len()) => {
                Command::Write(key.clone(), value.clone())
            }
            _ => return Err(format!("not a command: {}", quote_all(frames))),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Stop => "STOP",
            Command::Follow(_) => "FOLLOW",
            Command::Forget(_) => "FORGET",
            Command::Post(_) => "POST",
            Command::Value(_) => "VALUE",
            Command::Write(..) => "WRITE",
        }
    }
}

/// One of an agent's network sockets, made in the agent's thread (which alone uses, and closes,
/// it: a socket is not thread-safe), with its example's maximum message size and linger 0, set
/// before its bind or connect; with --monitor on, narrated as the socket of `flag`.
/// [max size] Each agent's sockets take their example's ZMQ_MAXMSGSIZE (chat 8192 bytes, ticker
/// and valuation 256, query 1024), sized from that protocol's largest frame: a bigger frame is
/// dropped with its sender's connection. The pipes have none: inproc decodes no bytes.
/// [linger] 0 on every agent socket but two (the valuation PUB's and the query XPUB's, 1000 ms):
/// closing one drops what it still queues, which is for a peer nobody waits on any more.
fn socket(context: &zmq::Context, kind: zmq::SocketType, flag: &'static str, max: i64, watch: OnOff)
    -> Result<zmq::Socket, Failure> {
    let socket = context.socket(kind)?;
    socket.set_linger(0)?;
    socket.set_maxmsgsize(max)?;
    monitor::attach(context, &socket, flag, watch)?; // in this thread, which owns the socket
    Ok(socket)
}

// --- the chat agent: a chat client ------------------------------------------------------------

fn chat_agent(context: zmq::Context, args: TraderArgs) {
    let Some(pipe) = Pipe::connect(&context, "chat") else { return };
    let mut chat = ChatAgent { args, sent: 0, received: 0, roster: Vec::new(), quorum: false };
    let served = chat.serve(&context, &pipe);
    pipe.stopped(served, json!({ "sent": chat.sent, "received": chat.received }));
}

struct ChatAgent {
    args: TraderArgs,
    sent: u64,
    received: u64,
    roster: Vec<String>,
    quorum: bool, // a roster of --chat-clients handles was seen: everyone listens, we may talk
}

impl ChatAgent {
    fn serve(&mut self, context: &zmq::Context, pipe: &Pipe) -> Result<(), Failure> {
        // The chat client's sockets, with chat's maximum message size (8192 bytes: a 4096-byte
        // text and a margin) and linger 0 (a request still queued when we stop is for a server
        // nobody waits on any more).
        // [SUB] receives only what matches a prefix of frame 0: "" lets posts and rosters through.
        // Made, subscribed and connected first, so that its subscription starts travelling at once.
        let monitor = self.args.monitor;
        let sub = socket(context, zmq::SUB, "chat-broadcasts", chat::MAX_MESSAGE, monitor)?;
        sub.set_subscribe(b"")?;
        connect(&sub, &self.args.chat_broadcasts)?;
        // [REQ] strict lockstep: one request in flight, no second send before its reply. The loop
        // below sends a request only when none is in flight.
        let req = socket(context, zmq::REQ, "chat-requests", chat::MAX_MESSAGE, monitor)?;
        connect(&req, &self.args.chat_requests)?;
        pipe.event("ready", json!({ "handle": self.args.name }), &[]);

        let keepalive = Duration::from_millis(1000);
        let handle = self.args.name.clone();
        // [slow joiner] Posts published before our subscription reaches the server are lost for
        // us: we join only once a first broadcast came (the server sends a roster every heartbeat),
        // and post only once a roster shows --chat-clients handles, each subscribed before joining.
        let mut heard = false;
        let mut joined = false;
        let mut in_flight: Option<Option<String>> = None; // the request awaiting its reply (Some(text): a post)
        let mut waiting: VecDeque<String> = VecDeque::new(); // POSTed texts, not posted yet
        let mut last_request = Instant::now();
        loop {
            let timer = if joined && in_flight.is_none() { ms_until(last_request + keepalive) } else { -1 };
            // [poll] The pipe and both sockets at once, until a keep-alive is due (none can be:
            // until something comes; the desk has the deadline), then the pipe, REQ and SUB, in
            // PROTOCOL.md's order, each read without blocking: a STOP is seen however busy or
            // stuck the chat is. POLLIN is a hint ("nothing after all"); EINTR is no message.
            let mut items = [
                pipe.socket.as_poll_item(zmq::POLLIN),
                req.as_poll_item(zmq::POLLIN),
                sub.as_poll_item(zmq::POLLIN),
            ];
            poll(&mut items, timer)?;
            if items[0].is_readable() {
                match pipe.command()? {
                    Some(Command::Stop) => return Ok(()),
                    Some(Command::Post(text)) if waiting.len() < MAX_WAITING => waiting.push_back(text),
                    Some(Command::Post(_)) => pipe.error("bad-command", "busy"),
                    Some(other) => pipe.not_mine(&other),
                    None => {}
                }
            }
            if items[1].is_readable() {
                if let Some(reply) = recv_if_ready(&req)? {
                    // An error reply, or one that breaks the table, is fatal as for the chat client:
                    // `?` ends `serve`, and the agent reports it and stops by itself.
                    let handles = check_reply(reply)?;
                    last_request = Instant::now();
                    self.update_roster(handles.clone(), pipe);
                    match in_flight.take() {
                        Some(Some(text)) => {
                            self.sent += 1;
                            pipe.event("sent", json!({ "text": text, "roster": handles }), &[]);
                        }
                        _ => joined = true, // the join's reply, or a keep-alive's
                    }
                }
            }
            if items[2].is_readable() {
                if let Some(frames) = recv_if_ready(&sub)? {
                    heard = true;
                    match check_broadcast(frames) {
                        Ok(Broadcast::Roster(handles)) => self.update_roster(handles, pipe),
                        Ok(Broadcast::Post { handle, text }) => {
                            self.received += 1;
                            pipe.event("received", json!({ "handle": handle, "text": text }), &[handle.as_bytes()]);
                        }
                        Err(reason) => pipe.error("malformed-broadcast", &reason),
                    }
                }
            }
            // The next request, only when none is in flight (REQ's lockstep): join once our
            // subscription is live, then post what is waiting once everyone listens, and keep our
            // handle alive whenever a second passes without a request.
            if heard && in_flight.is_none() {
                let request = if !joined {
                    Some(None)
                } else if self.quorum && !waiting.is_empty() {
                    Some(waiting.pop_front())
                } else if Instant::now() >= last_request + keepalive {
                    Some(None)
                } else {
                    None
                };
                if let Some(text) = request {
                    let frames = [handle.as_bytes()].into_iter().chain(text.as_deref().map(str::as_bytes));
                    // REQ queues on its connection's pipe, which exists from connect (ZMQ_IMMEDIATE
                    // is 0) and holds one request at most: this send never waits.
                    req.send_multipart(frames, 0)?;
                    in_flight = Some(text);
                }
            }
        }
    }

    fn update_roster(&mut self, handles: Vec<String>, pipe: &Pipe) {
        self.quorum |= handles.len() as u64 >= self.args.chat_clients;
        if handles != self.roster {
            pipe.event("roster", json!({ "handles": handles }), &[]);
            self.roster = handles;
        }
    }
}

// --- the ticker agent: a ticker subscriber ----------------------------------------------------

fn ticker_agent(context: zmq::Context, args: TraderArgs) {
    let Some(pipe) = Pipe::connect(&context, "ticker") else { return };
    let mut ticker = TickerAgent { args, ticks: 0, malformed: 0 };
    let served = ticker.serve(&context, &pipe);
    pipe.stopped(served, json!({ "ticks": ticker.ticks, "malformed": ticker.malformed }));
}

struct TickerAgent {
    args: TraderArgs,
    ticks: u64,
    malformed: u64,
}

impl TickerAgent {
    fn serve(&mut self, context: &zmq::Context, pipe: &Pipe) -> Result<(), Failure> {
        let sub = socket(context, zmq::SUB, "ticks", ticker::MAX_MESSAGE, self.args.monitor)?;
        // Our own topic at once, before connecting: the publisher counts the desk as a subscriber
        // by it. The symbols come as FOLLOW commands.
        sub.set_subscribe(format!("@{}", self.args.name).as_bytes())?;
        connect(&sub, &self.args.ticks)?;
        pipe.event("ready", json!({ "name": self.args.name }), &[]);

        let mut followed: Vec<String> = Vec::new();
        loop {
            // No timer: a tick or a command wakes us.
            let mut items = [pipe.socket.as_poll_item(zmq::POLLIN), sub.as_poll_item(zmq::POLLIN)];
            poll(&mut items, -1)?;
            // The ticks first: the poll has already fetched the tick SUB delivers next, filtered by
            // the subscriptions of that moment; a FORGET served before it would meet it after the
            // unsubscribe. Served first, it is checked against the set it was filtered by.
            if items[1].is_readable() {
                if let Some(frames) = recv_if_ready(&sub)? {
                    match check_tick(&frames, &followed, self.args.seed) {
                        Ok(Tick { symbol, sequence, timestamp, price }) => {
                            self.ticks += 1;
                            let fields = json!({ "symbol": symbol, "sequence": sequence, "timestamp": timestamp,
                                                 "price": price });
                            pipe.event("tick", fields, &[symbol.as_bytes()]);
                        }
                        Err((code, reason)) => {
                            self.malformed += 1;
                            pipe.error(code, &reason);
                        }
                    }
                }
            }
            if items[0].is_readable() {
                match pipe.command()? {
                    Some(Command::Stop) => return Ok(()),
                    Some(Command::Follow(symbol)) if !followed.contains(&symbol) && followed.len() == ticker::MAX_SYMBOLS => {
                        pipe.error("bad-command", "busy") // --follow's bound holds for FOLLOW too
                    }
                    Some(Command::Follow(symbol)) if !followed.contains(&symbol) => {
                        // Its first ticks may be missed while the subscription travels upstream.
                        sub.set_subscribe(&topic(&symbol))?;
                        pipe.event("subscribed", json!({ "symbol": symbol }), &[]);
                        followed.push(symbol);
                    }
                    Some(Command::Forget(symbol)) if followed.contains(&symbol) => {
                        // SUB filters what it delivers against its current subscriptions: no tick of
                        // the symbol comes after this, even one already queued.
                        sub.set_unsubscribe(&topic(&symbol))?;
                        followed.retain(|followed| *followed != symbol);
                        pipe.event("unsubscribed", json!({ "symbol": symbol }), &[]);
                    }
                    Some(Command::Follow(_) | Command::Forget(_)) | None => {} // nothing to change
                    Some(other) => pipe.not_mine(&other),
                }
            }
        }
    }
}

// --- the valuation agent: the source and the sink in one thread -------------------------------

fn valuation_agent(context: zmq::Context, args: TraderArgs) {
    let Some(pipe) = Pipe::connect(&context, "valuation") else { return };
    let seed = args.seed;
    let mut valuation = ValuationAgent { args, tally: Tally::new(0, seed), total: 0 };
    let served = valuation.serve(&context, &pipe);
    pipe.stopped(served, json!({ "orders": valuation.tally.counted(), "total": valuation.total }));
}

struct ValuationAgent {
    args: TraderArgs,
    tally: Tally, // the last trade's results (before any VALUE: a trade of no orders)
    total: i64,   // the last complete trade's total
}

impl ValuationAgent {
    fn serve(&mut self, context: &zmq::Context, pipe: &Pipe) -> Result<(), Failure> {
        let seed = self.args.seed;
        // All three bound: the workers connect to us. 256 bytes at most, valuation's.
        let (args, max) = (&self.args, valuation::MAX_MESSAGE);
        // [PUSH] deals orders round-robin to the connected workers, never dropping: at a worker's
        // high-water mark it is mute for it, and with every worker mute (or none there) a send
        // would block. Below, orders go out only when a poll says there is room (POLLOUT).
        let orders = socket(context, zmq::PUSH, "orders", max, args.monitor)?;
        // [PULL] fair-queues readies and results from every connected worker.
        let results = socket(context, zmq::PULL, "results", max, args.monitor)?;
        // [PUB] the control channel, to every worker subscribed; it never blocks, and drops for a
        // worker not connected yet or past its high-water mark: hence a state repeated every
        // heartbeat. [linger] 1000 ms, not 0: the `finished` we publish when the trade is complete
        // still reaches the workers (they leave when they hear it) if the desk stops right after.
        let control = socket(context, zmq::PUB, "control", max, args.monitor)?;
        control.set_linger(1000)?;
        let bound = [bind(&orders, &args.orders)?, bind(&results, &args.results)?, bind(&control, &args.control)?];
        let fields = json!({ "orders": bound[0], "results": bound[1], "control": bound[2] });
        // The endpoints in frames 2-4 too: the main thread reports them as the desk's own.
        pipe.event("ready", fields, &[bound[0].as_bytes(), bound[1].as_bytes(), bound[2].as_bytes()]);

        let heartbeat = Duration::from_millis(self.args.heartbeat.into());
        let quiet = Duration::from_millis(self.args.quiet.into());
        // The state is level-triggered: published at once when it changes and every heartbeat.
        let mut state: &[u8] = b"waiting";
        control.send(state, 0)?;
        let mut next_beat = Instant::now() + heartbeat;
        let mut ready: BTreeSet<String> = BTreeSet::new(); // workers that said ready
        let mut trading = false; // a VALUE is being served, until `finished`
        let mut size = 0u64; // its orders, 1 to size
        let mut next_id = 1u64; // the next order of the first pass
        let mut again: VecDeque<u64> = VecDeque::new(); // ids to send again
        let mut resending: Vec<u64> = Vec::new(); // the ids of the last resend
        let mut quiet_since = Instant::now();
        loop {
            // (A resend still going out when the trade completes goes on: `resent` says it all went.)
            let sending = state != b"waiting" && (next_id <= size || !again.is_empty());
            let mut timer = ms_until(next_beat);
            if state == b"go" && !sending {
                timer = timer.min(ms_until(quiet_since + quiet));
            }
            // [poll] The pipe, the PUSH (for room: POLLOUT, only while an order waits for it) and
            // the PULL at once, until the next heartbeat or quiet period; then the pipe, the PUSH
            // and the PULL, in PROTOCOL.md's order. Orders that cannot go out yet wait, and we read
            // results and the pipe meanwhile: no send of this agent ever waits.
            let room = if sending { zmq::POLLOUT } else { zmq::PollEvents::empty() };
            let mut items = [
                pipe.socket.as_poll_item(zmq::POLLIN),
                orders.as_poll_item(room),
                results.as_poll_item(zmq::POLLIN),
            ];
            poll(&mut items, timer)?;
            if items[0].is_readable() {
                match pipe.command()? {
                    Some(Command::Stop) => return Ok(()),
                    Some(Command::Value(_)) if trading || !again.is_empty() => pipe.error("bad-command", "busy"),
                    Some(Command::Value(n)) => {
                        if state == b"finished" {
                            // A new trade: the previous workers have left, it waits for new readies.
                            ready.clear();
                            state = b"waiting";
                            control.send(state, 0)?;
                        }
                        trading = true;
                        size = n;
                        next_id = 1;
                        self.tally = Tally::new(n, seed);
                    }
                    Some(other) => pipe.not_mine(&other),
                    None => {}
                }
            }
            if items[1].is_writable() {
                // A batch on purpose: up to SEND_BATCH orders while there is room, then the results
                // and the pipe get their turn.
                for _ in 0..SEND_BATCH {
                    let id = if next_id <= size { next_id } else if let Some(&id) = again.front() { id } else { break };
                    // DONTWAIT: should the room be gone again, EAGAIN sends us back to the poll.
                    match orders.send_multipart(order_frames(seed, id), zmq::DONTWAIT) {
                        Ok(()) => {}
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(error) => return Err(error.into()),
                    }
                    if next_id <= size {
                        next_id += 1;
                        if next_id > size {
                            pipe.event("sent", json!({ "orders": size }), &[]);
                        }
                    } else {
                        again.pop_front();
                        if again.is_empty() {
                            pipe.event("resent", json!({ "ids": std::mem::take(&mut resending) }), &[]);
                        }
                    }
                }
            }
            if items[2].is_readable() {
                if let Some(frames) = recv_if_ready(&results)? {
                    if frames[0] == b"ready" {
                        on_ready(&frames, &mut ready, &mut pipe.out()); // the sink's own check
                    } else if self.tally.on_result(&frames, &mut pipe.out()) {
                        quiet_since = Instant::now();
                        if self.tally.is_complete() {
                            state = b"finished";
                            trading = false;
                            self.total = self.tally.total();
                            control.send(state, 0)?; // at once; the heartbeat repeats it
                            pipe.event("complete", self.tally.complete(), &[&self.total.to_be_bytes()]);
                        }
                    }
                }
            }
            // Workers that said ready before the VALUE count too.
            if trading && state == b"waiting" && ready.len() as u64 >= self.args.workers {
                // Every worker heard a control message before it said ready: none can miss `go`.
                state = b"go";
                control.send(state, 0)?;
                pipe.event("started", json!({ "workers": ready.len() }), &[]);
                quiet_since = Instant::now();
            }
            let now = Instant::now();
            let all_out = next_id > size && again.is_empty();
            if state == b"go" && all_out && now.duration_since(quiet_since) >= quiet {
                // Nothing is acknowledged in PUSH/PULL: orders queued for a worker that died are
                // gone. The missing ids go out again, the same bytes; here the source is this thread.
                resending = self.tally.resend();
                pipe.event("resend", json!({ "ids": resending }), &[]);
                again.extend(&resending);
                quiet_since = now;
            }
            if now >= next_beat {
                // [HWM] PUB never waits: at 1000 messages queued for one worker (the default mark)
                // it drops for that worker, whom the next heartbeat tells the state again.
                control.send(state, 0)?;
                next_beat = now + heartbeat;
            }
        }
    }
}

// --- the query agent: a CHP facade -----------------------------------------------------------

fn query_agent(context: zmq::Context, args: TraderArgs) {
    let Some(pipe) = Pipe::connect(&context, "query") else { return };
    let facade = Facade::new(args.subtrees.0.clone(), &args.name, 0, 0);
    let mut query = QueryAgent { args, facade };
    let served = query.serve(&context, &pipe);
    pipe.stopped(served, query.facade.summary()); // as the facade's `done`
}

struct QueryAgent {
    args: TraderArgs,
    facade: Facade, // the facade's map, watermarks and checks
}

/// Where the facade is in its steps.
#[derive(PartialEq)]
enum Phase {
    Hugz,      // reading the SUB, dropping all, until a HUGZ: our subscriptions are in place
    Snapshots, // reading the DEALER until every KTHXBAI is in; the SUB waits, unread
    Stream,    // applying KVPUBs above the watermarks
}

impl QueryAgent {
    fn serve(&mut self, context: &zmq::Context, pipe: &Pipe) -> Result<(), Failure> {
        let subtrees = self.args.subtrees.0.clone();
        let (args, max) = (&self.args, query::MAX_MESSAGE);
        // [DEALER] sends and receives freely, without REQ's lockstep and without an envelope of its
        // own: every subtree's request in flight at once, and the subtree in a KTHXBAI says which
        // request a reply answers.
        let snapshot = socket(context, zmq::DEALER, "snapshot", max, args.monitor)?;
        let updates = socket(context, zmq::SUB, "updates", max, args.monitor)?;
        // [XPUB] to the collector: a PUB that hands us the collector's subscription as a message,
        // so we know when a write can no longer be dropped. Linger 1000 ms: our last write may
        // still be queued when we stop.
        let collector = socket(context, zmq::XPUB, "collector", max, args.monitor)?;
        collector.set_linger(1000)?;
        // As the facade's: the SUB connects, then subscribes, so that its subscriptions go out in
        // the order made (query.rs); each subtree is a key prefix, and HUGZ comes last.
        connect(&updates, &args.updates)?;
        for tree in &subtrees {
            updates.set_subscribe(tree)?;
        }
        updates.set_subscribe(b"HUGZ")?;
        connect(&snapshot, &args.snapshot)?;
        connect(&collector, &args.collector)?; // always: a WRITE may come
        let names: Vec<String> = subtrees.iter().map(|tree| text(tree)).collect();
        pipe.event("ready", json!({ "name": self.args.name, "subtrees": names }), &[]);

        let mut phase = Phase::Hugz;
        let mut collector_live = false;
        let mut waiting: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new(); // WRITEs not sent yet
        let mut unread: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // written, not read back yet
        loop {
            // The pipe, then the facade's sockets in PROTOCOL.md's order: the DEALER (once a HUGZ
            // came), the SUB (not while the snapshots come: its updates wait, in order), the XPUB.
            let wanted = |yes: bool| if yes { zmq::POLLIN } else { zmq::PollEvents::empty() };
            let mut items = [
                pipe.socket.as_poll_item(zmq::POLLIN),
                snapshot.as_poll_item(wanted(phase != Phase::Hugz)),
                updates.as_poll_item(wanted(phase != Phase::Snapshots)),
                collector.as_poll_item(zmq::POLLIN),
            ];
            poll(&mut items, -1)?; // no timer to serve: STOP comes up the pipe
            if items[0].is_readable() {
                match pipe.command()? {
                    Some(Command::Stop) => return Ok(()),
                    Some(Command::Write(key, _)) if !subtrees.iter().any(|tree| key.starts_with(tree)) => {
                        // It could never be read back.
                        pipe.error("bad-command", &format!("WRITE: {} is in none of our subtrees", quote(&key)));
                    }
                    Some(Command::Write(..)) if waiting.len() >= MAX_WAITING => pipe.error("bad-command", "busy"),
                    Some(Command::Write(key, value)) => waiting.push_back((key, value)),
                    Some(other) => pipe.not_mine(&other),
                    None => {}
                }
            }
            if items[1].is_readable() {
                if let Some(frames) = recv_message(&snapshot)? {
                    if phase == Phase::Snapshots {
                        self.facade.on_snapshot(&frames, &mut pipe.out());
                        if self.facade.synced() {
                            phase = Phase::Stream;
                        }
                    } else {
                        pipe.error("unexpected-snapshot", &format!("{} after every KTHXBAI", quote(&frames[0])));
                    }
                }
            }
            if items[2].is_readable() {
                if let Some(frames) = recv_message(&updates)? {
                    if phase == Phase::Hugz {
                        // [slow joiner] The engine answers a subscription to HUGZ at once, and ours
                        // is the last made: every subtree's is in place now, so no update from here
                        // on can be missed. What came before is dropped: the snapshots cover it.
                        if frames[0] == b"HUGZ" {
                            for tree in &subtrees {
                                // DEALER's pipe exists from connect (ZMQ_IMMEDIATE is 0), and a few
                                // requests are far below its high-water mark: this never waits.
                                snapshot.send_multipart([ICANHAZ, &tree[..]], 0)?;
                            }
                            phase = Phase::Snapshots;
                        }
                    } else if self.facade.on_update(&frames, &mut pipe.out()) {
                        let (key, value) = (&frames[0], &frames[4]);
                        let sequence = self.facade.last();
                        let fields = json!({ "key": text(key), "value": hex(value), "sequence": sequence });
                        // Every update applied, for the page (an empty value: a delete).
                        pipe.event("applied", fields.clone(), &[key]);
                        if let Some(at) = unread.iter().position(|(k, v)| k == key && v == value) {
                            unread.remove(at);
                            pipe.event("read-back", fields, &[key, value]);
                        }
                    }
                }
            }
            if items[3].is_readable() {
                // The collector's subscription to everything: from now on, no write is dropped.
                if recv_frame_if_ready(&collector)?.as_deref() == Some(&b"\x01"[..]) {
                    collector_live = true;
                }
            }
            // Writes go once every snapshot is whole and the collector listens: XPUB drops what
            // it sends while no subscriber is there, and never waits.
            if phase == Phase::Stream && collector_live {
                while let Some((key, value)) = waiting.pop_front() {
                    collector.send_multipart([&key[..], &[0; 8], b"", b"", &value], 0)?; // a KVSET
                    pipe.event("wrote", json!({ "key": text(&key), "value": hex(&value), "ttl": 0 }), &[]);
                    unread.push((key, value));
                }
            }
        }
    }
}

// --- the main thread -------------------------------------------------------------------------

/// The main thread's end of an agent's pipe, and the agent's thread.
struct Agent {
    name: &'static str,
    pipe: zmq::Socket,
    thread: Option<JoinHandle<()>>,
    stop_sent: bool,    // STOP went down the pipe
    stopped: bool,      // it sent `stopped`
    acknowledged: bool, // ...in answer to STOP
}

impl Agent {
    /// Bind the pipe, then start the thread that connects to it, with a clone of the context
    /// (the same context: a handle) and its own copy of the flags.
    fn start(
        context: &zmq::Context,
        name: &'static str,
        body: fn(zmq::Context, TraderArgs),
        args: &TraderArgs,
    ) -> Result<Agent, Failure> {
        let pipe = context.socket(zmq::PAIR)?;
        pipe.set_linger(0)?;
        pipe.bind(&pipe_endpoint(name))?;
        let (context, args) = (context.clone(), args.clone());
        let thread = thread::Builder::new()
            .name(format!("desk-{}", name))
            .spawn(move || body(context, args))
            .map_err(|error| Failure::new("thread", format!("cannot start the {} agent: {}", name, error)))?;
        Ok(Agent { name, pipe, thread: Some(thread), stop_sent: false, stopped: false, acknowledged: false })
    }

    /// Hand the agent a command; false if the pipe has no room. It never waits: a pipe at its
    /// high-water mark (an agent that no longer reads), or whose agent has not connected yet,
    /// refuses it.
    fn send(&self, frames: &[&[u8]]) -> bool {
        self.pipe.send_multipart(frames, zmq::DONTWAIT).is_ok()
    }

    /// A command of the scenario: every agent is connected and reading by then.
    fn command(&self, frames: &[&[u8]]) {
        if !self.send(frames) {
            let command = String::from_utf8_lossy(frames[0]);
            log(&format!("desk: {} not handed to the {} agent: no room", command, self.name));
        }
    }

    /// The next event on the pipe (after a poll), as it is: [name, JSON, extras...]. The desk
    /// writes it (Desk::event).
    fn receive(&mut self) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        let Some(frames) = recv_if_ready(&self.pipe)? else { return Ok(None) };
        if frames.len() < 2 {
            return Ok(None); // the pipes are trusted, but nothing here indexes past the end
        }
        self.stopped |= frames[0] == b"stopped";
        Ok(Some(frames))
    }
}

/// Every line the desk writes goes through here: to stdout (from the main thread; write_line keeps
/// it whole among the socket monitors' lines) and, with --http, to the page (web.rs): its event
/// streams and its replay, as the latest line of `key` or in order. `web` None: stdout only.
fn say(web: Option<&mut Web>, line: &[u8], key: Option<&[u8]>) {
    write_line(line);
    if let Some(web) = web {
        web.publish(line, key);
    }
}

/// A page's trade: N in decimal digits, 1 to MAX_TRADE.
fn trade_size(body: &[u8]) -> Option<u64> {
    if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(body).ok()?.parse().ok().filter(|n| (1..=MAX_TRADE).contains(n))
}

const PROGRESS_EVERY: Duration = Duration::from_millis(100); // at most, while the results count changes

/// The main thread: the agents, the page, and what the scenario has seen of them.
struct Desk {
    args: TraderArgs,
    agents: Vec<Agent>,
    web: Option<Web>,                 // the page, with --http
    ticks: HashMap<Vec<u8>, u64>,     // symbol -> ticks
    followed: Vec<String>,            // the symbols the scenario waits for: --follow, FOLLOWs, FORGETs
    forgotten: bool,                  // --forget was forgotten
    posts: u64,                       // POSTs handed to the chat agent
    sent: u64,                        // posts the chat server accepted
    received: HashMap<Vec<u8>, u64>,  // handle -> posts received
    trading: bool,                    // VALUE sent, its `complete` not seen yet: a page's VALUE is 409
    orders: u64,                      // the trade's size
    results: u64,                     // ...and its results so far
    progress: (u64, Instant),         // the results count the page got last, and when
    total: Option<Vec<u8>>,           // the trade's total, as written to the engine
    read_back: bool,                  // ...and read back
    synced: usize,                    // subtrees synced
    finished: bool,                   // the scenario has been done: with a page, it stays done
}

impl Desk {
    fn new(args: &TraderArgs, web: Option<Web>) -> Desk {
        Desk {
            args: args.clone(),
            agents: Vec::new(),
            web,
            ticks: HashMap::new(),
            followed: args.follow.0.clone(),
            forgotten: false,
            posts: 0,
            sent: 0,
            received: HashMap::new(),
            trading: false,
            orders: 0,
            results: 0,
            progress: (0, Instant::now()),
            finished: false,
            total: None,
            read_back: false,
            synced: 0,
        }
    }

    /// The next event of agent `index` (after a poll), written to stdout and to the page.
    fn event(&mut self, index: usize) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        let Some(frames) = self.agents[index].receive()? else { return Ok(None) };
        // The replay keeps the latest tick of each symbol and the latest update of each key.
        let key = match (index, &frames[0][..], frames.get(2)) {
            (TICKER, b"tick", Some(symbol)) => Some([&b"tick "[..], symbol].concat()),
            (QUERY, b"applied", Some(key)) => Some([&b"applied "[..], key].concat()),
            _ => None,
        };
        let result = index == VALUATION && frames[0] == b"result";
        if index == VALUATION && frames[0] == b"complete" {
            self.progress(true); // the trade's last count, right before its end
        }
        // A `result` is not for the page (one per order: a million in a big trade): `progress` is.
        say(if result { None } else { self.web.as_mut() }, &frames[1], key.as_deref());
        self.results += u64::from(result);
        Ok(Some(frames))
    }

    /// Start-up: agent `index`'s first event is `ready` (its sockets exist), or `error` and
    /// `stopped` when it could not set them up. Returns ready's frames 2..., or None if it stopped.
    fn wait_ready(&mut self, index: usize, deadline: &Deadline) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        loop {
            if deadline.expired() {
                let name = self.agents[index].name;
                return Err(Failure::new("timeout", format!("the {} agent was not ready in time", name)));
            }
            if readable(&self.agents[index].pipe, deadline.cap(100))? {
                match self.event(index)? {
                    Some(mut frames) if frames[0] == b"ready" => return Ok(Some(frames.split_off(2))),
                    _ if self.agents[index].stopped => return Ok(None),
                    _ => {}
                }
            } else if self.agents[index].thread.as_ref().is_some_and(JoinHandle::is_finished) {
                self.agents[index].stopped = true; // it could not even connect its pipe (logged)
                return Ok(None);
            }
        }
    }

    /// The scenario's loop; with a page, the desk serves on once it is done, until a signal.
    /// Ok(whether the scenario was done).
    fn run(&mut self, stop: &AtomicBool, deadline: &Deadline) -> Result<bool, Failure> {
        loop {
            let missing = self.missing();
            self.finished |= missing.is_empty();
            if self.finished && self.web.is_none() {
                return Ok(true);
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(self.finished); // SIGTERM or SIGINT: the same clean shut-down
            }
            if deadline.expired() {
                let reason = if self.finished {
                    format!("served the page for {} ms (the scenario was done)", self.args.timeout)
                } else {
                    format!("not done after {} ms: {} still going", self.args.timeout, missing.join(", "))
                };
                return Err(Failure::new("timeout", reason));
            }
            // The four pipes and the page's STREAM socket at once, for at most 100 ms: the stop flag
            // and the page's deadlines are looked at as often. A signal ends the poll early (EINTR):
            // nothing is ready then. Then the pipes, in the agents' order, and the page.
            let mut sockets: Vec<&zmq::Socket> = self.agents.iter().map(|agent| &agent.pipe).collect();
            sockets.extend(self.web.as_ref().map(Web::socket));
            let ready = readable_each(&sockets, deadline.cap(100))?;
            for index in (0..self.agents.len()).filter(|&index| ready[index]) {
                // A pipe is drained on purpose, 100 events at most per turn: an agent reports in
                // bursts (a tick and the post it causes, a trade's results), and the main thread
                // keeps up with them; the bound keeps one busy agent from starving the others.
                for _ in 0..100 {
                    let Some(frames) = self.event(index)? else { break };
                    self.on_event(index, &frames)?;
                }
            }
            if ready.get(self.agents.len()) == Some(&true) {
                self.serve_page()?;
            }
            if let Some(web) = self.web.as_mut() {
                web.expire(Instant::now());
            }
            self.progress(false);
        }
    }

    /// Answer the page's connections (web.rs), with this desk's command handler.
    fn serve_page(&mut self) -> Result<(), Failure> {
        let Some(mut web) = self.web.take() else { return Ok(()) };
        // The handler reports each command through the Web that calls it: it gets it as a parameter.
        let served = web.receive(Instant::now(), &mut |web, target, body| self.on_command(web, target, body));
        self.web = Some(web);
        served
    }

    /// A command from the page, with its whole body: checked, reported as a `command` event, then
    /// handed to its agent (204). Or 400 (a body that breaks its rule), 409 (a trade runs).
    fn on_command(&mut self, web: &mut Web, target: &str, body: &[u8]) -> Answer {
        let bad = |why: &str| Err((400, why.to_string()));
        let report = |web: &mut Web, fields: Value| say(Some(web), event_line("command", fields).as_bytes(), None);
        match target {
            "/follow" | "/forget" => {
                if !is_symbol(body) {
                    return bad("a symbol is 1 to 8 letters A-Z");
                }
                let (command, symbol) = (if target == "/follow" { "FOLLOW" } else { "FORGET" }, text(body));
                report(web, json!({ "command": command, "symbol": symbol }));
                self.agents[TICKER].command(&[command.as_bytes(), body]);
                // The scenario waits for the symbols followed now, as after its own FORGET.
                self.followed.retain(|followed| *followed != symbol);
                if command == "FOLLOW" {
                    self.followed.push(symbol);
                } else {
                    self.forgotten |= symbol == self.args.forget;
                }
            }
            "/chat" => {
                let post = std::str::from_utf8(body).ok().filter(|_| (1..=chat::MAX_TEXT).contains(&body.len()));
                let Some(post) = post else { return bad("a post is 1 to 4096 bytes of UTF-8") };
                report(web, json!({ "command": "POST", "text": post }));
                self.agents[CHAT].command(&[b"POST", body]);
            }
            "/value" => {
                let Some(orders) = trade_size(body) else { return bad("a trade is 1 to 1000000 orders, in digits") };
                if self.trading {
                    return Err((409, "a trade runs: wait for its complete".to_string()));
                }
                report(web, json!({ "command": "VALUE", "orders": orders }));
                self.value(orders);
            }
            _ => return Err((404, "no such command".to_string())),
        }
        Ok(())
    }

    /// VALUE a trade of `orders` (the scenario's or the page's): it runs until its `complete`.
    fn value(&mut self, orders: u64) {
        self.agents[VALUATION].command(&[b"VALUE", &orders.to_be_bytes()]);
        self.trading = true;
        self.orders = orders;
        self.results = 0;
    }

    /// `progress`, to the page only (never stdout): the trade's results so far, at most every
    /// PROGRESS_EVERY while the count changes, and (`now`) right before its `complete`.
    fn progress(&mut self, now: bool) {
        let Some(web) = self.web.as_mut() else { return };
        let (count, at) = self.progress;
        if !now && (self.results == count || at.elapsed() < PROGRESS_EVERY) {
            return;
        }
        let fields = json!({ "agent": "valuation", "results": self.results, "orders": self.orders });
        web.publish(event_line("progress", fields).as_bytes(), Some(b"progress"));
        self.progress = (self.results, Instant::now());
    }

    /// Act on an event of agent `index`: its name in frame 0, what it carries in frames 2...
    fn on_event(&mut self, index: usize, frames: &[Vec<u8>]) -> Result<(), Failure> {
        match (index, &frames[0][..], &frames[2..]) {
            (_, b"stopped", _) => {
                return Err(Failure::new("agent-failed", format!("the {} agent stopped by itself", AGENTS[index])));
            }
            (TICKER, b"tick", [symbol]) => {
                let count = self.ticks.entry(symbol.clone()).or_insert(0);
                *count += 1;
                let count = *count;
                // Prices drive the chat: one post per tick, until --posts.
                if self.posts < self.args.posts {
                    self.posts += 1;
                    let text = post_text(&self.args.name, self.posts);
                    self.agents[CHAT].command(&[b"POST", text.as_bytes()]);
                }
                let forget = symbol.as_slice() == self.args.forget.as_bytes();
                if forget && !self.forgotten && count >= self.args.forget_after {
                    self.agents[TICKER].command(&[b"FORGET", symbol]);
                    self.followed.retain(|followed| *followed != self.args.forget);
                    self.forgotten = true;
                }
            }
            (CHAT, b"sent", _) => self.sent += 1, // (the valuation agent's `sent` is its orders')
            (CHAT, b"received", [handle]) => *self.received.entry(handle.clone()).or_insert(0) += 1,
            (VALUATION, b"complete", [total]) => {
                // The valuation goes to the engine, and must come back.
                let total = i64::from_be_bytes(total[..].try_into().unwrap_or_default()).to_string().into_bytes();
                self.agents[QUERY].command(&[b"WRITE", &desk_key(&self.args.name, "valuation"), &total]);
                self.total = Some(total);
                self.trading = false;
            }
            (QUERY, b"synced", _) => self.synced += 1,
            (QUERY, b"read-back", [key, value]) => {
                self.read_back |= *key == desk_key(&self.args.name, "valuation") && Some(value) == self.total.as_ref();
            }
            _ => {}
        }
        Ok(())
    }

    /// The parts of the scenario not done yet.
    fn missing(&self) -> Vec<&'static str> {
        let args = &self.args;
        let ticks = |symbol: &String| self.ticks.get(symbol.as_bytes()).copied().unwrap_or(0);
        let followed = self.followed.iter().map(ticks).all(|n| n >= args.tick_count);
        let ticker = followed && (args.forget.is_empty() || self.forgotten);
        let talkers = self.received.values().filter(|&&n| n >= args.posts).count() as u64;
        let chat = args.posts == 0 || (self.sent >= args.posts && talkers >= args.chat_clients);
        let valuation = args.trade == 0 || self.total.is_some();
        let query = self.synced >= args.subtrees.0.len() && (args.trade == 0 || self.read_back);
        let parts = [(ticker, "ticker"), (chat, "chat"), (valuation, "valuation"), (query, "query")];
        parts.into_iter().filter(|(done, _)| !done).map(|(_, name)| name).collect()
    }

    /// STOP every agent still running, all at once (they are independent); wait for each one's
    /// `stopped`, writing every event before it; join the threads. Err: an agent is stuck.
    fn shut_down(&mut self) -> Result<(), Failure> {
        let until = Instant::now() + STOP_WAIT;
        while self.agents.iter().any(|agent| !agent.stopped) && Instant::now() < until {
            let running: Vec<usize> = (0..self.agents.len()).filter(|&i| !self.agents[i].stopped).collect();
            for &index in &running {
                let agent = &mut self.agents[index];
                agent.stop_sent = agent.stop_sent || agent.send(&[b"STOP"]);
            }
            // A STOP the pipe refused (an agent that timed out at start-up may not have connected
            // yet) goes as soon as the pipe has room: POLLOUT.
            let wanted = |agent: &Agent| if agent.stop_sent { zmq::POLLIN } else { zmq::POLLIN | zmq::POLLOUT };
            let mut items: Vec<zmq::PollItem> =
                running.iter().map(|&i| self.agents[i].pipe.as_poll_item(wanted(&self.agents[i]))).collect();
            poll(&mut items, ms_until(until))?;
            let readable: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
            for (&index, readable) in running.iter().zip(readable) {
                while readable && !self.agents[index].stopped {
                    if self.event(index)?.is_none() {
                        break;
                    }
                    let agent = &mut self.agents[index];
                    agent.acknowledged = agent.stopped;
                }
            }
        }
        // Each agent closed its sockets before it said `stopped`; its thread is returning.
        for agent in self.agents.iter_mut().filter(|agent| agent.stopped) {
            if let Some(Err(_)) = agent.thread.take().map(JoinHandle::join) {
                log(&format!("desk: the {} agent's thread panicked", agent.name));
            }
        }
        let stuck: Vec<&str> = self.agents.iter().filter(|agent| !agent.stopped).map(|agent| agent.name).collect();
        if stuck.is_empty() {
            Ok(())
        } else {
            let (stuck, wait) = (stuck.join(", "), STOP_WAIT.as_millis());
            let reason = format!("no stopped from the {} agent within {} ms of STOP", stuck, wait);
            Err(Failure::new("agent-stuck", reason))
        }
    }
}

/// Block (SIG_BLOCK) or unblock (SIG_UNBLOCK) SIGTERM and SIGINT in the calling thread. A thread
/// started meanwhile inherits the mask: the kernel then delivers them to the main thread only.
fn mask_stop_signals(how: libc::c_int) {
    // SAFETY: a sigset_t initialised by sigemptyset, and the calling thread's own signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn run_trader(args: TraderArgs) -> Result<(), Failure> {
    // 1. Every flag checked (exit 2) before any thread starts. The process's one context; each
    //    agent gets a clone of this handle, and makes its own sockets. With --http, the page's
    //    STREAM socket is bound now: a failed bind is `error` `bind` and exit 1, before any thread.
    //    Signals blocked before any thread of ours starts (the handler's own thread and the agents
    //    inherit the mask; libzmq's I/O threads block every signal themselves); the handler only
    //    raises a flag, which the loop looks at.
    check_flags(&args);
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let web = if args.http.is_empty() { None } else { Some(Web::new(&context, &args.http, args.monitor)?) };
    mask_stop_signals(libc::SIG_BLOCK);
    let stop = stop_signal()?;

    // 2. One agent at a time: bind its pipe, start its thread, wait for its `ready`. Each ready
    //    line is then the agent's own proof that its sockets exist, in a fixed order.
    let bodies: [fn(zmq::Context, TraderArgs); 4] = [chat_agent, ticker_agent, valuation_agent, query_agent];
    let mut desk = Desk::new(&args, web);
    let mut failure = None; // why the desk fails, once it has shut down
    let mut bound = Vec::new(); // the valuation agent's endpoints: orders, results, control
    for (index, (name, body)) in AGENTS.into_iter().zip(bodies).enumerate() {
        match Agent::start(&context, name, body, &args) {
            Ok(agent) => desk.agents.push(agent),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
        match desk.wait_ready(index, &deadline) {
            Ok(Some(endpoints)) if index == VALUATION => bound = endpoints.iter().map(|frame| text(frame)).collect(),
            Ok(Some(_)) => {}
            Ok(None) => {
                failure = Some(Failure::new("agent-failed", format!("the {} agent stopped before it was ready", name)));
                break;
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }

    // 3. Signals for the main thread from now on (one that came during start-up is delivered now).
    mask_stop_signals(libc::SIG_UNBLOCK);
    let mut complete = false;
    if failure.is_none() {
        bound.resize(3, String::new()); // the pipes are trusted, but nothing here indexes past the end
        let http = desk.web.as_ref().map_or(String::new(), |web| web.endpoint.clone());
        let fields =
            json!({ "name": args.name, "orders": bound[0], "results": bound[1], "control": bound[2], "http": http });
        say(desk.web.as_mut(), event_line("ready", fields).as_bytes(), None);
        if let Some(web) = desk.web.as_mut() {
            web.serving(); // the replay's start-up lines end with this ready
        }
        // 4. The scenario's first commands, then its loop.
        for symbol in &args.follow.0 {
            desk.agents[TICKER].command(&[b"FOLLOW", symbol.as_bytes()]);
        }
        if args.trade > 0 {
            desk.value(args.trade);
        }
        match desk.run(&stop, &deadline) {
            Ok(done) => complete = done,
            Err(error) => failure = Some(error),
        }
    }

    // Shut-down: STOP, every `stopped`, join the threads...
    if let Err(stuck) = desk.shut_down() {
        // ...but a stuck agent still has sockets open, and terminating the context would wait for
        // them for ever: leave it, and exit (the process ends the thread).
        std::mem::forget(context);
        if let Some(failure) = failure {
            emit("error", json!({ "code": failure.code, "reason": failure.reason }));
        }
        return Err(stuck);
    }
    // ...close the page's socket (linger 0: an open event stream has nothing worth waiting for)
    // and our pipe ends, then terminate the context: with the last handle gone (every socket
    // holds one), zmq_ctx_term returns once the lingers of the agents' closed sockets have run out.
    if let Some(web) = desk.web.take() {
        web.close();
    }
    let agents: Vec<&str> = desk.agents.iter().filter(|agent| agent.acknowledged).map(|agent| agent.name).collect();
    drop(desk);
    drop(context);
    match failure {
        Some(failure) => Err(failure),
        None => {
            emit("done", json!({ "complete": complete, "agents": agents }));
            Ok(())
        }
    }
}
