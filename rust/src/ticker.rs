//! ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md).
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{value_parser, Args, Subcommand};
use serde_json::json;

use crate::contract::{
    bind, connect, emit, ms_until, name, readable, recv_frame_if_ready, recv_if_ready, stop_channel, stop_signal, usage,
    Deadline, Failure, MAX_NAME,
};
use crate::monitor::{self, OnOff};

pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// [max size] ZMQ_MAXMSGSIZE, 256 bytes on every socket, set before bind or connect: libzmq drops a
/// bigger frame, and the connection of its sender, before we see it. It also bounds subscriptions,
/// which an XPUB's subscription trie stores byte by byte (a huge one once overflowed the stack).
/// The largest legal frames are a subscription (`\x01@` and a 32-byte name: 34 bytes) and the
/// 9-byte frames of a tick.
pub const MAX_MESSAGE: i64 = 256;

#[derive(Subcommand)]
pub enum Role {
    /// publish ticks once the subscribers are there
    Publisher(PublisherArgs),
    /// forward ticks downstream and subscriptions upstream
    Proxy(ProxyArgs),
    /// receive and check the ticks of some symbols
    Subscriber(SubscriberArgs),
    /// print the frames of one tick (the test vectors)
    Encode(EncodeArgs),
}

#[derive(Args)]
pub struct PublisherArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    ticks: String,
    #[arg(long, value_parser = symbol_list, default_value = "AAPL,GOOG,GOOGL,MSFT,IBM")]
    symbols: Symbols,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..))]
    subscribers: u64,
    #[arg(long, default_value_t = 2, value_parser = value_parser!(u32).range(1..))]
    interval: u32,
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct ProxyArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    upstream: String,
    #[arg(long, default_value = "tcp://127.0.0.1:5558")]
    downstream: String,
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct SubscriberArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    ticks: String,
    #[arg(long, value_parser = name)]
    name: String,
    #[arg(long, value_parser = symbol_list)]
    symbols: Symbols,
    #[arg(long, default_value_t = 20, value_parser = value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_parser = switch)]
    switch: Option<Switch>,
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..))]
    switch_after: u64,
    #[arg(long, default_value_t = 30000)]
    timeout: u32,
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    monitor: OnOff,
}

#[derive(Args)]
pub struct EncodeArgs {
    #[arg(long)]
    seed: u64,
    #[arg(long, value_parser = symbol)]
    symbol: String,
    #[arg(long)]
    sequence: u64,
    #[arg(long, allow_negative_numbers = true)]
    timestamp: i64,
}

pub fn run(role: Role) -> Result<(), Failure> {
    match role {
        Role::Publisher(args) => run_publisher(args),
        Role::Proxy(args) => run_proxy(args),
        Role::Subscriber(args) => run_subscriber(args),
        Role::Encode(args) => run_encode(args),
    }
}

/// 1 to 8 letters A-Z.
pub fn is_symbol(bytes: &[u8]) -> bool {
    (1..=8).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_uppercase)
}

pub fn symbol(value: &str) -> Result<String, String> {
    if is_symbol(value.as_bytes()) {
        Ok(value.to_string())
    } else {
        Err("a symbol is 1 to 8 letters A-Z".into())
    }
}

pub const MAX_SYMBOLS: usize = 32; // in one list flag (a subscriber's subscriptions, a publisher's round)

/// A comma-separated list of symbols, as every flag that takes one has it (ticker publisher and
/// subscriber --symbols, query engine --symbols, desk trader --follow).
#[derive(Clone)]
pub struct Symbols(pub Vec<String>);

/// The one parser of a symbol list: 1 to 32 symbols, none twice.
pub fn symbol_list(value: &str) -> Result<Symbols, String> {
    let list = value.split(',').map(symbol).collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_SYMBOLS {
        return Err(format!("at most {} symbols", MAX_SYMBOLS));
    }
    if list.iter().collect::<HashSet<_>>().len() != list.len() {
        return Err("a symbol appears twice".into());
    }
    Ok(Symbols(list))
}

/// --switch OLD:NEW
#[derive(Clone)]
pub struct Switch {
    old: String,
    new: String,
}

fn switch(value: &str) -> Result<Switch, String> {
    let (old, new) = value.split_once(':').ok_or("expected OLD:NEW")?;
    Ok(Switch { old: symbol(old)?, new: symbol(new)? })
}

