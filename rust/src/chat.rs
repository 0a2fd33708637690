//! chat: a roster server over REQ/REP with a PUB broadcast channel (examples/chat/PROTOCOL.md).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{value_parser, Args, Subcommand};
use serde_json::json;

use crate::events::{
    bind, connect, emit, log, ms_until, name, plain_credential, readable, readable_each, recv_if_ready, stop_signal,
    z85_key, Admit, Deadline, Failure, Mechanism, Monitor, Zap, MAX_NAME,
};
use crate::monitor::{self, OnOff};

const MAX_HANDLE: usize = MAX_NAME; // bytes of UTF-8
pub const MAX_TEXT: usize = 4096; // bytes of UTF-8
/// ZMQ_MAXMSGSIZE on every socket: libzmq drops a bigger frame, and the connection of its sender,
/// before we ever see it, so no peer can make us allocate without bound. The largest legal frame
/// is a 4096-byte text; the margin lets a text that is too long still reach our own
/// `text-too-long` rule, and leaves room for CURVE's per-frame overhead.
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

/// --security and the credentials both roles take (examples/README.md, "Security"). A flag of
/// the mechanism chosen is required; those of another mechanism are not used (but still checked).
#[derive(Args)]
pub struct Security {
    #[arg(long, value_enum, default_value_t = Mechanism::Null)]
    security: Mechanism,
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_secret: Option<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_user: Option<String>,
    #[arg(long, value_parser = plain_credential, required_if_eq("security", "plain"))]
    plain_password: Option<String>,
}

#[derive(Args)]
pub struct ServerArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(flatten)]
    security: Security,
    /// the client public keys admitted under curve; absent: any client that knows our public key
    #[arg(long, value_parser = z85_key, value_delimiter = ',')]
    curve_clients: Vec<String>,
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
    #[command(flatten)]
    security: Security,
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_public: Option<String>,
    /// the server's public key, learnt out of band
    #[arg(long, value_parser = z85_key, required_if_eq("security", "curve"))]
    curve_server: Option<String>,
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

/// A CURVE key flag as a socket option value: its 40 characters of Z85, which libzmq decodes.
/// (clap made the flag required under curve, where this is called.)
fn key(flag: &Option<String>) -> &[u8] {
    flag.as_deref().unwrap_or_default().as_bytes()
}

// --- server ----------------------------------------------------------------------------------

/// A well-formed request as (handle, text if a post), or its first broken rule as (code, reason).
fn check_request(frames: &[Vec<u8>]) -> Result<(&str, Option<&str>), (&'static str, String)> {
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

/// Make `socket` a security server of the chosen mechanism. Set before `bind`: the options are
/// read as each connection starts.
fn secure_server(socket: &zmq::Socket, security: &Security) -> Result<(), Failure> {
    match security.security {
        Mechanism::Null => {}
        // The client sends a username and password, in the clear; our ZAP handler judges them.
        Mechanism::Plain => socket.set_plain_server(true)?,
        // Clients must know our public key; every frame is then encrypted.
        Mechanism::Curve => {
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(key(&security.curve_secret))?;
        }
    }
    Ok(())
}

fn run_server(args: ServerArgs) -> Result<(), Failure> {
    let stop = stop_signal()?;
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let mechanism = args.security.security;
    // ZAP, bound before our sockets: under plain always (libzmq's PLAIN server would otherwise
    // admit any password), under curve when --curve-clients names who may connect.
    let zap = match mechanism {
        Mechanism::Plain => {
            let user = args.security.plain_user.clone().unwrap_or_default();
            let password = args.security.plain_password.clone().unwrap_or_default();
            Some(Zap::bind(&context, Admit::Plain { user, password })?)
        }
        Mechanism::Curve if !args.curve_clients.is_empty() => {
            Some(Zap::bind(&context, Admit::CurveKeys(args.curve_clients.clone()))?)
        }
        _ => None,
    };
    // REP answers each request exactly once, in order: the library keeps the lockstep for us.
    let requests = context.socket(zmq::REP)?;
    requests.set_linger(0)?;
    requests.set_maxmsgsize(MAX_MESSAGE)?;
    secure_server(&requests, &args.security)?;
    // PUB sends every broadcast to every subscriber whose filter matches; it never blocks, and it
    // drops for a subscriber that is not connected yet (slow joiner) or whose queue is full (HWM).
    let broadcasts = context.socket(zmq::PUB)?;
    broadcasts.set_linger(0)?;
    broadcasts.set_maxmsgsize(MAX_MESSAGE)?; // subscriptions come in, and libzmq decodes them
    secure_server(&broadcasts, &args.security)?;
    // Under plain or curve, socket monitors tell us of every handshake that fails on either socket.
    let monitors = match mechanism {
        Mechanism::Null => {
            monitor::attach(&context, &requests, "requests", args.monitor)?;
            monitor::attach(&context, &broadcasts, "broadcasts", args.monitor)?;
            vec![]
        }
        // libzmq allows one monitor per socket: these two have the handshake watcher, no --monitor.
        _ => vec![
            Monitor::new(&context, &requests, "requests")?,
            Monitor::new(&context, &broadcasts, "broadcasts")?,
        ],
    };
    let requests_bound = bind(&requests, &args.endpoints.requests)?;
    let broadcasts_bound = bind(&broadcasts, &args.endpoints.broadcasts)?;
    emit(
        "ready",
        json!({ "requests": requests_bound, "broadcasts": broadcasts_bound, "security": mechanism.name() }),
    );

    // handle (UTF-8 bytes, so the map's order is the bytes' order) -> last seen
    let mut roster: BTreeMap<Vec<u8>, Instant> = BTreeMap::new();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut next_beat = Instant::now();

    let broadcast_roster = |roster: &BTreeMap<Vec<u8>, Instant>| {
        // Frame 0 is empty: no handle is, so subscribers know the server itself is speaking.
        let frames = std::iter::once(&b""[..]).chain(roster.keys().map(Vec::as_slice));
        broadcasts.send_multipart(frames, 0)
    };

    // One poll for REP, the ZAP handler and the monitors: a handshake waiting for our ZAP answer
    // gets it at once, and none of them needs a thread of its own.
    let mut sockets = vec![&requests];
    sockets.extend(zap.as_ref().map(|zap| &zap.socket));
    sockets.extend(monitors.iter().map(|monitor| &monitor.socket));

    while !stop.load(Ordering::SeqCst) {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("still serving after {} ms", args.timeout)));
        }
        // Poll instead of a blocking recv: the heartbeat, the deadline and the stop flag all get
        // their turn without a second thread.
        let mut ready = readable_each(&sockets, deadline.cap(ms_until(next_beat)))?.into_iter();
        let request = match ready.next() {
            Some(true) => recv_if_ready(&requests)?, // every frame of one message, or None after all
            _ => None,
        };
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

