//! chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{value_parser, Args, Subcommand};
use serde_json::json;

use crate::contract::{
    bind, connect, emit, log, ms_until, name, readable, readable_each, recv_if_ready, stop_signal, Deadline, Failure,
    MAX_NAME,
};
use crate::monitor::{self, Monitor, OnOff};
use crate::security::{secure_client, secure_server, ClientFlags, Mechanism, ServerFlags};

const MAX_HANDLE: usize = MAX_NAME; // bytes of UTF-8
pub const MAX_TEXT: usize = 4096; // bytes of UTF-8
/// [max size] ZMQ_MAXMSGSIZE, 8192 bytes on all four sockets, set before bind or connect: libzmq
/// drops a bigger frame, and its sender's connection, before we ever see it, so no peer can make us
/// allocate without bound (a subscription is a frame too). The largest legal frame is a 4096-byte
/// text; the margin lets a text a little too long still reach the server's own `text-too-long`
/// rule, and leaves room for CURVE's per-frame overhead.
pub const MAX_MESSAGE: i64 = 8192;

#[derive(Subcommand)]
pub enum Role {
    /// keep the roster and relay posts
    Server(ServerArgs),
    /// join, post --count texts, receive everyone's posts
    Client(ClientArgs),
}

#[derive(Args)]
pub struct Endpoints {
    #[arg(long, default_value = "tcp://127.0.0.1:5555")]
    requests: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5556")]
    broadcasts: String,
}

#[derive(Args)]
pub struct ServerArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// --security, --curve-secret, --curve-clients, --plain-user, --plain-password (security.rs)
    #[command(flatten)]
    security: ServerFlags,
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(1..))]
    heartbeat: u32,
    #[arg(long, default_value_t = 5000, value_parser = value_parser!(u32).range(1..))]
    expiry: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct ClientArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// --security, --curve-secret, --curve-public, --curve-server, --plain-user, --plain-password
    #[command(flatten)]
    security: ClientFlags,
    #[arg(long, default_value_t = 30000)]
    timeout: u32,
    #[arg(long, value_parser = name)]
    name: String,
    #[arg(long, default_value_t = 5)]
    count: u64,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..))]
    clients: u64,
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..))]
    keepalive: u32,
    #[arg(long, default_value_t = 2000, value_parser = value_parser!(u32).range(1..))]
    retry: u32,
    #[arg(long, default_value_t = 0)]
    pace: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::Server(args) => run_server(args),
        Role::Client(args) => Client::new(args)?.run(),
    }
}

pub fn post_text(name: &str, number: u64) -> String {
    format!("{} #{}: héllo wörld 🌍", name, number)
}

