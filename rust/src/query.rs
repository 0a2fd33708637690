//! query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).
//!
//! The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
//! publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
//! publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an XPUB.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{value_parser, Args, Subcommand};
use serde_json::{json, Value};

use crate::contract::{
    bind, connect, emit, ms_until, name, readable, readable_each, recv_frame_if_ready, send_when_room, stop_signal,
    Deadline, Failure,
};
use crate::monitor::{self, OnOff};
use crate::ticker::{hex, symbol, symbol_list, symbol_of, topic, Symbols};

/// [max size] ZMQ_MAXMSGSIZE, 1024 bytes on every socket, set before bind or connect: the largest
/// legal frame is a 256-byte value (keys, subtrees, properties, routing ids: 255); between 257 and
/// 1024 bytes it reaches us and is reported, above that the library drops it with the connection.
pub const MAX_MESSAGE: i64 = 1024;
pub const MAX_VALUE: usize = 256;
const MAX_FRAMES: usize = 7; // frames kept of a message (5, a routing id, one to tell "more"); the rest are dropped
const HUGZ: &[u8] = b"HUGZ";
pub const ICANHAZ: &[u8] = b"ICANHAZ?";
const KTHXBAI: &[u8] = b"KTHXBAI";

#[derive(Subcommand)]
pub enum Role {
    /// keep the map, serve snapshots, publish updates
    Engine(EngineArgs),
    /// mirror some subtrees of the engine's map, and write to it
    Facade(FacadeArgs),
    /// print the KVPUBs some ticks make (the test vectors)
    Derive(DeriveArgs),
}

/// The engine's three endpoints: the RFC's ports P, P + 1 and P + 2, one flag each.
#[derive(Args)]
pub struct Endpoints {
    #[arg(long, default_value = "tcp://127.0.0.1:5556")]
    snapshot: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    updates: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5558")]
    collector: String,
}

#[derive(Args)]
pub struct EngineArgs {
    #[command(flatten)]
    at: Endpoints,
    #[arg(long, default_value = "")]
    ticks: String,
    #[arg(long, value_parser = name, default_value = "engine")]
    name: String,
    #[arg(long, value_parser = symbol_list, default_value = "AAPL,GOOG,GOOGL,MSFT,IBM")]
    symbols: Symbols,
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..))]
    hugz: u32,
    #[arg(long, default_value_t = 10000, value_parser = value_parser!(u64).range(1..))]
    max_keys: u64,
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct FacadeArgs {
    #[command(flatten)]
    at: Endpoints,
    #[arg(long, value_parser = segment)]
    name: String,
    #[arg(long, value_parser = subtree_list)]
    subtrees: Subtrees,
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 0)]
    writes: u32,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u32).range(1..=86400))]
    ttl: u32,
    #[arg(long, default_value_t = 3000, value_parser = value_parser!(u32).range(1..))]
    silence: u32,
    #[arg(long, default_value_t = 30000)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct DeriveArgs {
    #[arg(long, value_parser = symbol)]
    symbol: String,
    #[arg(long, value_parser = price, value_delimiter = ',', required = true)]
    prices: Vec<[u8; 8]>,
    #[arg(long, default_value_t = 0)]
    sequence: u64,
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::Engine(args) => run_engine(args),
        Role::Facade(args) => run_facade(args),
        Role::Derive(args) => run_derive(args),
    }
}