// --- the tick: prices anyone can recompute ---------------------------------------------------

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xCBF2_9CE4_8422_2325, |h, &byte| (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// Shared with valuation, whose orders come from the same generator.
pub fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(GOLDEN);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn cents(seed: u64, symbol: &str, sequence: u64) -> u64 {
    1000 + splitmix64(seed ^ fnv1a64(symbol.as_bytes()) ^ sequence.wrapping_mul(GOLDEN)) % 99001
}

/// One IEEE division of an integer that binary64 holds exactly: the same bits in every language.
fn price(seed: u64, symbol: &str, sequence: u64) -> f64 {
    cents(seed, symbol, sequence) as f64 / 100.0
}

/// Frame 0: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL.
pub fn topic(symbol: &str) -> Vec<u8> {
    [symbol.as_bytes(), b"\0"].concat()
}

/// The symbol of a topic frame (a symbol, then a NUL), or None.
pub fn symbol_of(topic: &[u8]) -> Option<&str> {
    match topic.strip_suffix(b"\0") {
        Some(symbol) if is_symbol(symbol) => std::str::from_utf8(symbol).ok(),
        _ => None,
    }
}

fn tick_frames(seed: u64, symbol: &str, sequence: u64, timestamp: i64) -> [Vec<u8>; 4] {
    // to_be_bytes: big-endian, network order, for the integers and for the IEEE double alike.
    [
        topic(symbol),
        sequence.to_be_bytes().to_vec(),
        timestamp.to_be_bytes().to_vec(),
        price(seed, symbol, sequence).to_be_bytes().to_vec(),
    ]
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{:02x}", byte)).collect()
}

fn run_encode(args: EncodeArgs) -> Result<(), Failure> {
    let frames = tick_frames(args.seed, &args.symbol, args.sequence, args.timestamp);
    let frames: Vec<String> = frames.iter().map(|frame| hex(frame)).collect();
    let cents = cents(args.seed, &args.symbol, args.sequence);
    emit("encoded", json!({ "frames": frames, "cents": cents }));
    emit("done", json!({}));
    Ok(())
}

// --- publisher -------------------------------------------------------------------------------

fn run_publisher(args: PublisherArgs) -> Result<(), Failure> {
    let stop = stop_signal()?;
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [XPUB] a PUB (fan-out to every matching subscriber, never blocking) that also hands us each
    // subscription coming from downstream as a message: 1 (subscribe) or 0 (unsubscribe), then the
    // topic. That is how the publisher counts its subscribers.
    let ticks = context.socket(zmq::XPUB)?;
    // [linger] 0: ticks are a stream; when we stop, the ticks still queued are owed to nobody, and
    // closing drops them at once.
    ticks.set_linger(0)?;
    ticks.set_maxmsgsize(MAX_MESSAGE)?;
    monitor::attach(&context, &ticks, "ticks", args.monitor)?;
    let bound = bind(&ticks, &args.ticks)?;
    emit("ready", json!({ "ticks": bound }));

    let mut topics = HashSet::new(); // the topics we have reported as subscribed (or joined)
    let mut subscribers = HashSet::new(); // every @name that ever joined
    let mut sequence = 0u64; // every symbol gets one tick per round, so they share the round number
    let mut next_round: Option<Instant> = None; // publishing starts once every subscriber is there
    let interval = Duration::from_millis(args.interval.into());
    while !stop.load(Ordering::SeqCst) {
        if deadline.expired() {
            return Err(Failure::new("timeout", format!("still publishing after {} ms", args.timeout)));
        }
        // [poll] The poll is the only wait: for a subscription, or until the next round is due
        // (before the first round: 100 ms, never past the deadline). Then a receive that never
        // blocks: POLLIN is a hint, and a signal (EINTR) is no message.
        let wait_ms = next_round.map_or(100, ms_until);
        if readable(&ticks, deadline.cap(wait_ms))? {
            // One frame at a time, whatever its more flag: libzmq's XPUB passes each subscription
            // frame of a peer's message on as a message of its own, and each is judged on its own.
            if let Some(frame) = recv_frame_if_ready(&ticks)? {
                on_subscription(&frame, &mut topics, &mut subscribers);
            }
            // [slow joiner] A tick sent before a subscriber's subscriptions arrive is lost for it,
            // so nothing is published until every subscriber's @name has arrived: it subscribes to
            // its symbols first, and one connection's subscriptions arrive in order.
            if next_round.is_none() && subscribers.len() as u64 >= args.subscribers {
                emit("started", json!({ "subscribers": subscribers.len() }));
                next_round = Some(Instant::now());
            }
        }
        if let Some(due) = next_round {
            if Instant::now() >= due {
                sequence += 1;
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as i64);
                for symbol in &args.symbols.0 {
                    // [HWM] XPUB never blocks on send: at the high-water mark (1000 messages per
                    // subscriber, the default) a slow subscriber's ticks are dropped, and it sees a gap.
                    ticks.send_multipart(tick_frames(args.seed, symbol, sequence, now_ms), 0)?;
                }
                next_round = Some(due + interval);
            }
        }
    }
    emit("done", json!({ "rounds": sequence, "ticks": sequence * args.symbols.0.len() as u64 }));
    Ok(()) // linger 0: the ticks still queued are dropped, nobody is owed them
}