/// Give `socket` the client's credentials for the chosen mechanism. Set before `connect`: the
/// options are read as each connection starts.
fn secure_client(socket: &zmq::Socket, args: &ClientArgs) -> Result<(), Failure> {
    match args.security.security {
        Mechanism::Null => {}
        Mechanism::Plain => {
            socket.set_plain_username(args.security.plain_user.as_deref())?;
            socket.set_plain_password(args.security.plain_password.as_deref())?;
        }
        // Our key pair, and the server's public key: without the right one the handshake fails.
        Mechanism::Curve => {
            socket.set_curve_serverkey(key(&args.curve_server))?;
            socket.set_curve_publickey(key(&args.curve_public))?;
            socket.set_curve_secretkey(key(&args.security.curve_secret))?;
        }
    }
    Ok(())
}

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
        let handshakes = args.security.security != Mechanism::Null;
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

    /// Handle one broadcast, or send a keep-alive when one is due, whichever comes first; or
    /// rejoin, if the server has forgotten us. Returns by `until` if given.
    fn serve(&mut self, until: Option<Instant>) -> Result<(), Failure> {
        if self.forgotten {
            return self.rejoin();
        }
        if self.deadline.expired() {
            return Err(Failure::new("timeout", format!("not done after {} ms", self.args.timeout)));
        }
        let due = self.last_request + Duration::from_millis(self.args.keepalive.into());
        let wait = ms_until(until.map_or(due, |until| until.min(due)));
        match self.next_broadcast(wait)? {
            Some(frames) => self.on_broadcast(frames),
            None if Instant::now() >= due => {
                self.keep_alive()?; // silent handles expire from the roster
            }
            None => {}
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

    /// Slow joiner: until a first broadcast arrives, our subscription may not have reached the
    /// server and posts would be dropped for us. The server broadcasts at least every heartbeat.
    /// Used at startup and in each rejoin. At startup under plain or curve, SUB's handshake
    /// watcher is polled too (a rejoin's SUB has none): the first handshake failure ends the
    /// client, since the same keys or password will not do better on the next reconnect (and a
    /// refused SUB means a refused REQ). Once a broadcast has arrived, the handshake succeeded.
    fn wait_for_first_broadcast(&self) -> Result<Vec<Vec<u8>>, Failure> {
        let mut sockets = vec![&self.sub];
        sockets.extend(self.monitor.as_ref().map(|monitor| &monitor.socket));
        loop {
            let ready = readable_each(&sockets, self.deadline.cap(self.args.keepalive.into()))?;
            if ready[0] {
                if let Some(frames) = recv_if_ready(&self.sub)? {
                    return Ok(frames);
                }
            }
            if let (Some(monitor), Some(true)) = (&self.monitor, ready.get(1)) {
                if let Some((failure, value)) = monitor.handshake_failure()? {
                    let reason = format!("handshake failed on {}: {} (value {})", monitor.name, failure, value);
                    return Err(Failure::new("refused", reason));
                }
            }
            if self.deadline.expired() {
                return Err(Failure::new("timeout", "no broadcast from the server"));
            }
        }
    }

    fn run(mut self) -> Result<(), Failure> {
        let frames = self.wait_for_first_broadcast()?;
        self.on_broadcast(frames);
        self.join()?;
        emit("ready", json!({ "handle": self.args.name, "security": self.args.security.security.name() }));

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
    let sub = context.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_maxmsgsize(MAX_MESSAGE)?;
    sub.set_subscribe(b"")?; // a prefix filter on frame 0; "" lets posts and rosters through
    secure_client(&sub, args)?;
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

/// A new REQ socket, connected. REQ enforces send, receive, send, receive...: one request in
/// flight at a time, and no second send before the reply. So when a reply is lost, Lazy Pirate
/// throws the socket away and comes here for a new one, with the same options.
fn open_requests(context: &zmq::Context, args: &ClientArgs) -> Result<zmq::Socket, Failure> {
    let req = context.socket(zmq::REQ)?;
    req.set_linger(0)?; // closing it drops a request still queued for a dead server
    req.set_maxmsgsize(MAX_MESSAGE)?;
    secure_client(&req, args)?;
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