/// 1 to 32 of A-Z a-z 0-9 _ -: a facade's name (a key segment), a property's name.
pub fn is_word(data: &[u8]) -> bool {
    (1..=32).contains(&data.len()) && data.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn segment(value: &str) -> Result<String, String> {
    if is_word(value.as_bytes()) {
        Ok(value.to_string())
    } else {
        Err("a facade name is 1 to 32 of A-Z a-z 0-9 _ -".into())
    }
}

/// --subtrees: comma-separated subtrees, `all` being the empty one (the whole map); none twice.
#[derive(Clone)]
pub struct Subtrees(pub Vec<Vec<u8>>);

pub fn subtree_list(value: &str) -> Result<Subtrees, String> {
    if let Some(bad) = value.split(',').find(|part| *part != "all" && !(is_subtree(part.as_bytes()) && !part.is_empty())) {
        return Err(format!("{:?} is not a subtree like /prices/ (or all)", bad));
    }
    let trees: Vec<Vec<u8>> =
        value.split(',').map(|part| if part == "all" { vec![] } else { part.as_bytes().to_vec() }).collect();
    if trees.iter().collect::<HashSet<_>>().len() != trees.len() {
        return Err("a subtree is listed twice".into());
    }
    Ok(Subtrees(trees))
}

/// One price of --prices: the 8 bytes of a binary64, in hex.
fn price(value: &str) -> Result<[u8; 8], String> {
    match u64::from_str_radix(value, 16) {
        Ok(bits) if value.len() == 16 && value.bytes().all(|c| c.is_ascii_hexdigit()) => Ok(bits.to_be_bytes()),
        _ => Err("prices are 8-byte binary64 values in hex".into()),
    }
}

// --- the protocol's pieces -------------------------------------------------------------------

/// `/` segment (`/` segment)…, a segment being 1 or more of A-Z a-z 0-9 . _ -
fn is_path(data: &[u8]) -> bool {
    let segment = |s: &[u8]| !s.is_empty() && s.iter().all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    matches!(data.split_first(), Some((b'/', rest)) if rest.split(|&c| c == b'/').all(segment))
}

pub fn is_key(data: &[u8]) -> bool {
    (2..=255).contains(&data.len()) && is_path(data)
}

/// Empty (the whole map), or a path that ends in `/`.
fn is_subtree(data: &[u8]) -> bool {
    data.is_empty() || (data.len() <= 255 && matches!(data.strip_suffix(b"/"), Some(path) if is_path(path)))
}

/// The properties frame as (name, value) pairs, or None when it is not `name=value\n` lines.
fn properties(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if data.len() > 255 {
        return None;
    }
    data.split_inclusive(|&c| c == b'\n')
        .map(|line| {
            let line = line.strip_suffix(b"\n")?; // the last line too must end in a newline
            let at = line.iter().position(|&c| c == b'=')?;
            let (name, value) = (&line[..at], &line[at + 1..]);
            (is_word(name) && value.iter().all(|&c| (0x20..=0x7e).contains(&c))).then_some((name, value))
        })
        .collect()
}

/// The `ttl` property in seconds, 0 for none, or None when the properties are not valid or hold
/// a ttl that is not one decimal number of 1 to 86400.
fn ttl_of(data: &[u8]) -> Option<u64> {
    let ttls: Vec<&[u8]> = properties(data)?.into_iter().filter(|(name, _)| *name == b"ttl").map(|(_, v)| v).collect();
    match ttls[..] {
        [] => Some(0),
        [ttl] if (1..=5).contains(&ttl.len()) && ttl[0] != b'0' && ttl.iter().all(u8::is_ascii_digit) => {
            let seconds: u64 = std::str::from_utf8(ttl).ok()?.parse().ok()?;
            (seconds <= 86400).then_some(seconds)
        }
        _ => None,
    }
}

/// A key or a subtree (checked: ASCII) for an event.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// At most 32 bytes of what a peer sent, for a reason.
pub fn quote(data: &[u8]) -> String {
    format!("\"{}\"", data[..data.len().min(32)].escape_ascii())
}

/// A message for a reason: its frame sizes, and at most 32 bytes of its first frame.
pub fn quote_all(frames: &[Vec<u8>]) -> String {
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    format!("{:?} bytes, beginning {}", sizes, frames.first().map_or_else(|| quote(b""), |first| quote(first)))
}

/// A bad message is reported and ignored; the role goes on (so this is Ok, for `return report(..)`).
fn report(code: &str, reason: String) -> Result<(), Failure> {
    emit("error", json!({ "code": code, "reason": reason }));
    Ok(())
}

/// Why a KVSYNC, KVPUB or KVSET (5 frames) is malformed, or None.
fn check_kv(frames: &[Vec<u8>]) -> Option<String> {
    let [key, sequence, uuid, props, value] = frames else {
        let more = if frames.len() == MAX_FRAMES { " or more" } else { "" };
        return Some(format!("expected 5 frames, got {}{}", frames.len(), more));
    };
    if !is_key(key) {
        Some(format!("not a key: {}", quote(key)))
    } else if sequence.len() != 8 {
        Some(format!("a sequence of {} bytes, not 8", sequence.len()))
    } else if !(uuid.is_empty() || uuid.len() == 16) {
        Some(format!("a UUID of {} bytes, not 0 or 16", uuid.len()))
    } else if ttl_of(props).is_none() {
        Some(format!("properties that are not name=value lines with at most one ttl of 1 to 86400: {}", quote(props)))
    } else if value.len() > MAX_VALUE {
        Some(format!("a value of {} bytes, more than {}", value.len(), MAX_VALUE))
    } else {
        None
    }
}

/// A sequence frame: 8 bytes, big-endian (network order).
fn sequence_of(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame.try_into().expect("checked: 8 bytes"))
}