/// A subscription frame: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on one
/// subscribe per topic, but a peer can repeat one inside a message of several frames; so a change
/// is reported only when it changes `topics`, the set of topics we have reported.
fn on_subscription(frame: &[u8], topics: &mut HashSet<Vec<u8>>, subscribers: &mut HashSet<String>) {
    let (on, topic) = match frame {
        [flag @ (0 | 1), topic @ ..] if !topic.is_empty() => (*flag == 1, topic),
        _ => {
            let reason = format!("not a subscription: {}", frame[..frame.len().min(40)].escape_ascii());
            return emit("error", json!({ "code": "malformed-subscription", "reason": reason }));
        }
    };
    // Subscribe: true if the topic is new to us; unsubscribe: true if we had it.
    let mut changed = || if on { topics.insert(topic.to_vec()) } else { topics.remove(topic) };
    // Each subscriber's own topic, subscribed after its symbols: once it is here, so are they.
    // A name is 1 to 32 bytes of valid UTF-8. Its unsubscribe is not reported.
    let name = topic.strip_prefix(b"@").filter(|name| (1..=MAX_NAME).contains(&name.len()));
    if let Some(Ok(name)) = name.map(std::str::from_utf8) {
        if changed() && on {
            emit("joined", json!({ "subscriber": name }));
            subscribers.insert(name.to_string());
        }
    } else if let Some(symbol) = symbol_of(topic) {
        if changed() {
            emit(if on { "subscribed" } else { "unsubscribed" }, json!({ "symbol": symbol }));
        }
    } else {
        let reason = format!("unknown topic {}", topic[..topic.len().min(40)].escape_ascii());
        emit("error", json!({ "code": "malformed-subscription", "reason": reason }));
    }
}

// --- proxy -----------------------------------------------------------------------------------