/// The number i of a text `<handle> #<i>: ...` (1 to 9 ASCII digits), or None.
fn post_number(handle: &str, text: &str) -> Option<u64> {
    let (digits, _) = text.strip_prefix(handle)?.strip_prefix(" #")?.split_once(':')?;
    if (1..=9).contains(&digits.len()) && digits.bytes().all(|byte| byte.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

// --- server ----------------------------------------------------------------------------------

/// A well-formed request as (handle, text if a post), or its first broken rule as (code, reason).
fn check_request(frames: &[Vec<u8>]) -> Result<(&str, Option<&str>), (&'static str, String)> {
    // [multipart] A request arrives whole or not at all: recv_if_ready hands over every frame of
    // one message. How many there are is the peer's choice, so it is checked, never assumed.
    let (handle, text) = match frames {
        [handle] => (handle, None),
        [handle, text] => (handle, Some(text)),
        _ => {
            let reason = format!("expected 1 or 2 frames, got {}", frames.len());
            return Err(("frame-count", reason));
        }
    };
    if handle.is_empty() {
        return Err(("empty-handle", "the handle frame is empty".into()));
    }
    if handle.len() > MAX_HANDLE {
        let reason = format!("the handle has {} bytes, at most {}", handle.len(), MAX_HANDLE);
        return Err(("handle-too-long", reason));
    }
    if let Some(text) = text {
        if text.is_empty() {
            return Err(("empty-text", "the text frame is empty".into()));
        }
        if text.len() > MAX_TEXT {
            let reason = format!("the text has {} bytes, at most {}", text.len(), MAX_TEXT);
            return Err(("text-too-long", reason));
        }
    }
    Ok((utf8(handle)?, text.map(|text| utf8(text)).transpose()?))
}

/// A well-formed post from a handle the server does not know: join first. After a restart, this
/// is how a posting client learns that the server has forgotten it.
fn check_post<'a>(
    request: (&'a str, Option<&'a str>),
    roster: &BTreeMap<Vec<u8>, Instant>,
) -> Result<(&'a str, Option<&'a str>), (&'static str, String)> {
    match request {
        (handle, Some(_)) if !roster.contains_key(handle.as_bytes()) => {
            Err(("unknown-handle", "join with [handle] before posting".into()))
        }
        request => Ok(request),
    }
}

fn utf8(frame: &[u8]) -> Result<&str, (&'static str, String)> {
    std::str::from_utf8(frame).map_err(|error| ("invalid-utf8", format!("not UTF-8: {}", error)))
}

fn run_server(args: ServerArgs) -> Result<(), Failure> {
    let stop = stop_signal()?;
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [REP] answers each request exactly once, in order: it takes one request, and sends nothing
    // until that request is answered. It keeps the envelope (the REQ's empty delimiter) to route
    // the reply back, so we see only the frames the client sent.
    let requests = context.socket(zmq::REP)?;
    // [linger] 0 on both sockets: the server stops only when told to, and a reply or broadcast
    // still queued then is for nobody who waits on it; closing drops it, so exit never waits.
    requests.set_linger(0)?;
    requests.set_maxmsgsize(MAX_MESSAGE)?;
    // [PUB] sends every broadcast to every subscriber whose prefix filter matches; it never blocks,
    // and drops for a subscriber that is not connected yet (the slow joiner) or past its HWM.
    let broadcasts = context.socket(zmq::PUB)?;
    // [HWM] PUB keeps at most 1000 messages (the default high-water mark) for each subscriber; past
    // that it drops that subscriber's broadcasts, never blocks, so a stalled client cannot stall us.
    // The scenario's posts stay far below it.
    broadcasts.set_linger(0)?;
    broadcasts.set_maxmsgsize(MAX_MESSAGE)?; // subscriptions come in, and libzmq decodes them
    // Security options before binding; the ZAP handler, if any, is bound first (security.rs).
    let sockets = [("requests", &requests), ("broadcasts", &broadcasts)];
    let (zap, monitors) = secure_server(&context, &args.security, &sockets)?;
    if monitors.is_empty() {
        // Under plain or curve the handshake watcher holds each socket's one monitor: no --monitor.
        monitor::attach(&context, &requests, "requests", args.monitor)?;
        monitor::attach(&context, &broadcasts, "broadcasts", args.monitor)?;
    }
    let requests_bound = bind(&requests, &args.endpoints.requests)?;
    let broadcasts_bound = bind(&broadcasts, &args.endpoints.broadcasts)?;
    let mechanism = args.security.mechanism().name();
    emit("ready", json!({ "requests": requests_bound, "broadcasts": broadcasts_bound, "security": mechanism }));

    // handle (UTF-8 bytes, so the map's order is the bytes' order) -> last seen
    let mut roster: BTreeMap<Vec<u8>, Instant> = BTreeMap::new();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut next_beat = Instant::now();

    let broadcast_roster = |roster: &BTreeMap<Vec<u8>, Instant>| {
        // Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
        let frames = std::iter::once(&b""[..]).chain(roster.keys().map(Vec::as_slice));
        broadcasts.send_multipart(frames, 0)
    };

    // Everything the loop serves, in the order it serves them: the ZAP handler, the handshake
    // watchers, then REP. A handshake waiting for our ZAP answer gets it in the same turn.
    let mut polled: Vec<&zmq::Socket> = zap.iter().map(|zap| &zap.socket).collect();
    polled.extend(monitors.iter().map(|monitor| &monitor.socket));
    polled.push(&requests);

    while !stop.load(Ordering::SeqCst) {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("still serving after {} ms", args.timeout)));
        }
        // [poll] One poll for every socket, until the next heartbeat at most (never past the
        // deadline), then non-blocking receives: the heartbeat, the deadline and the stop flag get
        // their turn without a second thread. POLLIN is a hint, and a signal (EINTR) is no message.
        let mut ready = readable_each(&polled, deadline.cap(ms_until(next_beat)))?.into_iter();
        if let Some(zap) = &zap {
            if ready.next() == Some(true) {
                zap.answer()?;
            }
        }
        for monitor in &monitors {
            if ready.next() == Some(true) {
                if let Some((failure, value)) = monitor.handshake_failure()? {
                    // A refused peer is its own problem: report it and go on serving the others.
                    let fields = json!({ "socket": monitor.name, "failure": failure, "value": value });
                    emit("handshake-failed", fields);
                }
            }
        }
        // None: REP dropped what it could not answer (no request after all).
        let request = if ready.next() == Some(true) { recv_if_ready(&requests)? } else { None };
        if let Some(frames) = request {
            match check_request(&frames).and_then(|request| check_post(request, &roster)) {
                Err((code, reason)) => {
                    rejected += 1;
                    requests.send_multipart([&b""[..], code.as_bytes()], 0)?;
                    emit("error", json!({ "code": code, "reason": reason }));
                }
                Ok((handle, text)) => {
                    let joined = roster.insert(handle.as_bytes().to_vec(), Instant::now()).is_none();
                    if let Some(text) = text {
                        broadcasts.send_multipart(&frames, 0)?; // [handle, text], exactly as posted
                        emit("posted", json!({ "handle": handle, "text": text }));
                    }
                    accepted += 1;
                    requests.send_multipart(roster.keys(), 0)?;
                    if joined {
                        emit("joined", json!({ "handle": handle }));
                        broadcast_roster(&roster)?;
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= next_beat {
            let expiry = Duration::from_millis(args.expiry.into());
            roster.retain(|handle, seen| {
                let alive = now.duration_since(*seen) <= expiry;
                if !alive {
                    emit("expired", json!({ "handle": String::from_utf8_lossy(handle) }));
                }
                alive
            });
            broadcast_roster(&roster)?;
            next_beat = now + Duration::from_millis(args.heartbeat.into());
        }
    }

    emit("done", json!({ "requests": accepted, "rejected": rejected }));
    Ok(()) // dropping the sockets and then the context closes them; linger 0: nothing waits
}

// --- client ----------------------------------------------------------------------------------

struct Client {
    args: ClientArgs,
    deadline: Deadline,
    context: zmq::Context,
    sub: zmq::Socket,
    /// SUB's handshake failures, under plain or curve
    monitor: Option<Monitor>,
    req: zmq::Socket,
    roster: Vec<String>,
    /// the roster of step 4: whose posts we wait for, and who must rejoin first
    peers: Vec<String>,
    /// handle -> the highest post number received from it
    last: HashMap<String, u64>,
    /// handle -> the different texts received from it
    texts: HashMap<String, HashSet<String>>,
    received: u64,
    /// a roster broadcast listed us since our last join
    listed: bool,
    /// the server forgot us (it restarted): rejoin before anything else
    forgotten: bool,
    last_request: Instant,
}

impl Client {
    fn new(args: ClientArgs) -> Result<Self, Failure> {
        let deadline = Deadline::new(args.timeout);
        let context = zmq::Context::new();
        // SUB first, so that its subscription starts travelling as early as possible. Under plain
        // or curve, its handshakes are watched until the first broadcast.
        let handshakes = args.security.mechanism() != Mechanism::Null;
        let (sub, monitor) = open_broadcasts(&context, &args, handshakes)?;
        let req = open_requests(&context, &args)?;
        Ok(Client {
            args,
            deadline,
            context,
            sub,
            monitor,
            req,
            roster: Vec::new(),
            peers: Vec::new(),
            last: HashMap::new(),
            texts: HashMap::new(),
            received: 0,
            listed: false,
            forgotten: false,
            last_request: Instant::now(),
        })
    }

    /// One round trip, Lazy Pirate style, `[handle]` (join, keep-alive) or `[handle, text]` (post):
    /// the reply's frames.
    fn request(&mut self, text: Option<&str>) -> Result<Vec<Vec<u8>>, Failure> {
        let frames: Vec<&[u8]> = [self.args.name.as_bytes()].into_iter().chain(text.map(str::as_bytes)).collect();
        self.req.send_multipart(&frames, 0)?;
        let reply = loop {
            if let Some(reply) = self.wait_for_reply()? {
                break reply;
            }
            // The reply is lost, perhaps with the server. A REQ socket cannot send again before it
            // has received, so it is thrown away (linger 0: the lost request dies with it), and the
            // same request goes out again on a new one.
            emit("retried", json!({ "text": text.unwrap_or_default() }));
            self.req = open_requests(&self.context, &self.args)?; // the old one is closed as it is replaced
            self.req.send_multipart(&frames, 0)?;
        };
        self.last_request = Instant::now();
        Ok(reply)
    }

    /// The reply, or None once --retry ms passed without one; `no-reply` at the deadline.
    fn wait_for_reply(&self) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        let until = Instant::now() + Duration::from_millis(self.args.retry.into());
        while Instant::now() < until {
            if self.deadline.expired() {
                let reason = format!("no reply from the server within {} ms", self.args.timeout);
                return Err(Failure::new("no-reply", reason));
            }
            // None: REQ dropped a reply it could not route, and the wait goes on.
            if readable(&self.req, self.deadline.cap(ms_until(until)))? {
                if let Some(reply) = recv_if_ready(&self.req)? {
                    return Ok(Some(reply));
                }
            }
        }
        Ok(None)
    }

    /// A keep-alive `[handle]`, which is also how a client joins: the roster of the reply.
    fn keep_alive(&mut self) -> Result<Vec<String>, Failure> {
        let roster = check_reply(self.request(None)?)?;
        self.update_roster(&roster);
        Ok(roster)
    }

    fn join(&mut self) -> Result<Vec<String>, Failure> {
        self.listed = false;
        self.keep_alive()
    }

    /// A post: the roster of the reply, or None when the server answered `unknown-handle` (it
    /// has forgotten us: rejoin, then send the same post again).
    fn post(&mut self, text: &str) -> Result<Option<Vec<String>>, Failure> {
        let reply = self.request(Some(text))?;
        if reply == [&b""[..], b"unknown-handle"] {
            self.forgotten = true;
            return Ok(None);
        }
        let roster = check_reply(reply)?;
        self.update_roster(&roster);
        Ok(Some(roster))
    }

    fn update_roster(&mut self, roster: &[String]) {
        if roster != self.roster.as_slice() {
            self.roster = roster.to_vec();
            emit("roster", json!({ "handles": roster }));
        }
    }

    fn on_broadcast(&mut self, frames: Vec<Vec<u8>>) {
        match check_broadcast(frames) {
            Ok(Broadcast::Roster(roster)) => {
                self.update_roster(&roster);
                if roster.contains(&self.args.name) {
                    self.listed = true;
                } else if self.listed {
                    // After one with us, a roster without us: the server has forgotten us.
                    self.forgotten = true;
                    self.listed = false;
                }
            }
            Ok(Broadcast::Post { handle, text }) => self.on_post(handle, text),
            Err(reason) => emit("error", json!({ "code": "malformed-broadcast", "reason": reason })),
        }
    }

    fn on_post(&mut self, handle: String, text: String) {
        self.received += 1;
        self.texts.entry(handle.clone()).or_default().insert(text.clone());
        emit("received", json!({ "handle": handle, "text": text }));
        if let Some(number) = post_number(&handle, &text) {
            let last = self.last.get(&handle).copied().unwrap_or(0);
            // Each number skipped (up to --count) is a post lost with a server that died.
            for missing in last + 1..number.min(self.args.count + 1) {
                emit("missed", json!({ "handle": handle, "number": missing }));
            }
            self.last.insert(handle, last.max(number));
        }
    }

    /// --count different texts from `peer`, or its post numbered --count (posts before it may have
    /// been lost with a server that died).
    fn heard_all(&self, peer: &str) -> bool {
        let count = self.args.count;
        self.texts.get(peer).map_or(0, |texts| texts.len() as u64) >= count
            || self.last.get(peer).copied().unwrap_or(0) >= count
    }

    /// One turn of the client's loop: rejoin, if the server has forgotten us; else poll SUB until a
    /// keep-alive is due (or `until`, if given, comes first), then handle one broadcast, or send
    /// the keep-alive when it is due. (REQ is polled in wait_for_reply: its lockstep puts it there.)
    fn serve(&mut self, until: Option<Instant>) -> Result<(), Failure> {
        if self.forgotten {
            return self.rejoin();
        }
        if self.deadline.expired() {
            return Err(Failure::new("timeout", format!("not done after {} ms", self.args.timeout)));
        }
        let due = self.last_request + Duration::from_millis(self.args.keepalive.into());
        let wait = ms_until(until.map_or(due, |until| until.min(due)));
        if let Some(frames) = self.next_broadcast(wait)? {
            self.on_broadcast(frames);
        }
        // The timer, even after a broadcast (a stream of them must not starve it), unless that
        // broadcast told us the server forgot us: then the next turn rejoins, and a keep-alive now
        // would join us without the slow joiner's wait.
        if !self.forgotten && Instant::now() >= due {
            self.keep_alive()?; // silent handles expire from the roster
        }
        Ok(())
    }

    /// A broadcast's frames, or None if none came within `wait_ms` (capped by the deadline).
    fn next_broadcast(&self, wait_ms: i64) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        if readable(&self.sub, self.deadline.cap(wait_ms))? {
            recv_if_ready(&self.sub)
        } else {
            Ok(None)
        }
    }

    /// The server forgot us: join again as a newcomer (PROTOCOL.md, "Restarts").
    fn rejoin(&mut self) -> Result<(), Failure> {
        // What the old SUB already holds came from the old server, or the new one: take it, then
        // throw the socket away. Which of its rosters are older than our join, nothing tells; a new
        // SUB holds none.
        while let Some(frames) = recv_if_ready(&self.sub)? {
            self.on_broadcast(frames);
        }
        // No handshake watcher this time (the first broadcast proved the credentials): --monitor.
        let (sub, monitor) = open_broadcasts(&self.context, &self.args, false)?;
        self.monitor = monitor; // the old SUB's handshake watcher, if any, is closed here
        self.sub = sub; // and the old SUB as it is replaced (linger 0: what it holds dies with it)
        // Slow joiner, again: the new SUB's first broadcast comes from the server that forgot us,
        // once our subscription has reached it. Until then, no request, not even a keep-alive.
        let frames = self.wait_for_first_broadcast()?;
        self.on_broadcast(frames);
        self.forgotten = false;
        let handles = self.join()?;
        emit("rejoined", json!({ "handles": handles }));
        // Everyone listens before anyone talks, again: every peer rejoins the same way.
        while !self.peers.iter().all(|peer| self.roster.contains(peer)) {
            self.serve(None)?;
        }
        Ok(())
    }

    /// The first broadcast's frames: at startup, and on the new SUB of each rejoin.
    fn wait_for_first_broadcast(&self) -> Result<Vec<Vec<u8>>, Failure> {
        // [slow joiner] A subscription reaches the server some time after connect returns, and
        // what the server publishes before that is lost for us. The server broadcasts a roster at
        // least every heartbeat: the first broadcast of any kind proves our subscription is live,
        // and only then do we send anything (a join), so no post of a peer can miss us.
        // At startup under plain or curve, SUB's handshake watcher is polled too, first (a rejoin's
        // SUB has none): the first handshake failure ends the client, since the same keys or
        // password will not do better on the next reconnect (and a refused SUB means a refused
        // REQ). Once a broadcast has arrived, the handshake has succeeded.
        let mut polled: Vec<&zmq::Socket> = self.monitor.iter().map(|monitor| &monitor.socket).collect();
        polled.push(&self.sub);
        loop {
            if self.deadline.expired() {
                return Err(Failure::new("timeout", "no broadcast from the server"));
            }
            // No timer to serve here (no request goes out before the first broadcast): at most
            // --keepalive ms, so that the deadline is looked at.
            let mut ready = readable_each(&polled, self.deadline.cap(self.args.keepalive.into()))?.into_iter();
            if let Some(monitor) = &self.monitor {
                if ready.next() == Some(true) {
                    if let Some((failure, value)) = monitor.handshake_failure()? {
                        let reason = format!("handshake failed on {}: {} (value {})", monitor.name, failure, value);
                        return Err(Failure::new("refused", reason));
                    }
                }
            }
            if ready.next() == Some(true) {
                if let Some(frames) = recv_if_ready(&self.sub)? {
                    return Ok(frames);
                }
            }
        }
    }

    fn run(mut self) -> Result<(), Failure> {
        let frames = self.wait_for_first_broadcast()?;
        self.on_broadcast(frames);
        self.join()?;
        emit("ready", json!({ "handle": self.args.name, "security": self.args.security.mechanism().name() }));

        // Everyone listens before anyone talks: wait for --clients handles, all subscribed.
        while (self.roster.len() as u64) < self.args.clients {
            self.serve(None)?;
        }
        self.peers = self.roster.clone();
        log(&format!("{}: {} peers, posting {} texts", self.args.name, self.peers.len(), self.args.count));

        let count = self.args.count;
        let mut number = 1;
        while number <= count {
            let text = post_text(&self.args.name, number);
            let Some(roster) = self.post(&text)? else {
                self.rejoin()?; // unknown-handle: rejoin, then the same post again
                continue;
            };
            emit("sent", json!({ "text": text, "roster": roster }));
            number += 1;
            // --pace: broadcasts (and keep-alives, and a rejoin) are served meanwhile, never a sleep.
            let until = Instant::now() + Duration::from_millis(self.args.pace.into());
            while Instant::now() < until {
                self.serve(Some(until))?;
            }
        }

        while !self.peers.iter().all(|peer| self.heard_all(peer)) {
            self.serve(None)?;
        }
        emit("done", json!({ "sent": count, "received": self.received }));
        Ok(())
    }
}