/// The next message, read frame by frame without waiting: at most MAX_FRAMES frames are kept
/// (the rest are read and dropped), so no message can make us allocate without bound. None if
/// there was nothing after all (POLLIN is a hint).
pub fn recv_message(socket: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>, Failure> {
    let Some(first) = recv_frame_if_ready(socket)? else { return Ok(None) };
    let mut frames = vec![first];
    while socket.get_rcvmore()? {
        // [multipart] A message arrives whole or not at all: the other frames came with the
        // first, so this cannot block. How many there are is the sender's choice: at most
        // MAX_FRAMES are kept, and check_kv counts them, never assumes.
        match socket.recv_bytes(0) {
            Ok(frame) if frames.len() < MAX_FRAMES => frames.push(frame),
            Ok(_) | Err(zmq::Error::EINTR) => {} // dropped; or a signal came first: read it again
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Some(frames))
}

// --- the map fed by ticks --------------------------------------------------------------------

/// floor(price × 100 + 0.5): two binary64 operations (Rust never fuses them) and an exact floor;
/// None if the price cannot be cents.
fn tick_cents(price: f64) -> Option<u64> {
    (price.is_finite() && (0.0..=1e9).contains(&price)).then(|| (price * 100.0 + 0.5).floor() as u64)
}

fn decimal(cents: u64) -> Vec<u8> {
    format!("{}.{:02}", cents / 100, cents % 100).into_bytes()
}

/// Per symbol: the highest and lowest price in cents, and the number of ticks.
type Stats = HashMap<String, (u64, u64, u64)>;

/// The four derived keys of one tick and their new values, in the protocol's order.
fn derived(stats: &mut Stats, symbol: &str, cents: u64) -> [(Vec<u8>, Vec<u8>); 4] {
    let entry = stats.entry(symbol.to_string()).or_insert((cents, cents, 0));
    *entry = (entry.0.max(cents), entry.1.min(cents), entry.2 + 1);
    let (high, low, count) = *entry;
    [
        (format!("/prices/{}", symbol).into_bytes(), decimal(cents)),
        (format!("/stats/{}/high", symbol).into_bytes(), decimal(high)),
        (format!("/stats/{}/low", symbol).into_bytes(), decimal(low)),
        (format!("/stats/{}/ticks", symbol).into_bytes(), count.to_string().into_bytes()),
    ]
}

fn run_derive(args: DeriveArgs) -> Result<(), Failure> {
    let (mut values, mut stats, mut sequence) = (HashMap::new(), Stats::new(), args.sequence);
    for price in args.prices {
        let cents = tick_cents(f64::from_be_bytes(price))
            .ok_or_else(|| Failure::new("malformed-tick", format!("price {} cannot be cents", hex(&price))))?;
        for (key, value) in derived(&mut stats, &args.symbol, cents) {
            // Only what changes is an update.
            if values.get(&key) != Some(&value) {
                sequence += 1;
                let frames = [&key[..], &sequence.to_be_bytes(), b"", b"", &value];
                emit("encoded", json!({ "frames": frames.map(hex) }));
                values.insert(key, value);
            }
        }
    }
    emit("done", json!({}));
    Ok(())
}

// --- engine ----------------------------------------------------------------------------------

/// 16 random bytes from the kernel (std only: no crate for this).
fn random_uuid() -> Result<[u8; 16], Failure> {
    use std::io::Read;
    let mut uuid = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut uuid))
        .map_err(|error| Failure::new("no-random", format!("cannot read /dev/urandom: {}", error)))?;
    Ok(uuid)
}

/// The map (key -> (value, sequence)), its expiries, and the sockets that reply and publish.
struct Engine {
    snapshots: zmq::Socket,
    updates: zmq::Socket,
    max_keys: u64,
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    expiries: HashMap<Vec<u8>, Instant>,
    stats: Stats,
    sequence: u64,
    served: u64,
    abandoned: u64,
    last_hugz: Instant,
    /// Who we are, in every HUGZ: 16 random bytes drawn at start; an engine started again draws another.
    uuid: [u8; 16],
}

impl Engine {
    /// One update: the next sequence, the map, the KVPUB to every subscriber, the event.
    fn update(&mut self, key: &[u8], value: &[u8], cause: &str, uuid: &[u8], props: &[u8]) -> Result<(), Failure> {
        self.sequence += 1;
        if value.is_empty() {
            self.map.remove(key);
        } else {
            self.map.insert(key.to_vec(), (value.to_vec(), self.sequence));
        }
        self.expiries.remove(key);
        // XPUB never blocks: a subscriber whose queue is full (HWM) loses the update.
        self.updates.send_multipart([key, &self.sequence.to_be_bytes(), uuid, props, value], 0)?;
        let key = text(key);
        emit("update", json!({ "sequence": self.sequence, "key": key, "value": hex(value), "cause": cause }));
        Ok(())
    }

    fn hugz(&mut self) -> Result<(), Failure> {
        // The RFC's HUGZ carries 0 and no UUID; ours the sequence of our last update, as the Guide's
        // clonesrv, and our UUID, so that a facade knows when the engine it hears is not the one it
        // synced with.
        self.updates.send_multipart([HUGZ, &self.sequence.to_be_bytes(), &self.uuid, b"", b""], 0)?;
        self.last_hugz = Instant::now();
        Ok(())
    }

    fn on_icanhaz(&mut self, frames: &[Vec<u8>]) -> Result<(), Failure> {
        // [routing id, ICANHAZ?, subtree]: ROUTER put the routing id in front.
        let (identity, subtree) = match frames {
            [identity, command, subtree] if command == ICANHAZ && is_subtree(subtree) => (identity, subtree),
            _ => return report("malformed-icanhaz", format!("not [ICANHAZ?, subtree]: {}", quote_all(&frames[1..]))),
        };
        // The map is sorted: the keys of a subtree (a prefix) are one range of it.
        let keys: Vec<_> = self.map.range(subtree.clone()..).take_while(|(key, _)| key.starts_with(subtree)).collect();
        let highest = keys.iter().map(|(_, (_, sequence))| *sequence).max().unwrap_or(0);
        let kvsyncs = keys.iter().map(|(key, (value, sequence))| (key.as_slice(), *sequence, value.as_slice()));
        // Every KVSYNC, then the KTHXBAI. The first send that fails stops it: the rest of that
        // snapshot, KTHXBAI included, is not sent, so the facade never believes half of one.
        for (sent, (first, sequence, last)) in kvsyncs.chain([(KTHXBAI, highest, &subtree[..])]).enumerate() {
            if let Some(why) = self.send_to(identity, [first, &sequence.to_be_bytes(), b"", b"", last])? {
                self.abandoned += 1;
                let subtree = text(subtree);
                emit("abandoned", json!({ "subtree": subtree, "keys": sent, "why": why }));
                return Ok(());
            }
        }
        self.served += 1;
        let subtree = text(subtree);
        emit("snapshot", json!({ "subtree": subtree, "keys": keys.len(), "sequence": highest, "at": self.sequence }));
        Ok(())
    }