fn run_proxy(args: ProxyArgs) -> Result<(), Failure> {
    let stop = stop_channel()?; // before `ready`: from then on we may be stopped at any moment
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [XSUB] faces the publisher: a SUB whose subscriptions are messages that the application (here
    // the library's proxy) sends upstream, as they came from downstream, instead of socket options.
    let mut upstream = context.socket(zmq::XSUB)?;
    let mut downstream = context.socket(zmq::XPUB)?; // faces subscribers: sends ticks, receives subscriptions
    // [PAIR] The proxy's control channel: exactly one peer on each end, the main thread's `steer`
    // and the proxy thread's `control`, which is all a command channel between two threads needs.
    // [inproc] Over inproc://, the two threads are joined through this one context, never a
    // network; `control` binds before `steer` connects.
    let mut control = context.socket(zmq::PAIR)?;
    let steer = context.socket(zmq::PAIR)?;
    for socket in [&upstream, &downstream, &control, &steer] {
        socket.set_linger(0)?; // ticks and subscriptions still queued at the stop are owed to nobody
    }
    for socket in [&upstream, &downstream] {
        socket.set_maxmsgsize(MAX_MESSAGE)?; // not the PAIRs: inproc decodes nothing
    }
    // Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped at the
    // send high-water mark during a flood would be lost for good. No limit on XSUB's sends.
    upstream.set_sndhwm(0)?;
    monitor::attach(&context, &upstream, "upstream", args.monitor)?;
    monitor::attach(&context, &downstream, "downstream", args.monitor)?;
    let bound = bind(&downstream, &args.downstream)?;
    connect(&upstream, &args.upstream)?;
    control.bind("inproc://proxy-control")?;
    steer.connect("inproc://proxy-control")?;

    // [proxy] The library's own loop moves ticks one way (XSUB to XPUB) and subscriptions the other
    // (XPUB to XSUB), in a thread of its own, until it reads TERMINATE on its control socket: that
    // is how it is stopped. The sockets move into that thread: a socket is not thread-safe.
    // It gives up (EAGAIN) when it finds a message unfinished: a subscriber can leave one, since
    // XPUB passes on the first frames of a multipart message and drops a last frame that repeats a
    // subscription (PROTOCOL.md, "Proxy"). The sockets are still good: start it again.
    let proxy = thread::spawn(move || loop {
        match zmq::proxy_steerable(&mut upstream, &mut downstream, &mut control) {
            Err(zmq::Error::EAGAIN) => emit(
                "error",
                json!({ "code": "proxy-restarted", "reason": "the library's proxy found a message left unfinished by a peer" }),
            ),
            result => return result,
        }
    });
    emit("ready", json!({ "downstream": bound }));
    let stopped = match deadline.remaining() {
        Some(left) => stop.recv_timeout(left).is_ok(),
        None => stop.recv().is_ok(),
    };
    steer.send("TERMINATE", 0)?;
    match proxy.join() {
        Ok(result) => result?,
        Err(_) => return Err(Failure::new("proxy", "the proxy thread panicked")),
    }
    if !stopped {
        return Err(Failure::new("timeout", format!("still proxying after {} ms", args.timeout)));
    }
    emit("done", json!({}));
    Ok(())
}

// --- subscriber ------------------------------------------------------------------------------

pub struct Tick<'a> {
    pub symbol: &'a str,
    pub sequence: u64,
    pub timestamp: i64,
    pub price: f64,
}

pub type Rejected = (&'static str, String); // (code, reason)

/// A good tick, or its first broken rule.
pub fn check_tick<'a>(frames: &'a [Vec<u8>], subscribed: &[String], seed: u64) -> Result<Tick<'a>, Rejected> {
    // [multipart] A tick's 4 frames arrive whole or not at all: never a symbol without its price.
    // How many frames came is still the sender's choice: checked, never assumed.
    let (topic, sequence, timestamp, price_bytes) = match frames {
        [frame0, frame1, frame2, frame3] => (frame0, frame1, frame2, frame3),
        _ => return Err(("malformed-tick", format!("expected 4 frames, got {}", frames.len()))),
    };
    let symbol = match symbol_of(topic) {
        Some(symbol) => symbol,
        None => {
            let shown = topic[..topic.len().min(12)].escape_ascii();
            return Err(("malformed-tick", format!("frame 0 is not a symbol and a NUL: {}", shown)));
        }
    };
    let eight = |frame: &Vec<u8>| <[u8; 8]>::try_from(frame.as_slice()).ok();
    let (sequence, timestamp, price_bytes) = match (eight(sequence), eight(timestamp), eight(price_bytes)) {
        (Some(sequence), Some(timestamp), Some(price)) => (sequence, timestamp, price),
        _ => {
            let sizes: Vec<usize> = frames[1..].iter().map(Vec::len).collect();
            return Err(("malformed-tick", format!("frames 1-3 have {:?} bytes, not 8 each", sizes)));
        }
    };
    let sequence = u64::from_be_bytes(sequence);
    // 2^63 and past: beyond what every language's JSON numbers carry alike, and no publisher gets there.
    if sequence >= 1 << 63 {
        return Err(("malformed-tick", format!("sequence {} is 2^63 or more", sequence)));
    }
    if !subscribed.iter().any(|name| name == symbol) {
        return Err(("unexpected-symbol", format!("{} is not subscribed", symbol)));
    }
    let expected = price(seed, symbol, sequence).to_be_bytes();
    if price_bytes != expected {
        let (sent, expected) = (hex(&price_bytes), hex(&expected));
        let reason = format!("{} #{}: price bytes {}, expected {}", symbol, sequence, sent, expected);
        return Err(("wrong-price", reason));
    }
    let timestamp = i64::from_be_bytes(timestamp);
    Ok(Tick { symbol, sequence, timestamp, price: f64::from_be_bytes(price_bytes) })
}