/// A new SUB socket, subscribed to everything and connected: at startup, and again in each rejoin.
/// With `handshakes` (at startup under plain or curve), its handshake failures are watched (the
/// Monitor returned) instead of its connections: libzmq allows one monitor per socket.
fn open_broadcasts(
    context: &zmq::Context,
    args: &ClientArgs,
    handshakes: bool,
) -> Result<(zmq::Socket, Option<Monitor>), Failure> {
    // [SUB] receives only what matches a subscription, a prefix of frame 0; "" lets posts and
    // rosters through. Subscribed before connect, so the subscription leaves with the connection.
    let sub = context.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_maxmsgsize(MAX_MESSAGE)?;
    sub.set_subscribe(b"")?;
    secure_client(&sub, &args.security)?;
    // Attached before connect: the first handshake, or connection, is seen.
    let monitor = if handshakes {
        Some(Monitor::new(context, &sub, "broadcasts")?)
    } else {
        monitor::attach(context, &sub, "broadcasts", args.monitor)?;
        None
    };
    connect(&sub, &args.endpoints.broadcasts)?;
    Ok((sub, monitor))
}

/// A new REQ socket, connected: at startup, and for each request Lazy Pirate sends again.
fn open_requests(context: &zmq::Context, args: &ClientArgs) -> Result<zmq::Socket, Failure> {
    // [REQ] strict lockstep: send, receive, send, receive... One request in flight, and no second
    // send before its reply. So when a reply is lost, the socket is of no more use: Lazy Pirate
    // throws it away and comes here for a new one, with the same options.
    let req = context.socket(zmq::REQ)?;
    // [linger] 0: closing a REQ whose reply is lost drops the request it still queues for a dead
    // server; and we leave only once every request has been answered, so nothing else is queued.
    req.set_linger(0)?;
    req.set_maxmsgsize(MAX_MESSAGE)?;
    secure_client(&req, &args.security)?;
    monitor::attach(context, &req, "requests", args.monitor)?;
    connect(&req, &args.endpoints.requests)?;
    Ok(req)
}