    /// Send to one peer through ROUTER, routed by the routing id in front, without waiting. With
    /// ROUTER_MANDATORY the first frame fails when the peer is gone (EHOSTUNREACH) or its queue is
    /// full (EAGAIN), instead of the message being dropped in silence; None when it went out.
    fn send_to(&self, identity: &[u8], frames: [&[u8]; 5]) -> Result<Option<&'static str>, Failure> {
        match self.snapshots.send_multipart(std::iter::once(identity).chain(frames), zmq::DONTWAIT) {
            Ok(()) => Ok(None),
            Err(zmq::Error::EAGAIN) => Ok(Some("full")),
            Err(zmq::Error::EHOSTUNREACH) => Ok(Some("gone")),
            Err(error) => Err(error.into()),
        }
    }

    fn on_kvset(&mut self, frames: &[Vec<u8>]) -> Result<(), Failure> {
        if let Some(problem) = check_kv(frames) {
            return report("malformed-kvset", problem);
        }
        let [key, _, uuid, props, value] = frames else { unreachable!("checked: 5 frames") };
        if !value.is_empty() && !self.map.contains_key(key) && self.map.len() as u64 >= self.max_keys {
            return report("map-full", format!("{} would be key {}", quote(key), self.max_keys + 1));
        }
        self.update(key, value, "kvset", uuid, props)?;
        let ttl = ttl_of(props).unwrap_or(0); // checked: valid
        if ttl > 0 && !value.is_empty() {
            self.expiries.insert(key.clone(), Instant::now() + Duration::from_secs(ttl));
        }
        Ok(())
    }

    fn on_tick(&mut self, frames: &[Vec<u8>], wanted: &[String]) -> Result<(), Failure> {
        // A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price].
        let tick = match frames {
            [topic, sequence, timestamp, price] if sequence.len() == 8 && timestamp.len() == 8 => {
                symbol_of(topic).zip(<[u8; 8]>::try_from(&price[..]).ok())
            }
            _ => None,
        };
        let Some((symbol, price)) = tick else {
            return report("malformed-tick", format!("not a tick: {}", quote_all(frames)));
        };
        let cents = tick_cents(f64::from_be_bytes(price));
        let Some(cents) = cents.filter(|_| wanted.iter().any(|name| name == symbol)) else {
            let reason = format!("{}: not subscribed, or price {} cannot be cents", symbol, hex(&price));
            return report("malformed-tick", reason);
        };
        for (key, value) in derived(&mut self.stats, symbol, cents) {
            if self.map.get(&key).map(|(old, _)| old) != Some(&value) {
                self.update(&key, &value, "tick", b"", b"")?;
            }
        }
        Ok(())
    }

    /// One frame from the XPUB: 1 (subscribe) or 0 (unsubscribe), then the topic.
    fn on_subscription(&mut self, frame: &[u8]) -> Result<(), Failure> {
        match frame {
            // [slow joiner] A facade's updates are lost until its subscriptions reach us: it
            // subscribes to HUGZ last, and our HUGZ in answer tells it that every one is in place.
            [1, topic @ ..] if b"HUGZ".starts_with(topic) => self.hugz(),
            [0 | 1, ..] => Ok(()),
            _ => report("malformed-subscription", format!("not a subscription: {}", quote(frame))),
        }
    }

    /// Delete every key whose time has come, in order of expiry time, then key.
    fn expire(&mut self, now: Instant) -> Result<(), Failure> {
        let mut due: Vec<(Instant, Vec<u8>)> =
            self.expiries.iter().filter(|(_, when)| **when <= now).map(|(key, when)| (*when, key.clone())).collect();
        due.sort();
        for (_, key) in due {
            self.update(&key, b"", "expired", b"", b"")?;
        }
        Ok(())
    }

    /// Milliseconds to the next HUGZ or expiry.
    fn next_timer(&self, hugz: Duration) -> i64 {
        ms_until(self.expiries.values().copied().fold(self.last_hugz + hugz, Instant::min))
    }
}