fn run_subscriber(args: SubscriberArgs) -> Result<(), Failure> {
    if let Some(Switch { old, new }) = &args.switch {
        if !args.symbols.0.contains(old) || args.symbols.0.contains(new) {
            usage("--switch OLD:NEW needs OLD among --symbols and NEW not");
        }
    }
    let deadline = Deadline::new(args.timeout);
    let context = zmq::Context::new();
    // [SUB] receives only what matches one of its subscriptions, a prefix of frame 0: "GOOG\0"
    // matches GOOG's ticks, not GOOGL's. Unlike most SUBs here it connects BEFORE it subscribes, as
    // PROTOCOL.md says: after connect, each subscription goes to the publisher in the order made,
    // while those made before connect go out sorted by bytes, which would put our @name first
    // ("@" < "A"), and the publisher could start before our symbols are in place.
    let sub = context.socket(zmq::SUB)?;
    sub.set_linger(0)?; // we leave once every symbol has delivered: nothing we send still matters
    sub.set_maxmsgsize(MAX_MESSAGE)?;
    monitor::attach(&context, &sub, "ticks", args.monitor)?;
    connect(&sub, &args.ticks)?;
    let mut subscribed = args.symbols.0.clone();
    for symbol in &subscribed {
        sub.set_subscribe(&topic(symbol))?;
    }
    // Last, our own topic: the publisher waits for it, and by then our symbols are in place.
    sub.set_subscribe(format!("@{}", args.name).as_bytes())?;
    emit("ready", json!({ "name": args.name, "symbols": subscribed }));

    let mut received: BTreeMap<String, u64> = subscribed.iter().map(|symbol| (symbol.clone(), 0)).collect();
    let mut last: BTreeMap<String, u64> = BTreeMap::new(); // each symbol's last sequence: a jump is a gap
    let mut switched = args.switch.is_none();
    let (mut total, mut malformed) = (0u64, 0u64);
    while !(switched && subscribed.iter().all(|symbol| received[symbol] >= args.count)) {
        if deadline.expired() {
            let missing: BTreeMap<_, _> = received.iter().filter(|(_, n)| **n < args.count).collect();
            let reason = format!("not done after {} ms; ticks so far: {}", args.timeout, json!(missing));
            return Err(Failure::new("timeout", reason));
        }
        if !readable(&sub, deadline.cap(1000))? {
            continue;
        }
        // Every frame of one tick, or None: nothing after all.
        let Some(frames) = recv_if_ready(&sub)? else { continue };
        let Tick { symbol, sequence, timestamp, price } = match check_tick(&frames, &subscribed, args.seed) {
            Ok(tick) => tick,
            Err((code, reason)) => {
                malformed += 1;
                emit("error", json!({ "code": code, "reason": reason }));
                continue;
            }
        };
        total += 1;
        *received.entry(symbol.to_string()).or_insert(0) += 1;
        // PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
        // restarted) or while a queue was full (the HWM) are gone. Say so, never hide it.
        if let Some(after) = last.insert(symbol.to_string(), sequence) {
            if sequence > after + 1 {
                emit("gap", json!({ "symbol": symbol, "after": after, "next": sequence }));
            }
        }
        emit("tick", json!({ "symbol": symbol, "sequence": sequence, "timestamp": timestamp, "price": price }));
        if let Some(Switch { old, new }) = &args.switch {
            if symbol == old && received[old] == args.switch_after {
                // The SUB socket filters by its current subscriptions as it delivers: no tick of
                // OLD comes after this, even one already queued.
                sub.set_unsubscribe(&topic(old))?;
                subscribed.retain(|symbol| symbol != old);
                emit("unsubscribed", json!({ "symbol": old }));
                // NEW's first ticks may be missed while this subscription travels upstream.
                sub.set_subscribe(&topic(new))?;
                subscribed.push(new.clone());
                received.entry(new.clone()).or_insert(0);
                emit("subscribed", json!({ "symbol": new }));
                switched = true;
            }
        }
    }
    emit("done", json!({ "ticks": total, "malformed": malformed }));
    Ok(())
}