/// The roster of a reply, or the fatal error the reply is: an error reply to our own request
/// (`rejected`), or one that breaks the reply table (`malformed-reply`).
pub fn check_reply(reply: Vec<Vec<u8>>) -> Result<Vec<String>, Failure> {
    match reply.as_slice() {
        [empty, code] if empty.is_empty() => {
            let code = String::from_utf8_lossy(&code[..code.len().min(32)]).into_owned();
            Err(Failure::new("rejected", format!("the server rejected our request: {}", code)))
        }
        [empty, ..] if empty.is_empty() => {
            let reason = format!("an error reply has 2 frames, got {}", reply.len());
            Err(Failure::new("malformed-reply", reason))
        }
        handles => roster_of(handles).ok_or_else(|| {
            let reason = format!("a roster frame is not a handle (1 to {} bytes of UTF-8)", MAX_HANDLE);
            Failure::new("malformed-reply", reason)
        }),
    }
}

/// A broadcast: the server's roster, or a post.
pub enum Broadcast {
    Roster(Vec<String>),
    Post { handle: String, text: String },
}

/// What a broadcast is, or why it is malformed (`malformed-broadcast`).
pub fn check_broadcast(frames: Vec<Vec<u8>>) -> Result<Broadcast, String> {
    match frames.as_slice() {
        [server, handles @ ..] if server.is_empty() => roster_of(handles)
            .map(Broadcast::Roster)
            .ok_or_else(|| format!("a roster frame is not a handle (1 to {} bytes of UTF-8)", MAX_HANDLE)),
        [handle, text] => match (handle_of(handle), text_of(text)) {
            (None, _) => Err(format!("a post's handle is not 1 to {} bytes of UTF-8", MAX_HANDLE)),
            (_, None) => Err(format!("a post's text is not 1 to {} bytes of UTF-8", MAX_TEXT)),
            (Some(handle), Some(text)) => Ok(Broadcast::Post { handle: handle.into(), text: text.into() }),
        },
        _ => Err(format!("a post has 2 frames, got {}", frames.len())),
    }
}

/// The handle a frame is (1 to 32 bytes of UTF-8), or None: the one check of every handle a
/// client receives, in a roster reply, a roster broadcast or a post.
fn handle_of(frame: &[u8]) -> Option<&str> {
    std::str::from_utf8(frame).ok().filter(|handle| (1..=MAX_HANDLE).contains(&handle.len()))
}

/// The text of a post (1 to 4096 bytes of UTF-8), or None.
fn text_of(frame: &[u8]) -> Option<&str> {
    std::str::from_utf8(frame).ok().filter(|text| (1..=MAX_TEXT).contains(&text.len()))
}

/// Every frame as a handle, or None if one is not a handle. Neither their order nor repeats are
/// checked here (the orchestrator checks the order).
fn roster_of(frames: &[Vec<u8>]) -> Option<Vec<String>> {
    frames.iter().map(|frame| handle_of(frame).map(str::to_string)).collect()
}