fn run_engine(args: EngineArgs) -> Result<(), Failure> {
    let stop = stop_signal()?;
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [ROUTER] prefixes every request with the routing id of the peer it came from, and routes
    // every reply by the routing id we put in front. What it cannot route it drops, in silence:
    // MANDATORY makes that send fail instead (EHOSTUNREACH, or EAGAIN for a full queue).
    let snapshots = context.socket(zmq::ROUTER)?;
    snapshots.set_router_mandatory(true)?;
    // [HWM] The high-water mark bounds each peer's queue; at it ROUTER (MANDATORY) refuses the send
    // and the snapshot is abandoned. Room for a whole snapshot per peer: the library learns that a
    // peer has read its messages only in batches, so a loop of sends would find 1000 "full".
    snapshots.set_sndhwm(i32::try_from(args.max_keys + 1).unwrap_or(i32::MAX))?;
    // [XPUB] a PUB on the wire, which hands us every subscription as a message; verbose: repeated
    // ones too, so that each facade's subscription to HUGZ is answered (the slow joiner, below).
    let updates = context.socket(zmq::XPUB)?;
    updates.set_xpub_verbose(true)?;
    // [SUB] the collector, subscribed to "" (every write of every facade), before it binds.
    let collector = context.socket(zmq::SUB)?;
    collector.set_subscribe(b"")?;
    let ticks = if args.ticks.is_empty() { None } else { Some(context.socket(zmq::SUB)?) };
    for socket in [&snapshots, &updates, &collector].into_iter().chain(&ticks) {
        // [linger] 0: the engine stops only when told to; the snapshots and updates still queued
        // then are for facades that will resync anyway, so closing drops them at once.
        socket.set_linger(0)?;
        socket.set_maxmsgsize(MAX_MESSAGE)?;
    }
    for (socket, flag) in [(&snapshots, "snapshot"), (&updates, "updates"), (&collector, "collector")] {
        monitor::attach(&context, socket, flag, args.monitor)?;
    }
    if let Some(ticks) = &ticks {
        monitor::attach(&context, ticks, "ticks", args.monitor)?;
    }
    let endpoints = json!({ "snapshot": bind(&snapshots, &args.at.snapshot)?, "updates": bind(&updates, &args.at.updates)?,
                        "collector": bind(&collector, &args.at.collector)? });
    if let Some(ticks) = &ticks {
        // Connected, then subscribed, as a ticker subscriber (ticker.rs says why): the symbols
        // first, then the @name the publisher counts, in that order on the wire.
        connect(ticks, &args.ticks)?;
        for symbol in &args.symbols.0 {
            ticks.set_subscribe(&topic(symbol))?;
        }
        ticks.set_subscribe(format!("@{}", args.name).as_bytes())?;
    }
    emit("ready", endpoints);

    let hugz = Duration::from_millis(args.hugz.into());
    let mut engine = Engine {
        snapshots,
        updates,
        max_keys: args.max_keys,
        map: BTreeMap::new(),
        expiries: HashMap::new(),
        stats: Stats::new(),
        sequence: 0,
        served: 0,
        abandoned: 0,
        last_hugz: Instant::now(),
        uuid: random_uuid()?,
    };
    while !stop.load(Ordering::SeqCst) {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("still serving after {} ms", args.timeout)));
        }
        // [poll] One wait for all four sockets, until the next HUGZ or expiry at the latest (never
        // past the deadline); then receives that never block. POLLIN is a hint, EINTR no message.
        let sockets: Vec<&zmq::Socket> =
            [&engine.snapshots, &engine.updates, &collector].into_iter().chain(&ticks).collect();
        let ready = readable_each(&sockets, deadline.cap(engine.next_timer(hugz)))?;
        let (requests, subscriptions, writes, tick) = (ready[0], ready[1], ready[2], ready.get(3) == Some(&true));
        // One message from each socket that has one: a flood on one cannot starve the others. In
        // PROTOCOL.md's order: ROUTER, XPUB, the collector, the ticks.
        if requests {
            if let Some(frames) = recv_message(&engine.snapshots)? {
                engine.on_icanhaz(&frames)?;
            }
        }
        if subscriptions {
            // One frame at a time, whatever its more flag: each is one subscription.
            if let Some(frame) = recv_frame_if_ready(&engine.updates)? {
                engine.on_subscription(&frame)?;
            }
        }
        if writes {
            if let Some(frames) = recv_message(&collector)? {
                engine.on_kvset(&frames)?;
            }
        }
        if let (Some(ticks), true) = (&ticks, tick) {
            if let Some(frames) = recv_message(ticks)? {
                engine.on_tick(&frames, &args.symbols.0)?;
            }
        }
        let now = Instant::now();
        engine.expire(now)?;
        if now.duration_since(engine.last_hugz) >= hugz {
            engine.hugz()?; // every --hugz ms, busy or not: a facade that hears nothing knows we are gone
        }
    }
    let done = json!({ "sequence": engine.sequence, "keys": engine.map.len(), "snapshots": engine.served,
                       "abandoned": engine.abandoned });
    emit("done", done);
    Ok(()) // linger 0: whatever is still queued is dropped
}

// --- facade ----------------------------------------------------------------------------------

/// The facade's map and what it still waits for. Its events go to `out`: `emit` in the facade
/// role, the pipe in the desk's query agent.
pub struct Facade {
    subtrees: Vec<Vec<u8>>,
    count: u64,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    waiting: Vec<Vec<u8>>,              // subtrees asked for, whose KTHXBAI is not in yet
    watermark: HashMap<Vec<u8>, u64>,   // subtree -> its KTHXBAI's sequence
    synced_keys: HashMap<Vec<u8>, u64>, // subtree -> KVSYNCs received
    first: u64,                         // the first KVPUB applied, and the last one
    last: u64,
    applied: u64,
    discarded: u64,
    sees_own: bool,                  // our subtrees hold our own writes
    writes: Vec<(Vec<u8>, Vec<u8>)>, // (key, value) of write N = 1…W; the even ones get a ttl
    echoed: HashSet<Vec<u8>>,        // writes that came back
    expired: HashSet<Vec<u8>>,       // writes deleted after they came back (their ttl)
    deleted: bool,                   // our delete of write 1 came back
    delete_sent: bool,
}

/// A bad message, reported and ignored: the facade goes on.
fn reject(out: &mut dyn FnMut(&str, Value), code: &str, reason: String) {
    out("error", json!({ "code": code, "reason": reason }));
}

impl Facade {
    /// A facade of `subtrees` named `name`, done after `count` KVPUBs and its `writes` writes.
    pub fn new(subtrees: Vec<Vec<u8>>, name: &str, count: u64, writes: u32) -> Self {
        let prefix = format!("/facades/{}/", name);
        let write = |n| (format!("{}{}", prefix, n).into_bytes(), format!("{}/{}", name, n).into_bytes());
        Facade {
            count,
            map: BTreeMap::new(),
            waiting: subtrees.clone(),
            watermark: HashMap::new(),
            synced_keys: subtrees.iter().map(|tree| (tree.clone(), 0)).collect(),
            first: 0,
            last: 0,
            applied: 0,
            discarded: 0,
            sees_own: subtrees.iter().any(|tree| prefix.as_bytes().starts_with(tree)),
            writes: (1..=writes).map(write).collect(),
            echoed: HashSet::new(),
            expired: HashSet::new(),
            deleted: false,
            delete_sent: false,
            subtrees,
        }
    }

    /// Every KTHXBAI is in: the snapshots are whole.
    pub fn synced(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The last KVPUB applied (0: none yet).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn on_snapshot(&mut self, frames: &[Vec<u8>], out: &mut dyn FnMut(&str, Value)) {
        if frames[0] == KTHXBAI {
            let shape = quote_all(frames);
            let (sequence, tree) = match frames {
                [_, sequence, _, _, tree] if sequence.len() == 8 && is_subtree(tree) => (sequence_of(sequence), tree),
                _ => {
                    let reason = format!("not [KTHXBAI, sequence, -, -, subtree]: {}", shape);
                    return reject(out, "malformed-kthxbai", reason);
                }
            };
            // Matched by its subtree: nothing else in a reply says which request it answers.
            let Some(at) = self.waiting.iter().position(|waiting| waiting == tree) else {
                return reject(out, "unexpected-kthxbai", format!("no request waits for subtree {}", quote(tree)));
            };
            self.waiting.remove(at);
            self.watermark.insert(tree.clone(), sequence);
            let keys = self.synced_keys[tree];
            out("synced", json!({ "subtree": text(tree), "sequence": sequence, "keys": keys }));
            return;
        }
        let problem = check_kv(frames).or_else(|| {
            let sending = self.waiting.iter().any(|tree| frames[0].starts_with(tree));
            (!sending).then(|| format!("{} is in no subtree still being sent", quote(&frames[0])))
        });
        if let Some(problem) = problem {
            return reject(out, "malformed-kvsync", problem);
        }
        for tree in &self.waiting {
            if frames[0].starts_with(tree) {
                *self.synced_keys.get_mut(tree).expect("every subtree") += 1;
            }
        }
        self.set(&frames[0], &frames[4]);
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        if value.is_empty() {
            self.map.remove(key);
        } else {
            self.map.insert(key.to_vec(), value.to_vec());
        }
    }

    /// A message from the SUB; true when it was a KVPUB and was applied.
    pub fn on_update(&mut self, frames: &[Vec<u8>], out: &mut dyn FnMut(&str, Value)) -> bool {
        if frames[0] == b"HUGZ" {
            return false; // a keep-alive: the engine is there
        }
        if let Some(problem) = check_kv(frames) {
            reject(out, "malformed-kvpub", problem);
            return false;
        }
        let (key, sequence, value) = (&frames[0], sequence_of(&frames[1]), &frames[4]);
        let trees: Vec<&Vec<u8>> = self.subtrees.iter().filter(|tree| key.starts_with(tree)).collect();
        if trees.is_empty() {
            reject(out, "unexpected-key", format!("{} is in none of our subtrees", quote(key)));
            return false;
        }
        // The RFC's late-joiner rule: only what is newer than the snapshot, and than the last update.
        let watermark = trees.iter().map(|tree| self.watermark[*tree]).max().unwrap_or(0);
        if sequence <= watermark || sequence <= self.last {
            self.discarded += 1;
            return false;
        }
        self.set(key, value);
        if self.first == 0 {
            self.first = sequence;
        }
        self.last = sequence;
        self.applied += 1;
        if let Some(n) = self.writes.iter().position(|(write, _)| write == key) {
            if *value == self.writes[n].1 {
                self.echoed.insert(key.clone());
            } else if value.is_empty() && n == 0 && self.delete_sent {
                self.deleted = true;
            } else if value.is_empty() && self.echoed.contains(key) {
                self.expired.insert(key.clone());
            }
        }
        true
    }

    fn finished(&self) -> bool {
        if !self.waiting.is_empty() || self.applied < self.count {
            return false;
        }
        if self.last <= self.watermark.values().copied().max().unwrap_or(0) {
            return false;
        }
        if self.sees_own && !self.writes.is_empty() {
            let ttls_expired = self.writes.iter().skip(1).step_by(2).all(|(key, _)| self.expired.contains(key));
            return self.echoed.len() == self.writes.len() && self.deleted && ttls_expired;
        }
        true
    }

    /// The fields of the facade's `done` (the query agent's `stopped`): the last KVPUB applied,
    /// the first, the map (values in hex), how many were applied and discarded.
    pub fn summary(&self) -> Value {
        let map: serde_json::Map<_, _> = self.map.iter().map(|(key, value)| (text(key), json!(hex(value)))).collect();
        json!({ "sequence": self.last, "first": self.first, "map": map, "applied": self.applied,
                "discarded": self.discarded })
    }
}

/// The facade's sockets: SUB, DEALER, and the collector XPUB with `--writes` above 0.
struct Sockets {
    updates: zmq::Socket,
    snapshot: zmq::Socket,
    collector: Option<zmq::Socket>,
}

impl Sockets {
    /// Close them all, linger 0: writes queued for a dead engine are worth nothing.
    /// (A closed socket stops its monitor, whose thread then ends.)
    fn close(self) -> Result<(), Failure> {
        for socket in [&self.updates, &self.snapshot].into_iter().chain(&self.collector) {
            socket.set_linger(0)?;
        }
        Ok(()) // dropped here
    }
}

/// The facade's sockets, new and connected (step 1).
fn open_facade(context: &zmq::Context, args: &FacadeArgs) -> Result<Sockets, Failure> {
    // [DEALER] sends and receives freely, without REQ's lockstep and without an envelope of its
    // own: every subtree's request is in flight at once, and only the subtree in a KTHXBAI says
    // which request a reply answers.
    let snapshot = context.socket(zmq::DEALER)?;
    let updates = context.socket(zmq::SUB)?;
    // XPUB to the collector: a PUB that tells us when the collector's subscription has arrived.
    let collector = if args.writes > 0 { Some(context.socket(zmq::XPUB)?) } else { None };
    for socket in [&snapshot, &updates].into_iter().chain(&collector) {
        socket.set_linger(0)?; // a session that ends leaves nothing worth sending on these
        socket.set_maxmsgsize(MAX_MESSAGE)?;
    }
    if let Some(collector) = &collector {
        // [linger] 1000 ms on the collector XPUB alone: the last write (a delete) may still be
        // queued when we exit, and closing waits that long for it to go out, no longer.
        collector.set_linger(1000)?;
    }
    let watched = [(&snapshot, "snapshot"), (&updates, "updates")].into_iter();
    for (socket, flag) in watched.chain(collector.iter().map(|collector| (collector, "collector"))) {
        monitor::attach(context, socket, flag, args.monitor)?;
    }
    // The SUB connects first, then subscribes (PROTOCOL.md, Facade step 1): after connect, the
    // subscriptions go out in the order made, HUGZ last (those made before connect would go out
    // sorted by bytes). Each subtree is a key prefix: a prefix match on frame 0, the key.
    connect(&updates, &args.at.updates)?;
    for tree in &args.subtrees.0 {
        updates.set_subscribe(tree)?;
    }
    updates.set_subscribe(b"HUGZ")?; // last: once a HUGZ arrives, every subscription before it is in place
    connect(&snapshot, &args.at.snapshot)?;
    if let Some(collector) = &collector {
        connect(collector, &args.at.collector)?;
    }
    Ok(Sockets { updates, snapshot, collector })
}

/// How a session with one engine ends (PROTOCOL.md, "Restarts").
enum Session {
    Done(Facade),
    /// The engine is gone (`silence`) or is a new one (`engine`, `sequence`); `last` is the
    /// highest sequence read from the SUB.
    Restarted { why: &'static str, last: u64 },
}

fn run_facade(args: FacadeArgs) -> Result<(), Failure> {
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    let mut sockets = open_facade(&context, &args)?;
    let subtrees: Vec<_> = args.subtrees.0.iter().map(|tree| text(tree)).collect();
    emit("ready", json!({ "name": args.name, "subtrees": subtrees }));
    let facade = loop {
        match follow(&args, &deadline, &sockets)? {
            Session::Done(facade) => break facade,
            Session::Restarted { why, last } => {
                // Start over on new sockets: the old ones may still hold the old engine's messages.
                sockets.close()?;
                emit("resynced", json!({ "why": why, "last": last }));
                sockets = open_facade(&context, &args)?;
            }
        }
    };
    emit("done", facade.summary());
    Ok(()) // the collector's linger (1000 ms) lets the last write leave as the context closes
}

/// What the SUB has told a session of its engine: the UUID in the HUGZ that ended step 2 (None
/// before it; empty from an RFC server), and `seen`, the highest sequence read from the SUB (HUGZ,
/// and KVPUBs applied or not).
#[derive(Default)]
struct Followed {
    engine: Option<Vec<u8>>,
    seen: u64,
}

/// Whether the SUB still hears the engine of this session: the same UUID in every HUGZ, and
/// sequences that only rise (every update above the HUGZ before it, every HUGZ at least the updates
/// before it). Anything else comes from another engine: Err(why), `engine` or `sequence`. A
/// malformed KVPUB says nothing; a HUGZ that is not 5 frames with an 8-byte sequence counts as one
/// with no UUID and sequence 0.
fn follow_engine(frames: &[Vec<u8>], followed: &mut Followed) -> Result<(), &'static str> {
    if frames[0] == HUGZ {
        let whole = frames.len() == 5 && frames[1].len() == 8;
        let (uuid, sequence) = if whole { (&frames[2][..], sequence_of(&frames[1])) } else { (&b""[..], 0) };
        match &followed.engine {
            None => followed.engine = Some(uuid.to_vec()),
            Some(engine) if engine != uuid => return Err("engine"),
            Some(_) => {}
        }
        if sequence != 0 && sequence < followed.seen {
            return Err("sequence"); // 0: an RFC server's HUGZ, which says nothing
        }
        followed.seen = followed.seen.max(sequence);
    } else if check_kv(frames).is_none() {
        let sequence = sequence_of(&frames[1]);
        if sequence <= followed.seen {
            return Err("sequence");
        }
        followed.seen = sequence;
    }
    Ok(())
}

/// One session with one engine: steps 2 to 6 of the facade, on sockets fresh from `open_facade`.
fn follow(args: &FacadeArgs, deadline: &Deadline, sockets: &Sockets) -> Result<Session, Failure> {
    let Sockets { updates, snapshot, collector } = sockets;
    let mut facade = Facade::new(args.subtrees.0.clone(), &args.name, args.count, args.writes);
    let mut followed = Followed::default(); // which engine, and the highest sequence read from the SUB

    // The slow joiner: wait for a HUGZ, dropping whatever comes before it (the snapshot covers it).
    loop {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("no HUGZ from {} within {} ms", args.at.updates, args.timeout)));
        }
        let frames = if readable(updates, deadline.cap(100))? { recv_message(updates)? } else { None };
        if let Some(frames) = frames.filter(|frames| frames[0] == HUGZ) {
            // Which engine, and its sequence now: every update after it is higher. (Nothing heard
            // yet: no restart.)
            let _ = follow_engine(&frames, &mut followed);
            break;
        }
    }

    // When the engine was last heard from: silence means it is gone.
    let mut heard = Instant::now();
    let silence = Duration::from_millis(args.silence.into());
    let silent = |heard: Instant| heard.elapsed() >= silence;

    for tree in &args.subtrees.0 {
        // All requests in flight at once on the one DEALER.
        send_when_room(snapshot, &[ICANHAZ, &tree[..]], deadline, "ICANHAZ?")?;
    }
    while !facade.waiting.is_empty() {
        if deadline.expired() {
            let waiting: Vec<_> = facade.waiting.iter().map(|tree| text(tree)).collect();
            return Err(Failure::new("timeout", format!("subtrees {:?} never completed", waiting)));
        }
        // The SUB stays unread meanwhile: its updates wait in its queue, in order.
        let frames = if readable(snapshot, deadline.cap(100))? { recv_message(snapshot)? } else { None };
        if let Some(frames) = frames {
            heard = Instant::now();
            facade.on_snapshot(&frames, &mut emit);
        } else if silent(heard) {
            return Ok(Session::Restarted { why: "silence", last: followed.seen });
        }
    }

    let mut collector_live = false;
    while !facade.finished() {
        if deadline.expired() {
            let reason = format!("applied {} updates, up to {}, and was not done", facade.applied, facade.last);
            return Err(Failure::new("timeout", reason));
        }
        // [poll] The three sockets at once, for at most 100 ms (the silence check's pace, never
        // past the deadline); then the DEALER, the SUB and the XPUB, in PROTOCOL.md's order, one
        // message each, read without blocking. POLLIN is a hint; EINTR is no message.
        let polled: Vec<&zmq::Socket> = [snapshot, updates].into_iter().chain(collector).collect();
        let ready = readable_each(&polled, deadline.cap(100))?;
        if ready[0] {
            if let Some(frames) = recv_message(snapshot)? {
                report("unexpected-snapshot", format!("{} after every KTHXBAI", quote(&frames[0])))?;
            }
        }
        let frames = if ready[1] { recv_message(updates)? } else { None };
        if let Some(frames) = frames {
            heard = Instant::now();
            if let Err(why) = follow_engine(&frames, &mut followed) {
                // Another UUID, or lower than what this engine already sent: this is another engine.
                return Ok(Session::Restarted { why, last: followed.seen });
            }
            facade.on_update(&frames, &mut emit);
        } else if silent(heard) {
            // Not even a HUGZ, which the engine sends every --hugz ms.
            return Ok(Session::Restarted { why: "silence", last: followed.seen });
        }
        let Some(collector) = collector else { continue };
        if ready[2] {
            // The collector's subscription to everything: from now on, no write is dropped.
            if recv_frame_if_ready(collector)?.as_deref() == Some(&b"\x01"[..]) && !collector_live {
                collector_live = true;
                for (n, (key, value)) in facade.writes.iter().enumerate() {
                    let ttl = if n % 2 == 1 { args.ttl } else { 0 }; // even N, counting from 1
                    let props = if ttl > 0 { format!("ttl={}\n", ttl).into_bytes() } else { vec![] };
                    collector.send_multipart([key, &[0; 8][..], b"", &props, value], 0)?; // XPUB never blocks
                    emit("wrote", json!({ "key": text(key), "value": hex(value), "ttl": ttl }));
                }
            }
        }
        if collector_live && !facade.delete_sent && facade.echoed.len() == facade.writes.len() {
            let first = &facade.writes[0].0;
            collector.send_multipart([first, &[0; 8][..], b"", b"", b""], 0)?;
            emit("wrote", json!({ "key": text(first), "value": "", "ttl": 0 }));
            facade.delete_sent = true;
        }
    }
    Ok(Session::Done(facade))
}
